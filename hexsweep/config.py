"""Typed config schema (registered in Hydra's ConfigStore) and its validation.

The YAML files in conf/ fill these dataclasses; OmegaConf type-checks every override
against them (``batch_size=abc`` fails with the key named). Value ranges are checked by
``validate`` before any work starts, with one line naming the key, the value and what is
allowed.

Every numeric key (int, float, a list of them; optionally null) declares its range where it
is defined, with ``ranged(default, gt=/ge=/lt=/le=)``; ``validate`` checks them all, and
rejects NaN and infinity in every float. tests/test_config_ranges.py walks the schema and
fails on a numeric key without a range.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from hexsweep.errors import ConfigError
from hexsweep.hex.board import MAX_SIZE, MIN_SIZE
from hexsweep.pruners import PRUNERS, PrunerSettings
from hexsweep.ranges import RANGE, Range, ranged

SEED = {"ge": 0, "lt": 2**63, "allowed": "an integer in 0..2**63-1"}


@dataclass
class ModelConfig:
    """Two-headed residual network; see hexsweep/model.py for the two shapes."""

    name: str = "small"
    channels: int = ranged(32, gt=0)  # width of the first stage; later stages double it
    stages: int = ranged(1, gt=0)
    blocks_per_stage: int = ranged(4, ge=0)
    downsample: bool = False  # stride 2 at the start of every stage after the first
    head: str = "conv"  # conv: fully convolutional policy head; pooled: global pool + linear heads
    dropout: float = ranged(0.1, ge=0, lt=1)


@dataclass
class DataConfig:
    """Self-play dataset settings; the folder is derived from them unless ``path`` is set."""

    name: str = "small"  # part of the dataset folder name: no path separators, no ".."
    board_size: int = ranged(7, ge=MIN_SIZE, le=MAX_SIZE)
    # at least this many, rounded up to whole games; > board_size**2 + 1, so that there are two games
    num_positions: int = ranged(25_000, gt=0)
    # at most half, so that both splits get a game (datasets hold two games at least)
    val_fraction: float = ranged(0.1, gt=0, le=0.5)
    seed: int = ranged(1234, **SEED)
    temperature: float = ranged(0.25, ge=0)
    epsilon: float = ranged(0.05, ge=0, le=1)
    random_opening_moves: int = ranged(1, ge=0)
    games_per_chunk: int = ranged(64, gt=0)
    shard_size: int = ranged(100_000, gt=0)
    workers: int | None = ranged(None, gt=0)  # generation processes; None: all cores of this job's slot
    path: str | None = None  # an existing dataset folder (e.g. trmph import); skips generation
    augment: bool = True  # random 180-degree rotation and transpose+colour swap per sample


@dataclass
class TrainerConfig:
    epochs: int = ranged(10, ge=0)
    patience: int = ranged(3, ge=0)  # epochs without improvement of the objective before stopping; 0: never
    min_delta: float = ranged(0.001, ge=0)  # the least change of the objective that counts as better
    # max gradient norm; 0 or null: no clipping (a negative norm would reverse the gradients)
    grad_clip: float | None = ranged(1.0, ge=0, allowed="a number > 0, or 0 or null (no clipping)")
    amp: bool = True  # mixed precision on CUDA only
    lr_schedule: str = "none"  # none | cosine
    max_steps_per_epoch: int | None = ranged(None, gt=0)  # None: the whole training split
    eval_batch_size: int = ranged(2048, gt=0)
    progress: str = "auto"  # auto (a bar when stderr is a terminal) | on | off
    # best.pt, and last.pt: the complete training state, written at the end of every epoch
    checkpoints: bool = True
    # also write last.pt every this many training steps (a resumed job loses less); null: per epoch only
    checkpoint_every_steps: int | None = ranged(None, gt=0)


@dataclass
class OptimConfig:
    lr: float = ranged(1e-3, gt=0)
    weight_decay: float = ranged(1e-4, ge=0)


@dataclass
class LossConfig:
    """Training loss = policy_weight * cross-entropy + value_weight * MSE(tanh value, result)."""

    policy_weight: float = ranged(0.5, ge=0)  # not both 0
    value_weight: float = ranged(0.5, ge=0)


@dataclass
class ObjectiveConfig:
    """What a run is ranked by; fixed reference weights make runs with other loss weights comparable."""

    metric: str = "val_objective"
    direction: str = "minimize"
    policy_weight: float = ranged(0.5, ge=0)  # not both 0
    value_weight: float = ranged(0.5, ge=0)


@dataclass
class StrengthConfig:
    """Final play-strength check of the greedy policy (half the games as each colour); with
    ``objective.metric=strength`` also after every epoch, as the objective."""

    games: int = ranged(20, ge=0)


@dataclass
class PathsConfig:
    outputs: str = "outputs"  # root of runs, sweeps, data, locks and studies
    data: str = "${paths.outputs}/data"


@dataclass
class ResourcesConfig:
    """Slots, memory admission and sampling (see hexsweep/resources/)."""

    slots: str = "auto"  # auto: hold a slot in sweeps only | on | off
    # per host: nodes of a cluster sharing the outputs root must not share slots
    lock_dir: str = "${paths.outputs}/.locks/${hexsweep_host:}"
    cpu_slots: int | None = ranged(None, gt=0)  # None: the sweep's number of parallel jobs
    gpu_mem_mb: float | None = ranged(None, ge=0)  # free GPU memory a job needs; None: learned, else unchecked
    ram_mb: float | None = ranged(None, ge=0)  # available RAM a job needs; None: learned, else unchecked
    wait_timeout_s: float = ranged(3600.0, ge=0)  # longest wait for a slot or for memory
    sample_interval_s: float = ranged(2.0, ge=0.1)  # faster sampling floods resources.jsonl


@dataclass
class FaultConfig:
    """Fault injection, to exercise the sweep machinery (tests, demos); all off by default."""

    raise_at_epoch: int | None = ranged(None, ge=1)  # raise RuntimeError at the end of this epoch
    nan_at_epoch: int | None = ranged(None, ge=1)  # report NaN metrics from this epoch on
    oom_above_batch_size: int | None = ranged(None, ge=0)  # raise torch.OutOfMemoryError above this batch size
    sleep_s_per_epoch: float = ranged(0.0, ge=0)  # slow epochs down (for kill/interrupt tests)
    # block for ever after this epoch, deaf to SIGINT/SIGTERM, beating no heartbeat: a deadlock,
    # for the stall watchdog and the kill escalation (hydra.launcher.stall_timeout_s, kill_grace_s)
    hang_at_epoch: int | None = ranged(None, ge=1)


@dataclass
class TrialLinkConfig(PrunerSettings):
    """Set by the Optuna sweeper on each trial's job: which trial to report to and how to prune
    (the pruner's settings: pruners.PrunerSettings, the sweeper's hydra.sweeper.pruner).

    The storage normally reaches the job through the sweeper's environment, so a database
    password never lands in a job folder's config files.
    """

    study_name: str | None = None
    trial_number: int | None = ranged(None, ge=0)
    storage: str | None = None
    pruner: str = "none"  # none | median | percentile | successive_halving | hyperband


@dataclass
class ProbeConfig:
    """``python -m hexsweep.probe``: batch-size limits and GPU packing, measured."""

    batch_sizes: list[int] = ranged(factory=lambda: [128, 256, 512, 1024, 2048, 4096, 8192], gt=0)
    parallel: list[int] = ranged(factory=lambda: [1], gt=0)
    warmup_steps: int = ranged(3, ge=0)
    steps: int = ranged(20, gt=0)
    parallel_batch_size: int | None = ranged(None, gt=0)  # None: the batch size with the best throughput
    out: str | None = None  # None: <outputs>/probe/<date>_<time>


@dataclass
class TensorBoardLoggerConfig:
    """TensorBoard event files in each job's folder; ``logger=tensorboard`` turns it on."""

    enabled: bool = False
    log_every_n_steps: int = ranged(50, ge=0)  # step scalars (loss, lr, samples/s, memory); 0: per epoch only
    flush_secs: int = ranged(30, ge=1)  # how often the writer's thread flushes the event file


