"""The hexsweep launcher: every job in a fresh process, as many at once as there are slots.

Why not the joblib launcher (shared/design.md has the measurements): a worker killed by
SIGKILL or the OOM killer raises TerminatedWorkerError and the remaining jobs never
start; reused workers keep the first job's CUDA device; a raising job skips Hydra's
post-sweep callback. Here:

- Before any job starts, every job's config is composed and validated; a bad value stops
  the sweep with one line naming the job and the key.
- A pool of ``n_jobs`` threads each forks one process per job (fork: the parent already
  imported torch, so a job starts in milliseconds; the parent never initialises CUDA,
  so each child gets a clean CUDA state and its slot's explicit device). The job holds
  its slot lock (hexsweep/resources/slots.py) for its whole life.
- A job that dies (signal, os._exit, segfault, OOM killer) is recorded ``crashed`` in its
  folder; its slot is freed by the kernel; the other jobs go on. A job never makes the
  sweep raise, so Hydra's ``on_multirun_end`` runs and the SweepReport callback
  aggregates, reports and sets the exit status.
- Ctrl-C or SIGTERM: running jobs are interrupted (they record ``interrupted``), no new
  job starts, the sweep is aggregated, and the process exits 130. Re-running with
  ``hydra.sweep.dir=<same dir> resume=true`` runs only the jobs not completed.
- Jobs are independent futures (``JobRunner.submit``), with no batch barrier, so a
  sweeper can start a new job the moment one finishes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from hexsweep.atomic import atomic_write_json, atomic_write_text
from hexsweep.cli import fail, first_line
from hexsweep.config import validate
from hexsweep.devices import usable_cores
from hexsweep.errors import HexsweepError
from hexsweep.jobfolder import JobFolder, read_result
from hexsweep.resources.gpus import gpu_count
from hexsweep.resources.job import PARALLEL_ENV
from hexsweep.sweep.progress import SweepProgress

log = logging.getLogger(__name__)
JOB_PROCESS_ENV = "HEXSWEEP_JOB_PROCESS"
PR_SET_PDEATHSIG = 1


def default_n_jobs(config: DictConfig, num_jobs: int) -> int:
    """GPU slots if there are GPUs (and the job may use them), else the CPU cores."""
    device = str(config.device)
    gpus = gpu_count() if device == "auto" or device.startswith("cuda") else 0
    machine = gpus * int(config.slots_per_gpu) if gpus else usable_cores()
    return max(1, min(machine, num_jobs))


def warm_imports() -> None:
    """Import in the parent what every job would import on first use, so forked jobs share it.

    Building a torch optimizer imports torch._dynamo, sympy and ~800 modules (1.5 s); done
    once here, each forked job starts with them loaded. It runs no parallel kernel (one
    scalar parameter), so the parent never starts the OpenMP pool a forked child could not use.
    """
    import torch

    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401  (the report, after the sweep)


def _die_with_parent() -> None:
    """Linux: the job gets SIGTERM if the sweep process dies, instead of running on orphaned."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _job_process(hydra_context: Any, task_function: Any, config: DictConfig,
                 singleton_state: dict) -> None:
    """Runs in the forked job process."""
    _die_with_parent()
    os.environ[JOB_PROCESS_ENV] = "1"
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(config)
    try:
        ret = run_job(hydra_context=hydra_context, config=config, task_function=task_function,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except KeyboardInterrupt:
        os._exit(130)
    os._exit(0 if ret.status == JobStatus.COMPLETED else 1)


def compose_job(hydra_context: Any, master: DictConfig, sweep_dir: Path, overrides: Sequence[str],
                num: int) -> DictConfig:
    """Job ``num``'s config, in the sweep folder resolved once by the driver."""
    cfg = hydra_context.config_loader.load_sweep_config(master, list(overrides))
    with open_dict(cfg):
        cfg.hydra.job.id = f"{cfg.hydra.job.name}_{num}"
        cfg.hydra.job.num = num
        cfg.hydra.sweep.dir = str(sweep_dir)  # one folder for all jobs (its name holds a time)
    return cfg


def job_return(cfg: DictConfig, job_dir: Path, record: dict | None) -> JobReturn:
    """What Hydra gets back for a job: always COMPLETED (the folder holds the truth), with the
    objective, or NaN for a job that did not complete."""
    value = math.nan
    if record and record.get("status") in ("completed", "pruned"):
        value = (record.get("objective") or {}).get("value", math.nan)
    with read_write(cfg), open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(job_dir)  # where sweepers look for the job's folder
    ret = JobReturn(overrides=list(cfg.hydra.overrides.task), cfg=cfg, hydra_cfg=cfg,
                    working_dir=str(job_dir), task_name=cfg.hydra.job.name,
                    status=JobStatus.COMPLETED)
    ret.return_value = value
    return ret


def record_death(job_dir: Path, cfg: DictConfig, how: str, kind: str, force: bool = False) -> dict:
    """Write the result a dead job could not write itself."""
    record = read_result(job_dir) or {}
    if not force and record.get("status") not in (None, "running", "crashed"):
        return record
    record.update({
        "status": "failed" if kind == "Timeout" else "crashed",
        "error": {"type": kind, "message": f"the job's process {how}"},
        "experiment": record.get("experiment", cfg.get("experiment_name")),
        "overrides": list(cfg.hydra.overrides.task),
        "job": record.get("job", {"name": cfg.hydra.job.name, "num": int(cfg.hydra.job.num)}),
    })
    job_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job_dir / "error.txt", f"{kind}: the job's process {how}\n")
    JobFolder(job_dir).finish(record)
    return record


