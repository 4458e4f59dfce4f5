"""Experiment trackers, picked by the ``logger`` config group: TensorBoard, MLflow, a CSV file.

``logger=none|tensorboard|mlflow|csv``, or several: ``logger=[tensorboard,mlflow]`` (the group's
files in conf/logger/ each turn one ``logger.<name>.enabled`` on). A job opens its trackers
(``tracked``), the training loop hands them every step and every epoch (``Trackers.on_step``,
``on_epoch``), and the job closes them with its final status.

- **tensorboard**: event files in the job's own folder, so ``tensorboard --logdir <sweep>`` shows
  one run per job. Scalars per epoch (``train/*``, ``val/*``, ``run/*``: lr, samples/s, memory)
  and every ``log_every_n_steps`` steps (``step/*``); at the end the job's hyperparameters (a
  fixed set of keys plus its overrides, its status and Optuna trial) and final metrics
  (``hparams/*``) go to the HParams plugin, so the jobs of a sweep, and of several sweeps under
  one logdir, compare side by side.
- **mlflow**: one run per job, nested under the sweep's parent run, which the sweep driver creates
  before the first job starts (``start_sweep``) and names in ``<sweep>/mlflow.json``, a file every
  launcher's jobs can read. Params: the fixed keys and the job's resolved overrides; metrics per
  epoch; tags: job number, status, slot, host, Optuna trial; artifacts: result.json, error.txt and,
  with ``log_model``, the best checkpoint. A job ends its run FINISHED, FAILED or KILLED; a job
  that could not (SIGKILL, the stall watchdog) is ended by the driver after the sweep
  (``finish_sweep``, from the run id the job recorded in result.json).
- **csv**: ``metrics.csv`` in the job's folder, one row per epoch.

A tracker that fails (an unreachable server, a locked or unwritable store) never fails or hangs
the job: one warning, and the job goes on without it. The job's status words are
hexsweep/jobfolder.py's; this module only maps them.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import json
import logging
import math
import os
import re
import socket
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from omegaconf import DictConfig, ListConfig, OmegaConf

from hexsweep.atomic import atomic_write_json
from hexsweep.devices import is_oom
from hexsweep.errors import HexsweepError
from hexsweep.heartbeat import beat, busy
from hexsweep.jobfolder import RUNNING, JobError, JobResult

if TYPE_CHECKING:  # the sweep's driver imports this module too, and needs no torch
    import torch

log = logging.getLogger("hexsweep.tracking")

# A tracker's start and its close beat the stall watchdog from a helper thread for at most this
# long (heartbeat.busy): its imports take seconds, tens on a loaded machine, and each request to
# an http(s) store is bounded by request_timeout_s x (max_retries + 1), 30 s at the defaults.
TRACKER_BUSY_LIMIT_S = 600.0
PARENT_FILE = "mlflow.json"  # in the sweep folder: the store, experiment and parent run of its jobs
CSV_FILE = "metrics.csv"
# job status (hexsweep/jobfolder.py) -> how its MLflow run ends; every other status is FAILED
RUN_STATUS = {"completed": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED"}
# ... and the Optuna trial state the sweeper gives such a job
TRIAL_STATE = {"completed": "COMPLETE", "pruned": "PRUNED"}
# compared in every job's HParams row and logged as MLflow params, whatever the sweep overrides
HPARAM_KEYS = ("experiment_name", "batch_size", "seed", "optim.lr", "optim.weight_decay", "model.name",
               "model.channels", "model.stages", "model.blocks_per_stage", "model.head", "model.dropout",
               "loss.policy_weight", "loss.value_weight", "data.name", "data.board_size", "trainer.epochs",
               "trainer.lr_schedule")
# overrides that are bookkeeping, not hyperparameters, left out of HParams and MLflow params (a trial's
# study and number are there as optuna_trial/optuna_study, and MLflow tags)
NOT_HPARAMS = ("hydra", "paths.", "logger", "resume", "trainer.progress", "optuna.", "resources.lock_dir")
# the HParams plugin's metric columns: the final model's metrics (the best epoch's weights are restored)
FINAL_METRICS = ("objective", "val_objective", "val_loss", "val_policy_loss", "val_value_loss",
                 "val_policy_acc", "val_value_acc", "best_epoch", "epochs_run", "win_rate_vs_generator",
                 "wall_time_s")


class TrackingError(HexsweepError):
    """A tracker could not be set up or could not write; the job warns once and goes on without it."""


def mlflow_status(status: str | None) -> str:
    return RUN_STATUS.get(status or "", "FAILED")


def enabled(cfg: Any) -> list[str]:
    """The trackers ``cfg`` turns on, in a fixed order."""
    node = OmegaConf.select(cfg, "logger", default=None)
    if node is None:
        return []
    return [name for name in ("tensorboard", "mlflow", "csv") if OmegaConf.select(node, f"{name}.enabled")]


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float | str):
        return value
    if isinstance(value, DictConfig | ListConfig):
        return json.dumps(OmegaConf.to_container(value, resolve=True))
    return None if value is None else str(value)


def hyperparameters(cfg: Any, overrides: list[str]) -> dict[str, Any]:
    """The fixed keys (HPARAM_KEYS) and every overridden key, with its resolved value; a config
    group (``experiment=policy_heavy``) keeps the option's name."""
    out: dict[str, Any] = {}
    for key in HPARAM_KEYS:
        out[key] = _scalar(OmegaConf.select(cfg, key, default=None))
    for override in overrides:
        key, _, raw = override.partition("=")
        key = key.lstrip("+~")
        if not key or key.startswith(NOT_HPARAMS):
            continue
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        out[key] = raw.strip("'\"") if value is None or isinstance(value, DictConfig) else _scalar(value)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def final_metrics(record: JobResult) -> dict[str, float]:
    """The final model's metrics from a job's result (whatever of them it has)."""
    best = record.best or {}
    values = {k: best.get(k) for k in FINAL_METRICS}
    values.update({"objective": record.objective.value if record.objective else None,
                   "best_epoch": record.best_epoch, "epochs_run": record.epochs_run,
                   "wall_time_s": record.wall_time_s,
                   "win_rate_vs_generator": (record.strength or {}).get("win_rate_vs_generator")})
    return {k: float(v) for k, v in values.items() if _number(v) is not None}


