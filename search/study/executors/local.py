"""The `local` executor: this process for one worker, else several worker processes on one machine sharing the
study's storage (`slimsearch run --workers N`).

Each worker is a fresh (spawned) process that runs the one-process loop, `search.study.executors.inprocess.run_study`: it
asks the shared study for trials until the study holds the requested number of COMPLETE trials, so
the total is respected to within one trial per worker. The parent process creates the study and
recovers the trials of dead workers first (so workers neither race to create it nor wait on each
other's running trials), then follows the storage to drive the progress bar.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import Future, ProcessPoolExecutor, wait

import optuna
from optuna.trial import TrialState

from search.errors import UsageError
from search.recipe.config import StudyConfig, validate_config
from search.study.after_trial import AfterTrial
from search.study.executors.base import EXECUTORS, ExecutorOptions
from search.study.executors.inprocess import run_study
from search.study.interrupt import interruptible
from search.study.progress import StudyProgress
from search.study.storage import completed, open_for_run
from search.trial.locks import record_protocol
from spaces import get_space

POLL_SECONDS = 1.0
STOP_GRACE_S = 10.0  # seconds interrupted workers have to end on their own
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def _worker(recipe: dict, target: int, timeout: float | None, workers: int) -> None:
    """One worker process: run the shared study until it holds `target` completed trials; Ctrl-C or SIGTERM ends
    it as it ends the parent, without a traceback of its own."""
    with interruptible():
        config = validate_config(recipe, "worker recipe")
        run_study(config, trials=target, timeout=timeout, show_progress=False, workers=workers, recover=False)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's worker processes after the parent was interrupted: Ctrl-C in a terminal reaches them too and
    they end within `STOP_GRACE_S`; a signal sent to the parent alone must not leave them running trials, so those
    still running then are sent SIGTERM (which they take as Ctrl-C)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + STOP_GRACE_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()


class StorageFollower:
    """Feeds trials that finished in other processes to the after-trial listeners, each once, from one read of the
    study per poll."""

    def __init__(self, study: optuna.Study, after_trial: AfterTrial) -> None:
        self.study = study
        self.after_trial = after_trial
        self.seen = {t.number for t in study.get_trials(deepcopy=False, states=FINISHED)}

    def poll(self) -> None:
        """Pass each newly finished trial of the study to the listeners, in trial order."""
        trials = self.study.get_trials(deepcopy=False)
        for trial in sorted((t for t in trials if t.state in FINISHED), key=lambda t: t.number):
            if trial.number not in self.seen:
                self.seen.add(trial.number)
                self.after_trial(self.study, trial, trials)


def run_workers(
    config: StudyConfig, workers: int, trials: int | None = None, timeout: float | None = None,
    show_progress: bool = True,
) -> optuna.Study:
    """Run the study with `workers` local processes until `trials` have completed; returns the study."""
    if workers < 1:
        raise UsageError(f"--workers: expected a positive number of processes, got {workers}")
    target = trials or config.search.trials
    timeout = timeout or config.search.timeout
    study = open_for_run(config)
    record_protocol(study, "local", workers)
    done = completed(study)
    if done >= target:
        return study
    recipe = config.dump()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_worker, recipe, target, timeout, workers) for _ in range(workers)]
        try:
            with StudyProgress(target, done, get_space(config.space.type).describe, bar=show_progress) as progress:
                _wait(futures, StorageFollower(study, AfterTrial(progress)))
        except BaseException:
            _stop(pool)
            raise
    for future in futures:
        error = future.exception()
        if error is not None:
            raise error
    return study


@EXECUTORS.register("local")
def run_local(config: StudyConfig, trials: int | None, timeout: float | None, show_progress: bool,
              options: ExecutorOptions) -> optuna.Study:
    """This machine: one worker runs the study in this process (`run_study`), more run as worker processes."""
    if options.workers > 1:
        return run_workers(config, options.workers, trials=trials, timeout=timeout, show_progress=show_progress)
    return run_study(config, trials=trials, timeout=timeout, show_progress=show_progress)


def _wait(futures: list[Future], follower: StorageFollower) -> None:
    """Wait for every worker to end, following the storage meanwhile."""
    pending = set(futures)
    while pending:
        _, pending = wait(pending, timeout=POLL_SECONDS)
        follower.poll()
