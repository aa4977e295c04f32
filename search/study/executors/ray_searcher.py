"""The Ray Tune searcher of a slimsearch study: Optuna's sampler decides, the Optuna storage counts.

`OptunaSearch` (Ray's wrapper of an Optuna study) asks the study for each Tune trial and tells it the
result, so every Tune trial is an Optuna trial in the study's storage. `StudySearcher` wraps it with
what a slimsearch run needs on top:

- the budget is the number of COMPLETE trials in the storage, so a resumed run only runs the
  remainder, a failed trial is replaced, and several drivers (or local workers) can share a study;
- the Optuna trials of this driver keep a heartbeat while Tune runs them, so the trials of a driver
  that was killed go stale and are failed and retried (`search.study.recovery`);
- a result without metrics fails its Optuna trial (or prunes it, when the result says `pruned`); the
  reason is on the trial's `error` attribute, set by the worker, or here if the worker died first;
- a streak of failures, or the timeout, stops new trials; the after-trial listeners (progress, artifact
  pruning) see each finished trial, as they do in `Study.optimize` (`search.study.after_trial`).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import optuna
from optuna.storages import RDBStorage
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.results.record import TrialRecord
from search.study.after_trial import AfterTrial, FailureStreak
from search.study.recovery import fail_dead_trials
from search.study.storage import OBJECTIVES, completed

TRIAL_ID = "optuna_trial_id"
TRIAL_NUMBER = "optuna_trial_number"
CANDIDATE = "candidate"  # the sampled candidate, as JSON
PRUNED = "pruned"
RECHECK_SECONDS = 1.0


class StudySearcher(Searcher):
    """Wraps `OptunaSearch`: stops at `target` COMPLETE trials in the storage, keeps trials alive, fails errors."""

    def __init__(
        self, searcher: OptunaSearch, study: optuna.Study, storage: RDBStorage, target: int,
        timeout: float | None = None, max_consecutive_failures: int = 5,
        after_trial: AfterTrial | None = None,
    ) -> None:
        self.searcher = searcher
        self.study = study
        self.storage = storage
        self.target = target
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.after_trial = after_trial
        self.live: dict[str, int] = {}
        self.failures = FailureStreak(max_consecutive_failures)
        self._lock = threading.Lock()
        self._full_until = 0.0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: object) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str) -> dict | None:
        if self.failures.tripped or (self.deadline is not None and time.monotonic() >= self.deadline):
            return Searcher.FINISHED
        if time.monotonic() < self._full_until:
            return None
        fail_dead_trials(self.study)
        if completed(self.study) + len(self.live) >= self.target:
            if not self.live:
                return Searcher.FINISHED
            self._full_until = time.monotonic() + RECHECK_SECONDS
            return None
        config = self.searcher.suggest(trial_id)
        if isinstance(config, dict):
            with self._lock:
                self.live[trial_id] = config[TRIAL_ID]
            self.storage.record_heartbeat(config[TRIAL_ID])
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        with self._lock:
            optuna_id = self.live.pop(trial_id, None)
        if optuna_id is None:
            return
        self._full_until = 0.0
        scored = not error and result is not None and all(result.get(m) is not None for m in OBJECTIVES)
        pruned = not error and result is not None and PRUNED in result
        if scored:
            self.searcher.on_trial_complete(trial_id, result=result)
        elif pruned:
            self.searcher.on_trial_complete(trial_id, result=None, error=False)
        else:
            if TrialRecord.of(self.storage.get_trial(optuna_id)).error is None:
                TrialRecord.save_to(self.storage, optuna_id, error="the Ray worker ended without a result")
            self.searcher.on_trial_complete(trial_id, result=None, error=True)
        self.failures.see(not (scored or pruned))
        if self.after_trial is not None:
            self.after_trial(self.study, self.storage.get_trial(optuna_id))

    def __getstate__(self) -> dict:
        """What Tune pickles with its experiment: no lock, no after-trial listeners."""
        state = self.__dict__.copy()
        del state["_lock"]
        state["after_trial"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def get_state(self) -> dict:
        """This wrapper's part of Tune's experiment checkpoint (Tune saves the wrapped searcher itself)."""
        return {"target": self.target, "live": dict(self.live), "failures": self.failures}

    def set_state(self, state: dict) -> None:
        self.__dict__.update(state)

    @contextmanager
    def heartbeats(self) -> Iterator[None]:
        """Record a heartbeat for each Optuna trial in flight, every heartbeat interval of the storage."""
        stop = threading.Event()
        interval = self.storage.get_heartbeat_interval() or 10

        def beat() -> None:
            while not stop.wait(interval):
                with self._lock:
                    ids = list(self.live.values())
                for optuna_id in ids:
                    self.storage.record_heartbeat(optuna_id)

        thread = threading.Thread(target=beat, name="optuna-heartbeats", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def abandon_live(self, reason: str) -> int:
        """Fail the Optuna trials Tune never reported back (the run was stopped while they ran); how many."""
        with self._lock:
            left, self.live = dict(self.live), {}
        for optuna_id in left.values():
            frozen = self.storage.get_trial(optuna_id)
            if not frozen.state.is_finished():
                TrialRecord.save_to(self.storage, optuna_id, error=reason)
                self.study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        return len(left)