class JobRunner:
    """Runs jobs of one sweep, each in its own process, at most ``n_jobs`` at once."""

    def __init__(self, launcher: Any, n_jobs: int, total: int) -> None:
        self.launcher = launcher
        self.config: DictConfig = launcher.config
        self.sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        self.n_jobs = n_jobs
        self.timeout_s = launcher.params.get("timeout_s")
        self.pool = ThreadPoolExecutor(max_workers=n_jobs, thread_name_prefix="hexsweep-job")
        self.stopping = threading.Event()
        self.children: dict[int, multiprocessing.process.BaseProcess] = {}
        self.lock = threading.Lock()
        self.singleton_state = Singleton.get_state()
        self.common: set[str] = set()
        enabled = launcher.params.get("progress", "auto") != "off"
        self.progress = SweepProgress(total, n_jobs, launcher.params.get("progress_interval_s", 15.0),
                                      enabled)

    def job_config(self, overrides: Sequence[str], num: int) -> DictConfig:
        return compose_job(self.launcher.hydra_context, self.config, self.sweep_dir, overrides, num)

    def submit(self, cfg: DictConfig) -> Future:
        return self.pool.submit(self._run, cfg)

    def _run(self, cfg: DictConfig) -> JobReturn:
        from hexsweep.train import completed_result

        num = int(cfg.hydra.job.num)
        job_dir = self.sweep_dir / str(cfg.hydra.sweep.subdir)
        overrides = list(cfg.hydra.overrides.task)
        label = job_label(overrides, self.common)
        if cfg.get("resume") and (done := completed_result(job_dir, overrides)):
            self.progress.skipped(num, label)
            return job_return(cfg, job_dir, done)
        if self.stopping.is_set():
            return job_return(cfg, job_dir, None)
        ctx = multiprocessing.get_context("fork")
        proc = ctx.Process(target=_job_process, name=f"hexsweep-job-{num}",
                           args=(self.launcher.hydra_context, self.launcher.task_function, cfg,
                                 self.singleton_state))
        start = time.monotonic()
        with self.lock:
            proc.start()
            self.children[num] = proc
        if self.stopping.is_set():  # interrupted while this one was starting
            os.kill(proc.pid, signal.SIGINT)
        self.progress.started()
        proc.join(self.timeout_s)
        if proc.is_alive():  # over its time limit
            proc.terminate()
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            record_death(job_dir, cfg, f"exceeded hydra.launcher.timeout_s={self.timeout_s}",
                               "Timeout", force=True)
        with self.lock:
            self.children.pop(num, None)
        record = read_result(job_dir)
        if record is None or record.get("status") in ("running", "crashed"):
            code = proc.exitcode
            how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"exited with code {code} without a result")
            record = record_death(job_dir, cfg, how, "Crashed")
        self.progress.finished(num, record["status"], time.monotonic() - start, label)
        return job_return(cfg, job_dir, record)

    def interrupt(self) -> None:
        """Stop starting jobs; interrupt the running ones (they record ``interrupted``)."""
        self.stopping.set()
        with self.lock:
            for proc in self.children.values():
                if proc.is_alive() and proc.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGINT)


def job_label(overrides: Sequence[str], common: set[str]) -> str:
    """What tells this job apart from the others of its sweep."""
    return " ".join(o for o in filter_overrides(overrides) if o not in common) or "defaults"


