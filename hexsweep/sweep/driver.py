"""The sweep driver: start jobs, wait for them, watch them, interrupt them, and say how each ended.

One driver serves the hexsweep launcher (a fixed list of jobs) and the Optuna sweeper (jobs
asked for one at a time as earlier ones end). It runs in the main thread and never forks:
jobs come from the job server (sweep/process.py). Every wait ends:

- ``hydra.launcher.timeout_s``: a job running longer is interrupted, then killed, and
  recorded as failed (Timeout).
- ``hydra.launcher.stall_timeout_s``: a job whose heartbeat (hexsweep.heartbeat, beaten by
  the training loop's main thread) has not moved for that long is killed and recorded
  ``stalled``: a deadlocked or SIGSTOPped job frees its slot and the sweep goes on.
- Ctrl-C / SIGTERM / SIGHUP: running jobs get SIGINT; one still alive ``hydra.launcher.kill_grace_s``
  later gets SIGKILL; a second Ctrl-C kills at once. The driver then reports what finished
  and raises SweepInterrupted (the plugin turns it into exit status 130). After the last job
  ended, a request waits for the report (sweep/stopping.py).
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from hexsweep.errors import HexsweepError
from hexsweep.jobfolder import COMPLETED, CRASHED, DEATH_STATUS, FAILED, RUNNING, JobError, JobResult
from hexsweep.naming import host
from hexsweep.sweep import owner, process, stopping
from hexsweep.sweep.apps import JobApp, app_for, job_env
from hexsweep.sweep.manifest import record_outcome
from hexsweep.sweep.progress import SweepProgress

log = logging.getLogger(__name__)
POLL_S = 0.5


class SweepInterrupted(HexsweepError):
    """Ctrl-C or SIGTERM stopped the sweep; what finished is reported."""


class JobDied(Exception):
    """A plain app's job ended without an answer (killed, stalled, timed out)."""


@dataclass
class Outcome:
    """How one job ended: its status word (jobfolder's vocabulary), Hydra's JobReturn, and
    the app's record of it (``JobApp.done_before``/``settle``: a JobResult for apps that keep one)."""
    num: int
    cfg: DictConfig
    job_dir: Path
    status: str
    ret: JobReturn
    record: Any = None
    skipped: bool = False
    interrupted: bool = False  # it ended while the driver was stopping (Ctrl-C, SIGTERM)


@dataclass
class _Running:
    num: int
    cfg: DictConfig
    job_dir: Path
    label: str
    proc: Any
    conn: Any
    beat: Any
    started: float
    last_count: int = 0
    last_progress: float = 0.0
    answer: dict[str, Any] | None = None  # what the job sent back (sweep/process.py)
    death: tuple[str, str] | None = None  # (kind, how) once the driver decided its end
    force: bool = False  # the driver's verdict replaces what the job wrote (timeout, stall)
    kill_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def job_label(overrides: Sequence[str], common: set[str]) -> str:
    """What tells this job apart from the others of its sweep."""
    return " ".join(o for o in filter_overrides(overrides) if o not in common) or "defaults"


def common_overrides(job_overrides: Sequence[Sequence[str]]) -> set[str]:
    sets = [set(o) for o in job_overrides]
    return set.intersection(*sets) if len(sets) > 1 else set()


def task_config(cfg: DictConfig) -> DictConfig:
    """The job's config without its hydra node, as Hydra's run_job hands it to the task."""
    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


class DriverJobReturn(JobReturn):
    """Hydra's JobReturn for a job the driver ran, whose ``cfg`` (the task's config, as ``run_job``
    hands it to the task) and ``hydra_cfg`` (the hydra node, with the job's output_dir) are deep
    copies of the job's config made when first read. Hydra's sweepers and ours seldom read them
    (a job's folder, under Ray), and the two copies were ~20-30 ms of the driver's serial work a
    job, between one job's end and the next one's start. The job's config is not changed after
    the job ends, so a late copy is the copy the driver would have made then."""

    def __init__(self, source: DictConfig | None = None, job_dir: Path | None = None, **fields: Any) -> None:
        # without a source (dataclasses.replace passes the fields only): a plain JobReturn
        self._copies: dict[str, Any] = {}
        super().__init__(**fields)
        if source is not None:
            self._copies = {}  # JobReturn's own __init__ set both to None: not a value of the job's
        self._source, self._job_dir = source, job_dir

    @property  # type: ignore[override]
    def cfg(self) -> Any:
        if "cfg" not in self._copies:
            self._copies["cfg"] = task_config(self._source)
        return self._copies["cfg"]

    @cfg.setter
    def cfg(self, value: Any) -> None:
        self._copies["cfg"] = value

    @property  # type: ignore[override]
    def hydra_cfg(self) -> Any:
        if "hydra_cfg" not in self._copies:
            hydra_cfg = OmegaConf.masked_copy(self._source, "hydra")
            with read_write(hydra_cfg), open_dict(hydra_cfg):
                hydra_cfg.hydra.runtime.output_dir = str(self._job_dir)
            self._copies["hydra_cfg"] = hydra_cfg
        return self._copies["hydra_cfg"]

    @hydra_cfg.setter
    def hydra_cfg(self, value: Any) -> None:
        self._copies["hydra_cfg"] = value

    def __reduce__(self) -> Any:  # pickled (a sweeper's checkpoint, Ray) as Hydra's own JobReturn
        ret = JobReturn(overrides=self.overrides, cfg=self.cfg, hydra_cfg=self.hydra_cfg,
                        working_dir=self.working_dir, task_name=self.task_name, status=self.status)
        ret._return_value = self._return_value
        return ret.__reduce__()