def epoch_tag(key: str) -> str:
    """``train_loss`` -> ``train/loss``, ``val_policy_acc`` -> ``val/policy_acc``, ``lr`` -> ``run/lr``."""
    for prefix in ("train", "val"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1:]}"
    return "val/strength" if key == "strength" else f"run/{key}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


class End:
    """How a job ended, for the trackers: its status, its result record, its error."""

    def __init__(self, record: JobResult | None, error: BaseException | None = None) -> None:
        # a copy: what the trackers are told does not change the job's own record
        self.record = replace(record) if record is not None else JobResult(RUNNING)
        self.error = error
        if error is None:
            self.status = self.record.status if self.record.status != RUNNING else "completed"
        elif isinstance(error, KeyboardInterrupt):
            self.status = "interrupted"
        elif is_oom(error):
            self.status = "oom"
        else:
            self.status = "failed"
        if error is not None:
            self.record.update(status=self.status, error=JobError(type(error).__name__, _first_line(error)))

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "pruned")

    def traceback(self) -> str | None:
        return "".join(traceback.format_exception(self.error)) if self.error is not None else None


# ---------------------------------------------------------------- TensorBoard

class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, settings: Any, job_dir: Path, hparams: dict[str, Any]) -> None:
        # imported here, not with the module: the driver and --help never write events; the sweep's
        # job server preloads it for the jobs (hexsweep/sweep/warm.py)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is in the base install; without it, no logger
            raise TrackingError("logger=tensorboard needs TensorBoard: pip install tensorboard") from None
        for old in job_dir.glob("events.out.tfevents.*"):  # a rerun (resume, OOM retry) starts afresh
            old.unlink(missing_ok=True)
        self.hparams = hparams
        self.last_epoch = 0
        self.writer = SummaryWriter(log_dir=str(job_dir), flush_secs=int(settings.flush_secs))

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(f"step/{key}", value, step)

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        self.last_epoch = epoch
        for key, value in metrics.items():
            if key != "epoch" and _number(value) is not None:
                self.writer.add_scalar(epoch_tag(key), value, epoch)

    def abandon(self) -> None:
        self.writer.close()

    def close(self, end: End) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summaries

        try:
            for key, value in final_metrics(end.record).items():
                self.writer.add_scalar(f"hparams/{key}", value, self.last_epoch)
            hp = {**self.hparams, "status": end.status}
            optuna = end.record.optuna or {}
            if optuna.get("trial_number") is not None:
                hp.update({"optuna_trial": optuna["trial_number"], "optuna_study": optuna.get("study_name"),
                           "optuna_state": TRIAL_STATE.get(end.status, "FAIL")})
            experiment, start, _ = hparams_summaries({k: v for k, v in hp.items() if v is not None},
                                                     {f"hparams/{k}": 0.0 for k in FINAL_METRICS})
            for summary in (experiment, start, _session_end(end.ok)):
                self.writer.file_writer.add_summary(summary)
        finally:
            self.writer.close()