def common_overrides(job_overrides: Sequence[Sequence[str]]) -> set[str]:
    sets = [set(o) for o in job_overrides]
    return set.intersection(*sets) if len(sets) > 1 else set()


def validate_all(job_config: Callable[[Sequence[str], int], DictConfig], job_overrides: Sequence[Sequence[str]],
                 first: int) -> list[DictConfig]:
    """Compose and validate every job before the first starts; one line on the first bad one."""
    configs = []
    common = common_overrides(job_overrides)
    for i, overrides in enumerate(job_overrides):
        label = job_label(overrides, common)
        try:
            cfg = job_config(overrides, first + i)
            validate(cfg)
        except HexsweepError as e:
            fail(f"job {first + i} ({label}): {e}")
        except (HydraException, OmegaConfBaseException) as e:
            fail(f"job {first + i} ({label}): {first_line(str(e))}")
        configs.append(cfg)
    return configs


def write_manifest(sweep_dir: Path, configs: list[DictConfig], n_jobs: int) -> None:
    """``sweep.json``: the planned jobs, so the report can list jobs that never started."""
    import json

    path = sweep_dir / "sweep.json"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        manifest = {"jobs": {}}
    for cfg in configs:
        manifest["jobs"][str(cfg.hydra.job.num)] = {
            "overrides": list(cfg.hydra.overrides.task), "dir": str(cfg.hydra.sweep.subdir),
            "experiment": cfg.get("experiment_name")}
    manifest.update({"n_jobs": n_jobs, "command": sys.argv, "total": len(manifest["jobs"])})
    atomic_write_json(path, manifest)


def memoize_sweep_configs(config_loader: Any) -> None:
    """Compose each job's config once per sweep.

    Hydra's BasicSweeper composes every job to validate it, then hands the overrides to the
    launcher, which must compose them again (~0.15 s a job, before the first job starts).
    The sweeper and the launcher share one config loader, so caching its
    ``load_sweep_config`` on that object (not on the class) removes the second pass.
    """
    if getattr(config_loader, "_hexsweep_memo", None) is not None:
        return
    original = config_loader.load_sweep_config
    memo: dict[tuple[str, ...], DictConfig] = {}

    def load_sweep_config(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        # first call (the sweeper's check, which discards the result): compose and keep it;
        # second call (the launcher, which owns and edits it): hand the kept one over
        key = tuple(sweep_overrides)
        if key in memo:
            return memo.pop(key)
        cfg = original(master_config, list(sweep_overrides))
        memo[key] = cfg
        return cfg

    config_loader.load_sweep_config = load_sweep_config
    config_loader._hexsweep_memo = memo
    config_loader._hexsweep_original = original


def unmemoize_sweep_configs(config_loader: Any) -> None:
    """For sweepers that compose each job once themselves (the Optuna sweeper)."""
    if getattr(config_loader, "_hexsweep_original", None) is not None:
        config_loader.load_sweep_config = config_loader._hexsweep_original
        config_loader._hexsweep_memo = None


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    requested = launcher.params.get("n_jobs")
    n_jobs = requested if requested and requested > 0 else default_n_jobs(launcher.config, len(job_overrides))
    runner = JobRunner(launcher, n_jobs, len(job_overrides))
    runner.common = common_overrides(job_overrides)
    configs = validate_all(runner.job_config, job_overrides, initial_job_idx)
    warm_imports()
    runner.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(runner.sweep_dir, configs, n_jobs)
    os.environ[PARALLEL_ENV] = str(n_jobs)  # inherited by the forked jobs: their CPU share
    log.info("hexsweep launcher: %d jobs, %d at once, sweep folder %s", len(configs), n_jobs,
             runner.sweep_dir)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    futures: list[Future] = []
    try:
        with runner.progress:
            futures = [runner.submit(cfg) for cfg in configs]
            for f in futures:
                while not f.done():
                    f_wait(f)
            return [f.result() for f in futures]
    except KeyboardInterrupt:
        print("\n[hexsweep] interrupted: stopping running jobs ...", file=sys.stderr, flush=True)
        runner.interrupt()
        for f in futures:
            f_wait(f, None)
        from hexsweep.sweep.callbacks import report_sweep

        report_sweep(runner.sweep_dir, interrupted=True)
        print(f"[hexsweep] resume with: hydra.sweep.dir={runner.sweep_dir} resume=true", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        runner.pool.shutdown(wait=False)


def f_wait(f: Future, timeout: float | None = 0.5) -> None:
    """Wait in short steps so the main thread stays responsive to signals."""
    with contextlib.suppress(TimeoutError):
        f.exception(timeout=timeout)