def prefetch(modules: Sequence[str]) -> threading.Thread | None:
    """Import ``modules`` in a background thread, now. The driver's first job waits for the job
    server's preload (torch, the training code: seconds of one core), and the driver sits idle
    meanwhile; what its report will import at the sweep's end (pandas, matplotlib: ~1 s) loads on
    the other core then, instead of after the last job. Jobs never fork from the driver (they come
    from the job server), so the thread cannot leak into one. A module that fails to import here
    fails again, and says so, where it is used."""

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # reported where the module is used
                return

    if not modules or all(m in sys.modules for m in modules):
        return None
    thread = threading.Thread(target=load, name="hexsweep-prefetch")
    thread.start()
    return thread


class SweepDriver:
    def __init__(self, launcher: Any, n_jobs: int, total: int, sweep_dir: Path) -> None:
        self.launcher = launcher
        self.params = launcher.params
        self.app: JobApp = app_for(launcher.task_function)
        self.sweep_dir = sweep_dir
        self.n_jobs = n_jobs
        self.common: set[str] = set()
        self.timeout_s = self.params.get("timeout_s")
        self.stall_timeout_s = self.params.get("stall_timeout_s")
        self.kill_grace_s = float(self.params.get("kill_grace_s", 30.0))
        owner.own(sweep_dir, wait=self.app.waits_for_owner(launcher.config))  # SweepBusy if another driver runs it
        callbacks = [str(c.get("_target_", "")).rpartition(".")[0]
                     for c in (OmegaConf.select(launcher.config, "hydra.callbacks") or {}).values()]
        extra = (*self.app.preload, "hexsweep.sweep.warm_hydra", *(c for c in callbacks if c))
        self.ctx = process.context(process.server_preload(launcher.task_function, extra))
        self.prefetch = prefetch(self.app.driver_later)
        self.singleton_state = Singleton.get_state()
        self.stopping = False
        self.running: dict[int, _Running] = {}
        enabled = self.params.get("progress", "auto") != "off"
        self.progress = SweepProgress(total, n_jobs, float(self.params.get("progress_interval_s", 15.0)), enabled)

    # ---- one job -------------------------------------------------------------------------
    def _start(self, cfg: DictConfig) -> Outcome | None:
        num = int(cfg.hydra.job.num)
        job_dir = self.sweep_dir / str(cfg.hydra.sweep.subdir)
        label = job_label(list(cfg.hydra.overrides.task), self.common)
        if (done := self.app.done_before(cfg, job_dir)) is not None:
            self.progress.skipped(num, label)
            return self._outcome(num, cfg, job_dir, COMPLETED, None, done, skipped=True)
        if (who := self.app.still_running(cfg, job_dir)) is not None:
            # a job that outlived its driver: starting it again would mix two runs in one folder
            log.warning("job %d (%s) is still running (%s): not started again", num, label, who)
            self.progress.skipped(num, label)
            return self._outcome(num, cfg, job_dir, RUNNING, None, None, skipped=True)
        payload = {"task_function": self.launcher.task_function, "hydra_context": self.launcher.hydra_context,
                   "config": cfg, "singleton_state": self.singleton_state, "env": job_env(self.n_jobs),
                   "cwd": str(Path.cwd()),
                   "threads": self.app.job_threads(self.n_jobs),
                   "slots": None if self.app.takes_own_slot else self.slot_spec()}
        try:
            proc, conn, beat = process.start_job(self.ctx, f"hexsweep-job-{num}", payload)
        except (OSError, EOFError) as e:  # the job died before it took its payload (e.g. its import failed)
            death = ("Crashed", f"could not start ({type(e).__name__}: {e}); see the sweep's log")
            log.error("job %d (%s) %s", num, label, death[1])
            try:
                record = self.app.settle(cfg, job_dir, death)
            except OSError:
                record = None
            self.progress.started()
            self.progress.finished(num, CRASHED, 0.0, label)
            return self._outcome(num, cfg, job_dir, CRASHED, None, record, death=death)
        now = time.monotonic()
        self.running[num] = _Running(num, cfg, job_dir, label, proc, conn, beat, now, last_progress=now)
        self.progress.started()
        return None

    def slot_spec(self) -> dict[str, Any]:
        """Where and how a plain app's job takes its slot: hexsweep's slot pool, by default the
        one hexsweep.train's jobs use when run from the same directory (outputs/.locks/<host>)."""
        lock_dir = self.params.get("slots_dir") or str(Path.cwd() / "outputs" / ".locks" / host())
        return {"lock_dir": lock_dir, "slots_per_gpu": self.params.get("slots_per_gpu"),
                "cpu_slots": self.n_jobs}

    def _watch(self, job: _Running, now: float) -> None:
        """Timeout, stall watchdog and kill escalation for one running job."""
        count = job.beat.value
        if count != job.last_count:
            job.last_count, job.last_progress = count, now
        if job.kill_at is not None and now >= job.kill_at:
            process.signal_job(job.proc, signal.SIGKILL)
            job.kill_at = math.inf
            return
        if job.death is not None:
            return
        if self.timeout_s and now - job.started > self.timeout_s:
            job.death, job.force = ("Timeout", f"exceeded hydra.launcher.timeout_s={self.timeout_s}"), True
            process.signal_job(job.proc, signal.SIGINT)
            job.kill_at = now + self.kill_grace_s
            return
        watched = self.app.beats_from_start or count > 0
        if self.stall_timeout_s and watched and now - job.last_progress > self.stall_timeout_s:
            job.death = ("Stalled", f"made no progress for {now - job.last_progress:.0f} s "
                                    f"(hydra.launcher.stall_timeout_s={self.stall_timeout_s}): killed")
            job.force = True
            process.signal_job(job.proc, signal.SIGCONT)  # a stopped job must run to die
            process.signal_job(job.proc, signal.SIGKILL)
            job.kill_at = math.inf

    def _finish(self, job: _Running) -> Outcome:
        job.proc.join(5)
        if job.answer is None:
            job.answer = process.receive(job.conn)
        job.conn.close()
        code = job.proc.exitcode
        death = job.death
        if job.answer is None and death is None:
            how = (f"was killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exited with code {code} without a result")
            interrupted = self.stopping and code in (130, -signal.SIGINT, -signal.SIGKILL, -signal.SIGTERM)
            death = ("Interrupted" if interrupted else "Crashed", how)
        elif job.answer is not None and not job.force:
            death = None
        try:
            record = self.app.settle(job.cfg, job.job_dir, death if (job.answer is None or job.force) else None,
                                     force=job.force)
        except OSError as e:  # a full or read-only disk: the sweep goes on, the job counts as failed
            kind, how = death or ("Crashed", "ended without a result")
            log.error("job %d: cannot record how it ended in %s (%s)", job.num, job.job_dir, e.strerror or e)
            record = JobResult(DEATH_STATUS.get(kind, FAILED) if death else FAILED,
                               error=JobError("OSError", f"cannot write its result: {e.strerror or e}"))
        if record is not None:
            status = self.app.status_of(record)
        elif job.answer is not None and not job.force:
            status = COMPLETED if job.answer["status"] == "completed" else FAILED
        else:
            status = DEATH_STATUS[death[0]] if death else CRASHED
        out = self._outcome(job.num, job.cfg, job.job_dir, status, None if job.force else job.answer, record,
                            death=death)
        self.progress.finished(job.num, status, time.monotonic() - job.started, job.label)
        return out

    def _outcome(self, num: int, cfg: DictConfig, job_dir: Path, status: str,
                 answer: dict[str, Any] | None, record: Any, skipped: bool = False,
                 death: tuple[str, str] | None = None) -> Outcome:
        out = self._make_outcome(num, cfg, job_dir, status, answer, record, skipped, death)
        if not skipped and status != RUNNING:
            value = out.ret._return_value if out.ret.status == JobStatus.COMPLETED else None
            record_outcome(self.sweep_dir, num, list(cfg.hydra.overrides.task), status, value)
        return out

    def _make_outcome(self, num: int, cfg: DictConfig, job_dir: Path, status: str,
                      answer: dict[str, Any] | None, record: Any, skipped: bool,
                      death: tuple[str, str] | None) -> Outcome:
        # Hydra's JobReturn, as its run_job builds it in the job: the task's config, the hydra
        # node (composed in the driver; run_job adds only runtime.output_dir), working dir, name
        ret = DriverJobReturn(cfg, job_dir, overrides=list(cfg.hydra.overrides.task),
                              working_dir=(answer or {}).get("working_dir") or str(job_dir),
                              task_name=(answer or {}).get("task_name") or str(cfg.hydra.job.name))
        if answer is not None:
            ret.status = JobStatus.COMPLETED if answer["status"] == "completed" else JobStatus.FAILED
            ret.return_value = answer["value"]
        elif skipped:  # completed in an earlier run of this sweep folder: its recorded value
            ret.status = JobStatus.COMPLETED
            ret.return_value = self.app.value_of(record)
        else:
            ret.status = JobStatus.FAILED
            kind, how = death or ("Crashed", "ended without a result")
            ret.return_value = JobDied(f"job {num} ({job_label(ret.overrides, self.common)}) {how} [{kind}]")
        self.app.hydra_return(ret, record)
        return Outcome(num, cfg, job_dir, status, ret, record, skipped, interrupted=self.stopping)

    # ---- the loop ------------------------------------------------------------------------
    def run(self, feed: Callable[[], DictConfig | None], on_done: Callable[[Outcome], None]) -> None:
        """Keep up to n_jobs running, taking configs from ``feed`` (None: nothing more for now),
        until ``feed`` has nothing and no job runs. Raises SweepInterrupted on Ctrl-C/SIGTERM/SIGHUP
        (a closed terminal: the job server and resource tracker ignore it, sweep/process.py)."""
        stops = (signal.SIGTERM, *stopping.heeded((signal.SIGHUP,)))  # SIGHUP unless nohup ignores it
        previous = {sig: signal.signal(sig, _raise_interrupt) for sig in stops}
        try:
            with self.progress:
                try:
                    self._loop(feed, on_done)
                except KeyboardInterrupt:
                    self._interrupt(on_done)
            if self.stopping:
                try:
                    self.app.report(self.sweep_dir, interrupted=True, config=self.launcher.config)
                except KeyboardInterrupt:
                    print("[hexsweep] report skipped (interrupted again)", file=sys.stderr, flush=True)
                # a plain app continues with the launcher's own resume (sweep.json)
                again = self.app.resume_overrides() or ["hydra.launcher.resume=true"]
                stopping.say_resume(stopping.resume_command(self.app.program(), self.launcher.config,
                                                            self.sweep_dir, again))
                raise SweepInterrupted("interrupted")
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self, feed: Callable[[], DictConfig | None], on_done: Callable[[Outcome], None]) -> None:
        more = True
        while True:
            while more and not self.stopping and len(self.running) < self.n_jobs:
                cfg = feed()
                if cfg is None:
                    more = False
                    break
                if (skipped := self._start(cfg)) is not None:
                    on_done(skipped)
            if not self.running:
                if not more:
                    return
                continue
            self._wait_once(on_done)
            more = True  # a finished job may let the feed give more (Optuna)

    def _wait_once(self, on_done: Callable[[Outcome], None]) -> None:
        jobs = list(self.running.values())
        waitables = [j.proc.sentinel for j in jobs] + [j.conn for j in jobs if j.answer is None]
        ready = set(wait(waitables, timeout=POLL_S))
        now = time.monotonic()
        for job in jobs:
            if job.answer is None and job.conn in ready:
                job.answer = process.receive(job.conn)
            if job.proc.sentinel in ready or not job.proc.is_alive():
                del self.running[job.num]
                on_done(self._finish(job))
            else:
                self._watch(job, now)

    def _interrupt(self, on_done: Callable[[Outcome], None]) -> None:
        """SIGINT to every running job, SIGKILL after kill_grace_s, at once on a second Ctrl-C."""
        self.stopping = True
        print(f"\n[hexsweep] interrupted: stopping {len(self.running)} running job(s) "
              f"(SIGKILL after {self.kill_grace_s:g} s; Ctrl-C again to kill now) ...", file=sys.stderr, flush=True)
        now = time.monotonic()
        for job in self.running.values():
            process.signal_job(job.proc, signal.SIGCONT)
            process.signal_job(job.proc, signal.SIGINT)
            job.kill_at = now + self.kill_grace_s
        while self.running:
            try:
                self._wait_once(on_done)
            except KeyboardInterrupt:
                print("[hexsweep] killing the running jobs now", file=sys.stderr, flush=True)
                for job in self.running.values():
                    job.kill_at = 0.0