def _session_end(ok: bool) -> Any:
    """The HParams plugin's session-end summary with the job's status (torch's says success always)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    info = plugin_data_pb2.SessionEndInfo(status=api_pb2.Status.Value("STATUS_SUCCESS" if ok else "STATUS_FAILURE"),
                                          end_time_secs=time.time())
    content = plugin_data_pb2.HParamsPluginData(session_end_info=info, version=metadata.PLUGIN_DATA_VERSION)
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME,
                                                                 content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=smd)])


# ---------------------------------------------------------------- MLflow

def _redact(uri: str) -> str:
    return re.sub(r"//[^/@]*@", "//***@", uri)


@contextlib.contextmanager
def _init_lock(uri: str) -> Iterator[None]:
    """A fresh SQLite store is created (its tables migrated) by one process at a time."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def connect(settings: Any) -> tuple[Any, str]:
    """(MlflowClient, tracking URI), with the store reached once; TrackingError if it cannot be."""
    # bounded requests to an http(s) store: MLflow's default retries with backoff take minutes
    os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(settings.request_timeout_s))
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(int(settings.max_retries))
    try:
        import mlflow
        from mlflow import MlflowClient
    except ImportError:
        raise TrackingError("logger=mlflow needs MLflow: pip install -e '.[mlflow]'") from None
    logging.getLogger("alembic").setLevel(logging.WARNING)  # the store's one-time migration chatter
    uri = settings.tracking_uri or mlflow.get_tracking_uri()
    with _init_lock(uri):
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)  # creates (migrates) a new SQLite store under the lock
    return client, uri


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a local SQLite store lie beside it (``<outputs>/mlartifacts``), not in the cwd."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
    return None


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (or restored) if needed; safe against a concurrent creator."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, artifact_location=_artifact_location(uri))
        except MlflowException:  # another job created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def experiment_name(settings: Any, cfg: Any, otherwise: str) -> str:
    """``logger.mlflow.experiment_name``, else ``experiment_name`` unless it is "default", else ``otherwise``."""
    if settings.experiment_name:
        return str(settings.experiment_name)
    return str(cfg.experiment_name) if cfg.experiment_name != "default" else otherwise


