"""Crash recovery: find the trials of a worker that died (SIGKILL, power loss) and hand them back.

Each running trial beats a heartbeat into the storage; a trial silent for longer than the grace
period is failed and retried (the storage's `RetryHeartbeatStaleTrialCallback` queues it again
with the same parameters). Optuna checks this before each new trial; `recover_stale_trials`
does it once at start-up, waiting at most one grace period for trials whose fate is unclear, so a
resumed study never leaves a dead trial RUNNING. It also catches a trial killed before its first
heartbeat, which Optuna's own check never sees as stale.
"""

from __future__ import annotations

import copy
import datetime
import sys
import time
from typing import Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from search.results.record import TrialRecord


def grace_period(interval: int) -> int:
    """Seconds of silence after which a running trial is taken for dead."""
    return 3 * interval


def _heartbeats(storage: RDBStorage, trial_ids: list[int]) -> dict[int, datetime.datetime]:
    """Last heartbeat of each trial that has recorded one."""
    from optuna.storages._rdb.models import TrialHeartbeatModel

    if not trial_ids:
        return {}
    with Session(storage.engine) as session:
        rows = session.query(TrialHeartbeatModel.trial_id, TrialHeartbeatModel.heartbeat).filter(
            TrialHeartbeatModel.trial_id.in_(trial_ids)
        )
        return {trial_id: beat for trial_id, beat in rows}


def _rdb(study: optuna.Study) -> RDBStorage | None:
    """The study's RDB storage when it beats heartbeats (Optuna wraps it in a cache)."""
    backend = getattr(study._storage, "_backend", study._storage)
    return backend if isinstance(backend, RDBStorage) and backend.heartbeat_interval else None


WORKER_LOST = "worker lost (heartbeat stale)"  # the `error` of a trial whose process died


def _fail(study: optuna.Study, trial_id: int) -> bool:
    """Fail a dead worker's trial with the reason in its `error` attribute, and queue it again."""
    storage = study._storage
    try:
        TrialRecord.save_to(storage, trial_id, error=WORKER_LOST)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:  # it finished (or another process failed it) meanwhile
        return False
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        dead = copy.deepcopy(storage.get_trial(trial_id))
        dead.user_attrs = {k: v for k, v in dead.user_attrs.items() if k != "error"}  # the retry inherits them
        callback(study, dead)
    return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Fail (and queue for retry) the running trials whose heartbeat is older than the grace period, and
    those that never beat and started longer ago than that. Returns their numbers."""
    storage = _rdb(study)
    if storage is None:
        return []
    grace = storage.grace_period or grace_period(storage.heartbeat_interval)
    stale = set(storage._get_stale_trial_ids(study._study_id))
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    beating = _heartbeats(storage, [t._trial_id for t in running])
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    for t in running:
        if t._trial_id not in beating and t.datetime_start is not None and t.datetime_start < cutoff:
            stale.add(t._trial_id)
    numbers = {t._trial_id: t.number for t in running}
    return sorted(numbers.get(tid, tid) for tid in stale if _fail(study, tid))


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def recover_stale_trials(study: optuna.Study, say: Callable[[str], None] = _stderr) -> list[int]:
    """Fail and requeue the trials of dead workers before a (resumed) run starts; returns their numbers.

    Running trials that are not yet stale are watched until their heartbeat moves (a live worker)
    or goes stale (a dead one), for at most one grace period plus one heartbeat interval."""
    failed = _recover(study, say)
    if failed:
        say(f"trial(s) {', '.join(f'#{n}' for n in failed)} had lost their worker: failed and queued again")
    return failed


def _recover(study: optuna.Study, say: Callable[[str], None]) -> list[int]:
    storage = _rdb(study)
    failed = fail_dead_trials(study)
    if storage is None:
        return failed
    interval = storage.heartbeat_interval
    running = {t._trial_id: t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return failed
    first = _heartbeats(storage, list(running))
    grace = storage.grace_period or grace_period(interval)
    deadline = time.monotonic() + grace + interval
    announced = False
    while running and time.monotonic() < deadline:
        time.sleep(min(1.0, interval))
        failed += fail_dead_trials(study)
        still = {t._trial_id for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        now = _heartbeats(storage, [tid for tid in running if tid in still])
        running = {tid: n for tid, n in running.items() if tid in still and now.get(tid) == first.get(tid)}
        if running and not announced:
            announced = True
            say(f"trial(s) {', '.join(f'#{n}' for n in running.values())} are marked running but silent; waiting "
                f"up to {grace + interval} s to tell a live worker from a dead one")
    return sorted(failed)
