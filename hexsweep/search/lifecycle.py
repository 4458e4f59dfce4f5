"""The lifecycle of a search's trials beyond ask and tell: trials whose driver died (orphans),
trials paused at a Ctrl-C and continued by a resume of the same sweep folder, and the heartbeat
that keeps running trials alive on RDB storages."""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hexsweep.jobfolder import read_result
from hexsweep.sweep.owner import driver_alive

log = logging.getLogger(__name__)


def driver_dead(driver: dict[str, Any], sweep_dir: Path) -> bool:
    """Whether a trial's driver is dead (False when it cannot be told). Called once this
    process holds ``sweep_dir``: any other driver of that folder has ended."""
    if driver.get("sweep_dir") == str(sweep_dir) and driver.get("host") == socket.gethostname():
        return driver.get("pid") != os.getpid()
    return driver_alive(driver.get("sweep_dir"), driver.get("host")) is False


def paused_trials(study: optuna.Study, sweep_dir: Path, app: Any) -> list[optuna.trial.FrozenTrial]:
    """The trials an interrupted run of this sweep folder left paused (``pause``), whose driver
    is gone: a resume of the same folder continues them, in their own trials."""
    paused = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        driver, job_dir = t.user_attrs.get("driver") or {}, t.user_attrs.get("job_dir")
        if t.user_attrs.get("paused") and driver.get("sweep_dir") == str(sweep_dir) and job_dir \
                and app.can_continue(Path(job_dir)) and driver_dead(driver, sweep_dir):
            paused.append(t)
    return paused


def pause(trial: optuna.Trial) -> None:
    """At a Ctrl-C of the sweep, a job that stopped with its training state saved keeps its trial
    RUNNING, its reported epochs in place, instead of failing it: resuming this sweep folder
    continues it in the same trial (a later driver of another folder fails it as orphaned)."""
    trial.set_user_attr("paused", True)
    log.info("trial %d paused: resume this sweep folder (resume=true) to continue it", trial.number)


def fail_orphans(study: optuna.Study, storage: Any, sweep_dir: Path, adopted: list[optuna.trial.FrozenTrial] = (),
                 retry_failed: int = 0) -> None:
    """Trials whose driver died while they ran become FAIL (and are re-queued with retry_failed).

    Orphaned means the trial's driver is dead, not that its job ended: the driver of a trial on
    this host holds its sweep folder's lock (sweep/owner.py) for as long as it lives. A trial of
    a driver on another host is left to the RDB heartbeat. ``adopted``: paused trials this
    driver continues (not orphans)."""
    keep = {t.number for t in adopted}
    if isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval():
        for t in adopted:  # alive again: the stale-trial sweep below must not fail them
            storage.record_heartbeat(t._trial_id)
        fail_stale(study, storage)
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in keep:
            continue
        if not driver_dead(t.user_attrs.get("driver") or {}, sweep_dir):
            continue  # alive, or unknown (another host): not ours to fail
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        job_dir = t.user_attrs.get("job_dir")
        record = read_result(job_dir) if job_dir else None
        reason = "orphaned: its sweep driver died" + (f" (job {record.status})" if record else "")
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # finished meanwhile by a driver that was alive after all
        log.warning("trial %d was left running by a dead driver: marked FAIL", t.number)
        if retry_failed > 0:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})


def fail_stale(study: optuna.Study, storage: Any) -> None:
    """On an RDB with heartbeats: Optuna's stale-trial check, and the trials it cannot see.

    Optuna fails a RUNNING trial whose last heartbeat is older than the grace period, and skips
    one that never beat. A driver that dies between ``study.ask`` and its first act on the trial
    (naming itself in the ``driver`` attribute, trials.py) leaves such a trial: no heartbeat,
    no driver to check, RUNNING for ever. A live driver names itself within milliseconds of
    asking, so a trial asked more than the grace period ago that names no driver and never beat
    is failed too. Its clock is the asking driver's (Optuna's datetime_start)."""
    optuna.storages.fail_stale_trials(study)
    grace = storage.grace_period or 2 * storage.get_heartbeat_interval()
    now = datetime.now()
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "driver" in t.user_attrs or t.datetime_start is None or (now - t.datetime_start).total_seconds() <= grace:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if not _never_beat(storage, trial_id):
            continue  # beating (another program's trial, say): Optuna's check above is the judge
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", "orphaned: its driver died as it asked for it")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        log.warning("trial %d was asked by a driver that died before it started: marked FAIL", t.number)


def _never_beat(storage: optuna.storages.RDBStorage, trial_id: int) -> bool:
    # Optuna offers no public read of a trial's heartbeat; its RDB model is where it is kept
    # (the table its own stale-trial check reads)
    from optuna.storages._rdb import models

    session = storage.scoped_session()
    try:
        return models.TrialHeartbeatModel.where_trial_id(trial_id, session) is None
    finally:
        session.close()


class Heartbeat:
    """Records heartbeats of running trials on storages that support them (RDB).

    ``trials()`` gives the trials to keep alive (running, and paused ones waiting to restart)."""

    def __init__(self, storage: Any, study: optuna.Study, trials: Any) -> None:
        self.storage, self.study, self.trials = storage, study, trials
        self.enabled = isinstance(storage, optuna.storages.RDBStorage) and storage.get_heartbeat_interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Heartbeat:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 60
        while not self._stop.wait(max(0.5, interval / 2)):
            try:
                for trial_id in self.trials():
                    self.storage.record_heartbeat(trial_id)
                # trials of another driver that died stop beating: fail them (and re-queue
                # them if retry_failed is set) so that the study does not wait on them
                fail_stale(self.study, self.storage)
            except Exception as e:  # a storage hiccup must not end the sweep
                log.warning("heartbeat failed: %s", e)