def read_parent(sweep_dir: Path | None) -> dict[str, Any] | None:
    if sweep_dir is None:
        return None
    try:
        parent = json.loads((sweep_dir / PARENT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return parent if isinstance(parent, dict) and parent.get("run_id") else None


class MLflowTracker:
    name = "mlflow"

    def __init__(self, settings: Any, cfg: Any, job_dir: Path, record: JobResult, hparams: dict[str, Any],
                 sweep_dir: Path | None, slot: str | None) -> None:
        from mlflow.entities import Param

        self.client, uri = connect(settings)
        self.job_dir, self.log_model = job_dir, bool(settings.log_model)
        parent = read_parent(sweep_dir)
        if parent is not None and parent.get("tracking_uri") != _redact(uri):
            parent = None  # this job logs to another store than its sweep's parent run
        if parent is not None:
            exp = parent["experiment_id"]
        else:
            exp = experiment_id(self.client, experiment_name(settings, cfg, "hexsweep.train"), uri)
        job = record.job or {}
        tags = {"status": "running", "slot": slot or "", "host": socket.gethostname(), "job_dir": str(job_dir),
                "experiment": str(cfg.experiment_name)}
        if job.get("num") is not None:
            tags["job"] = str(job["num"])
        if parent is not None:
            tags["mlflow.parentRunId"] = parent["run_id"]
        name = f"job {job['num']}" if job.get("num") is not None else None  # the params tell the jobs apart
        self.run_id = self.client.create_run(exp, tags=tags, run_name=name).info.run_id
        record.tracking = record.tracking or {}
        record.tracking["mlflow"] = {"run_id": self.run_id, "experiment_id": exp,
                                                       "tracking_uri": _redact(uri)}
        params = [Param(k, str(v)[:6000]) for k, v in hparams.items() if v is not None]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        pass  # MLflow gets epochs only: a row per step would load a shared store for little

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, epoch) for k, v in metrics.items()
                 if k != "epoch" and _number(v) is not None]
        self.client.log_batch(self.run_id, metrics=batch)

    def abandon(self) -> None:
        pass  # the run stays RUNNING until the driver ends it after the sweep, with the job's status

    def close(self, end: End) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        step = int(end.record.epochs_run or 0)
        metrics = [Metric(f"final_{k}", v, now, step) for k, v in final_metrics(end.record).items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics,
                                  tags=[RunTag(k, v) for k, v in end_tags(end).items()])
            self.client.log_dict(self.run_id, _plain(end.record), "result.json")
            if (text := end.traceback()) is not None:
                self.client.log_text(self.run_id, text, "error.txt")
            if self.log_model and end.ok and (self.job_dir / "best.pt").exists():
                self.client.log_artifact(self.run_id, str(self.job_dir / "best.pt"), "checkpoints")
        finally:  # whatever else failed, the run does not stay RUNNING
            self.client.set_terminated(self.run_id, mlflow_status(end.status))


def end_tags(end: End) -> dict[str, str]:
    tags = {"status": end.status}
    if end.record.error:
        tags["error"] = end.record.error.message[:5000]
    optuna = end.record.optuna or {}
    if optuna.get("trial_number") is not None:
        tags.update({"optuna.study_name": str(optuna.get("study_name")),
                     "optuna.trial_number": str(optuna["trial_number"]),
                     "optuna.state": TRIAL_STATE.get(end.status, "FAIL")})
    return tags


def sweep_command(config: Any) -> str:
    """A sweep's command, as the MLflow experiment's name: the app and its overrides (no hydra.*)."""
    overrides = [o for o in (OmegaConf.select(config, "hydra.overrides.task", default=None) or [])
                 if not o.lstrip("+~").startswith("hydra") and not o.startswith("optuna.storage")]
    return " ".join(["hexsweep.train -m", *overrides])[:400]