@dataclass
class MLflowLoggerConfig:
    """One MLflow run per job, nested under one parent run per sweep; ``logger=mlflow`` turns it on."""

    enabled: bool = False
    # a local SQLite store under the outputs root (no server); an http(s):// server works the same;
    # null: MLflow's own default (MLFLOW_TRACKING_URI)
    tracking_uri: str | None = "sqlite:///${hexsweep_abspath:${paths.outputs}}/mlflow.db"
    experiment_name: str | None = None  # None: experiment_name, or the sweep's command when that is "default"
    log_model: bool = False  # the best checkpoint (best.pt) as an artifact
    request_timeout_s: int = ranged(10, ge=1)  # an http(s) store: per request ...
    max_retries: int = ranged(2, ge=0)  # ... and retries, so an unreachable server cannot hang a job


@dataclass
class CsvLoggerConfig:
    """``metrics.csv`` in each job's folder, one row per epoch; ``logger=csv`` turns it on."""

    enabled: bool = False


@dataclass
class LoggerConfig:
    """Experiment trackers (hexsweep/tracking.py), picked by the ``logger`` group (conf/logger/)."""

    tensorboard: TensorBoardLoggerConfig = field(default_factory=TensorBoardLoggerConfig)
    mlflow: MLflowLoggerConfig = field(default_factory=MLflowLoggerConfig)
    csv: CsvLoggerConfig = field(default_factory=CsvLoggerConfig)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    strength: StrengthConfig = field(default_factory=StrengthConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)
    optuna: TrialLinkConfig = field(default_factory=TrialLinkConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    experiment_name: str = "default"
    batch_size: int = ranged(512, gt=0)
    seed: int = ranged(0, **SEED)
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    num_threads: int | None = ranged(None, gt=0)  # torch threads; None: this job's share of the cores
    # in a sweep: skip jobs whose folder already holds a completed result; wait: the same, and
    # wait for a driver that still runs this sweep folder instead of refusing
    resume: Any = False
    retry_on_oom: bool = False  # retry a job that ran out of memory once at half the batch size
    slots_per_gpu: int | None = ranged(None, gt=0)  # jobs that may share one GPU; None: 1 on CUDA, 2 on MPS


def register_schema() -> None:
    """The schema and the resolvers its defaults use, for every way of composing the config."""
    from hexsweep.naming import register_resolvers

    register_resolvers()
    # Once per process: every job of a sweep runs hexsweep.train's module again (multiprocessing's
    # __mp_main__), and converting the dataclass costs ~0.1 s a job, for a ConfigStore that the job
    # then replaces with the driver's (Hydra's singleton state).
    if "train_schema.yaml" not in ConfigStore.instance().repo:
        ConfigStore.instance().store(name="train_schema", node=TrainConfig)


METRICS = (
    "objective",
    "loss",
    "policy_loss",
    "value_loss",
    "policy_acc",
    "value_acc",
)
# recorded on the validation split only (trainer.evaluate, hexsweep/calibration.py)
VAL_DETAIL = ("policy_top3_acc", "policy_top5_acc", "policy_entropy", "value_ece",
              *(f"value_{m}_{stage}" for m in ("loss", "acc") for stage in ("early", "middle", "late")))
# strength: the greedy win rate against the generator's player over strength.games, every epoch
METRIC_NAMES = (*(f"{split}_{m}" for split in ("train", "val") for m in METRICS),
                *(f"val_{m}" for m in VAL_DETAIL), "strength")
DEVICES = ("auto", "cpu", "cuda", "mps")
def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class NumericKey:
    """A numeric leaf of the schema: its dotted key, element type, and its declared range (None: missing)."""

    key: str
    kind: type  # int or float
    nullable: bool
    is_list: bool
    range: Range | None


def numeric_keys(schema: type | None = None, prefix: str = "") -> Iterator[NumericKey]:
    """Every int/float key of the schema (also optional ones and lists of them), walked from TrainConfig."""
    schema = schema or TrainConfig
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(tp):
            yield from numeric_keys(tp, key + ".")
            continue
        args = typing.get_args(tp)
        nullable = typing.get_origin(tp) in (types.UnionType, typing.Union) and type(None) in args
        if nullable:
            tp = next(a for a in args if a is not type(None))
        is_list = typing.get_origin(tp) is list
        if is_list:
            tp = typing.get_args(tp)[0]
        if tp in (int, float):
            yield NumericKey(key, tp, nullable, is_list, f.metadata.get(RANGE))


_ABSENT = object()


def _check_ranges(cfg: Any) -> None:
    for k in numeric_keys():
        if k.range is None:
            raise AssertionError(f"schema key {k.key} has no range: declare it with ranged()")
        value = OmegaConf.select(cfg, k.key, default=_ABSENT)
        if value is _ABSENT or (value is None and k.nullable):
            continue
        allowed = k.range.describe(k.kind is int, plural=k.is_list)
        if not k.is_list:
            _check(_finite(value) and k.range.accepts(value), k.key, value,
                   allowed + (" or null" if k.nullable and not k.range.allowed else ""))
            continue
        values = list(value)
        if not values:
            raise ConfigError(f"{k.key}=[] is invalid: allowed a non-empty list of {allowed}")
        bad = [v for v in values if not (_finite(v) and k.range.accepts(v))]
        if bad:
            raise ConfigError(f"{k.key}={values} is invalid: {bad[0]!r} is not {k.range.describe(k.kind is int)}")


NAME_ALLOWED = "a non-empty name without '/', '\\' or '..' (it becomes part of a file or folder name)"


def _check_name(key: str, value: Any) -> None:
    """A config string that becomes a file or folder name must not climb out of its folder."""
    ok = isinstance(value, str) and value.strip() != "" and ".." not in value \
        and not any(c in value for c in ("/", "\\", os.sep, "\0"))
    _check(ok, key, value, NAME_ALLOWED)


check_name = _check_name  # for entry points that check a name before Hydra uses it


def validate(cfg: Any) -> None:
    """Range checks the type system cannot express. Raises ConfigError with one line."""
    _check_ranges(cfg)
    for prefix in ("loss", "objective"):
        node = cfg[prefix]
        if node.policy_weight == 0 and node.value_weight == 0:
            raise ConfigError(
                f"{prefix}.policy_weight and {prefix}.value_weight are both 0: "
                "allowed any non-negative pair with at least one > 0"
            )
    _check(cfg.model.head in ("conv", "pooled"), "model.head", cfg.model.head, "'conv' or 'pooled'")
    n = cfg.data.board_size
    # a game has at most n*n + 1 positions, so more than that makes at least two games: one per split
    _check(cfg.data.num_positions > n * n + 1, "data.num_positions", cfg.data.num_positions,
           f"an integer > {n * n + 1} (data.board_size**2 + 1: two games at least, one for each split)")
    _check_name("data.name", cfg.data.name)
    job_name = OmegaConf.select(cfg, "hydra.job.name", default=None, throw_on_resolution_failure=False)
    if job_name is not None:  # Hydra names the job's log file after it
        _check_name("hydra.job.name", job_name)
    _check(cfg.resume in (True, False, "wait"), "resume", cfg.resume, "true, false or wait")
    _check(cfg.trainer.lr_schedule in ("none", "cosine"), "trainer.lr_schedule",
           cfg.trainer.lr_schedule, "'none' or 'cosine'")
    _check(cfg.trainer.progress in ("auto", "on", "off"), "trainer.progress", cfg.trainer.progress,
           "'auto', 'on' or 'off'")
    _check(cfg.objective.metric in METRIC_NAMES, "objective.metric", cfg.objective.metric,
           "one of " + ", ".join(METRIC_NAMES))
    _check(cfg.objective.direction in ("minimize", "maximize"), "objective.direction",
           cfg.objective.direction, "'minimize' or 'maximize'")
    if cfg.objective.metric == "strength":
        _check(cfg.objective.direction == "maximize", "objective.direction", cfg.objective.direction,
               "'maximize' with objective.metric=strength (a win rate)")
        _check(cfg.strength.games > 0, "strength.games", cfg.strength.games,
               "an integer > 0 with objective.metric=strength (the games it is measured over)")
    device = str(cfg.device)
    base = device.split(":")[0]
    _check(base in DEVICES and (":" not in device or (base == "cuda" and device[5:].isdigit())),
           "device", device, "auto, cpu, cuda, cuda:N or mps")
    _check(cfg.resources.slots in ("auto", "on", "off"), "resources.slots", cfg.resources.slots,
           "'auto', 'on' or 'off'")
    _check(cfg.optuna.pruner in PRUNERS, "optuna.pruner", cfg.optuna.pruner, ", ".join(PRUNERS))


def flat_config(node: Any, prefix: str = "") -> dict[str, Any]:
    """A resolved config (nested dicts) as ``{"a.b.c": value}``, to compare two configs key by key."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(flat_config(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}