def start_sweep(config: Any, sweep_dir: Path) -> dict[str, Any] | None:
    """In the sweep driver, before any job: the sweep's parent run, named in ``<sweep>/mlflow.json``.

    A resumed sweep (the file exists) reuses its parent run. None when MLflow is off or its store
    cannot be reached (one warning; the jobs then log top-level runs, or nothing)."""
    if "mlflow" not in enabled(config):
        return None
    settings = config.logger.mlflow
    try:
        client, uri = connect(settings)
        parent = read_parent(sweep_dir)
        if parent is not None and parent.get("tracking_uri") == _redact(uri):
            client.update_run(parent["run_id"], status="RUNNING")
            return parent
        name = experiment_name(settings, config, sweep_command(config))
        exp = experiment_id(client, name, uri)
        run = client.create_run(exp, run_name=sweep_dir.name, tags={
            "sweep_dir": str(sweep_dir), "command": sweep_command(config), "host": socket.gethostname()})
        parent = {"tracking_uri": _redact(uri), "experiment_id": exp, "experiment_name": name,
                  "run_id": run.info.run_id}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(sweep_dir / PARENT_FILE, parent)
        return parent
    except Exception as e:  # tracking must never stop a sweep
        log.warning("MLflow: no parent run for this sweep (%s); jobs log without one", _first_line(e))
        return None


def _plain(record: JobResult) -> dict[str, Any]:
    """result.json as MLflow's artifact: JSON-safe (a NaN objective stays NaN, other values as text)."""
    return json.loads(json.dumps(record.to_dict(), default=str))


def finish_sweep(settings: Any, sweep_dir: Path, records: list[JobResult], aborted: bool = False) -> None:
    """In the sweep driver, after the sweep: end every job's run the job left RUNNING (killed, stalled:
    it could not) with its folder's status and result.json, then the parent run."""
    parent = read_parent(sweep_dir)
    if parent is None:
        return
    try:
        client, uri = connect(settings)
        if _redact(uri) != parent.get("tracking_uri"):
            return
        counts: dict[str, int] = {}
        for record in records:
            counts[record.status] = counts.get(record.status, 0) + 1
            run_id = ((record.tracking or {}).get("mlflow") or {}).get("run_id")
            if not run_id or record.status == RUNNING:
                continue  # no run, or a job still alive (another host): its own to end
            if client.get_run(run_id).info.status not in ("RUNNING", "SCHEDULED"):
                continue
            end = End(record)
            client.set_tag(run_id, "status", end.status)
            if end.record.error:
                client.set_tag(run_id, "error", end.record.error.message[:5000])
            client.log_dict(run_id, _plain(record), "result.json")
            client.set_terminated(run_id, mlflow_status(end.status))
        for key in client.get_run(parent["run_id"]).data.tags:  # a resumed sweep's counts replace the last
            if key.startswith("jobs.") and key[5:] not in counts:
                client.delete_tag(parent["run_id"], key)
        for status, n in counts.items():
            client.set_tag(parent["run_id"], f"jobs.{status}", str(n))
        client.set_terminated(parent["run_id"], "KILLED" if aborted else "FINISHED")
    except Exception as e:
        log.warning("MLflow: could not finish the sweep's runs (%s)", _first_line(e))


# ---------------------------------------------------------------- CSV

class CsvTracker:
    name = "csv"

    def __init__(self, job_dir: Path) -> None:
        self.path = job_dir / CSV_FILE
        self.path.unlink(missing_ok=True)
        self.fields: list[str] | None = None

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        pass

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        if self.fields is None:
            self.fields = list(metrics)
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.fields, extrasaction="ignore")
            if f.tell() == 0:
                writer.writeheader()
            writer.writerow(dict(metrics))

    def abandon(self) -> None:
        pass

    def close(self, end: End) -> None:
        pass


# ---------------------------------------------------------------- the job's side

class Trackers:
    """The job's open trackers; one that raises is warned about once and dropped."""

    def __init__(self, backends: list[Any], every_n_steps: int = 0) -> None:
        self.backends = backends
        self.every = every_n_steps if any(b.name == "tensorboard" for b in backends) else 0
        self.step = 0
        self._window: tuple[float, int] | None = None  # (start, samples) of the current step window
        self.closed = False

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]

    def _each(self, method: str, *args: Any) -> None:
        for backend in list(self.backends):
            try:
                getattr(backend, method)(*args)
            except Exception as e:
                self.backends.remove(backend)
                log.warning("logger %s failed (%s); the job goes on without it", backend.name, _first_line(e))
                if method != "close":
                    with contextlib.suppress(Exception):
                        backend.abandon()

    def on_step(self, loss: torch.Tensor, samples: int, optimizer: torch.optim.Optimizer) -> None:
        """After each optimiser step; every ``log_every_n_steps`` steps the step scalars (one device sync)."""
        self.step += 1
        if not self.every:
            return
        if self._window is None:
            self._window = (time.perf_counter(), 0)
            return
        start, seen = self._window
        seen += samples
        if self.step % self.every:
            self._window = (start, seen)
            return
        now = time.perf_counter()
        values = {"loss": float(loss.detach()), "lr": float(optimizer.param_groups[0]["lr"]),
                  "samples_per_s": seen / (now - start) if now > start else math.nan,
                  "rss_mb": psutil.Process().memory_info().rss / 2**20}
        if loss.is_cuda or loss.device.type == "mps":
            import torch

            values["gpu_mem_mb"] = (torch.cuda.memory_allocated(loss.device) if loss.is_cuda
                                    else torch.mps.current_allocated_memory()) / 2**20
        self._each("log_step", self.step, values)
        self._window = (time.perf_counter(), 0)

    def on_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        self._each("log_epoch", epoch, metrics)
        self._window = None  # evaluation time is not training throughput

    def close(self, record: JobResult | None = None, error: BaseException | None = None) -> None:
        if self.closed:
            return
        self.closed = True
        with busy(TRACKER_BUSY_LIMIT_S):  # the last requests (artifacts, a remote store) are no stall
            self._each("close", End(record, error))


def _sweep_dir(job_dir: Path, record: JobResult) -> Path | None:
    """The sweep folder of a sweep's job (where mlflow.json lies), None for a single run."""
    if not record.multirun:
        return None
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        with contextlib.suppress(Exception):
            sweep = Path(str(HydraConfig.get().sweep.dir)).resolve()
            if job_dir.resolve().is_relative_to(sweep):
                return sweep
    return job_dir.parent


def open_trackers(cfg: Any, job_dir: Path, record: JobResult | None = None, slot: str | None = None) -> Trackers:
    """The trackers ``cfg.logger`` turns on, for the job in ``job_dir``. ``record`` (its result.json)
    gives the job's identity and receives the MLflow run id. Never raises: a tracker that
    cannot start is warned about and left out."""
    record = record if record is not None else JobResult(RUNNING)
    names = enabled(cfg)
    backends: list[Any] = []
    if not names:
        return Trackers(backends)
    hparams = hyperparameters(cfg, list(record.overrides or []))
    job = record.job or {}
    if job.get("num") is not None:
        hparams["job"] = job["num"]
    sweep_dir = _sweep_dir(job_dir, record)
    hparams["sweep"] = f"{sweep_dir.parent.name}/{sweep_dir.name}" if sweep_dir else "run"
    for name in names:
        beat()
        try:
            with busy(TRACKER_BUSY_LIMIT_S):  # an import or a slow store is no stall
                if name == "tensorboard":
                    backends.append(TensorBoardTracker(cfg.logger.tensorboard, job_dir, hparams))
                elif name == "mlflow":
                    backends.append(MLflowTracker(cfg.logger.mlflow, cfg, job_dir, record, hparams, sweep_dir, slot))
                else:
                    backends.append(CsvTracker(job_dir))
        except Exception as e:
            log.warning("logger %s is off for this job (%s)", name, _first_line(e))
    return Trackers(backends, int(cfg.logger.tensorboard.log_every_n_steps))


@contextlib.contextmanager
def tracked(cfg: Any, job_dir: Path, record: JobResult, slot: str | None = None) -> Iterator[Trackers]:
    """The job's trackers, closed with the job's status: the record's when the block ends, else the
    status its exception means (failed, oom, interrupted)."""
    trackers = open_trackers(cfg, job_dir, record, slot)
    try:
        yield trackers
    except BaseException as exc:
        trackers.close(record, exc)
        raise
    trackers.close(record)
