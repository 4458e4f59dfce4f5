"""Typed config schema (registered in Hydra's ConfigStore) and its validation.

The YAML files in conf/ fill these dataclasses; OmegaConf type-checks every override
against them (``batch_size=abc`` fails with the key named). Value ranges are checked by
``validate`` before any work starts, with one line naming the key, the value and what is
allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from hexsweep.errors import ConfigError


@dataclass
class ModelConfig:
    """Two-headed residual network; see hexsweep/model.py for the two shapes."""

    name: str = "small"
    channels: int = 32  # width of the first stage; later stages double it
    stages: int = 1
    blocks_per_stage: int = 4
    downsample: bool = False  # stride 2 at the start of every stage after the first
    head: str = "conv"  # conv: fully convolutional policy head; pooled: global pool + linear heads
    dropout: float = 0.1


@dataclass
class DataConfig:
    """Self-play dataset settings; the folder is derived from them unless ``path`` is set."""

    name: str = "small"
    board_size: int = 7
    num_positions: int = 25_000  # at least this many, rounded up to whole games
    val_fraction: float = 0.1
    seed: int = 1234
    temperature: float = 0.25
    epsilon: float = 0.05
    random_opening_moves: int = 1
    games_per_chunk: int = 64
    shard_size: int = 100_000
    workers: int | None = None  # generation processes; None: all cores of this job's slot
    path: str | None = None  # an existing dataset folder (e.g. trmph import); skips generation
    augment: bool = True  # random 180-degree rotation and transpose+colour swap per sample


@dataclass
class TrainerConfig:
    epochs: int = 10
    patience: int = 3  # epochs without improvement of the objective before stopping; 0: never
    min_delta: float = 0.001
    grad_clip: float | None = 1.0
    amp: bool = True  # mixed precision on CUDA only
    lr_schedule: str = "none"  # none | cosine
    max_steps_per_epoch: int | None = None
    eval_batch_size: int = 2048
    progress: str = "auto"  # auto (a bar when stderr is a terminal) | on | off
    checkpoints: bool = True


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4


@dataclass
class LossConfig:
    """Training loss = policy_weight * cross-entropy + value_weight * MSE(tanh value, result)."""

    policy_weight: float = 0.5
    value_weight: float = 0.5


@dataclass
class ObjectiveConfig:
    """What a run is ranked by; fixed reference weights make runs with other loss weights comparable."""

    metric: str = "val_objective"
    direction: str = "minimize"
    policy_weight: float = 0.5
    value_weight: float = 0.5


@dataclass
class StrengthConfig:
    """Final play-strength check of the greedy policy (half the games as each colour)."""

    games: int = 20


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
    cpu_slots: int | None = None  # None: the sweep's number of parallel jobs
    gpu_mem_mb: float | None = None  # free GPU memory a job needs; None: learned, else unchecked
    ram_mb: float | None = None  # available RAM a job needs; None: learned, else unchecked
    wait_timeout_s: float = 3600.0  # longest wait for a slot or for memory
    sample_interval_s: float = 2.0


@dataclass
class FaultConfig:
    """Fault injection, to exercise the sweep machinery (tests, demos); all off by default."""

    raise_at_epoch: int | None = None  # raise RuntimeError at the end of this epoch
    nan_at_epoch: int | None = None  # report NaN metrics from this epoch on
    oom_above_batch_size: int | None = None  # raise torch.OutOfMemoryError above this batch size
    sleep_s_per_epoch: float = 0.0  # slow epochs down (for kill/interrupt tests)


@dataclass
class TrialLinkConfig:
    """Set by the Optuna sweeper on each trial's job: which trial to report to and how to prune.

    The storage normally reaches the job through the sweeper's environment, so a database
    password never lands in a job folder's config files.
    """

    study_name: str | None = None
    trial_number: int | None = None
    storage: str | None = None
    pruner: str = "none"  # none | median | percentile | successive_halving | hyperband
    n_startup_trials: int = 2  # median/percentile: trials that finish before pruning starts
    n_warmup_steps: int = 1  # median/percentile: epochs before a trial can be pruned
    percentile: float = 25.0
    min_resource: int = 1  # successive_halving/hyperband


@dataclass
class ProbeConfig:
    """``python -m hexsweep.probe``: batch-size limits and GPU packing, measured."""

    batch_sizes: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048, 4096, 8192])
    parallel: list[int] = field(default_factory=lambda: [1])
    warmup_steps: int = 3
    steps: int = 20
    parallel_batch_size: int | None = None  # None: the batch size with the best throughput
    out: str | None = None  # None: <outputs>/probe/<date>_<time>


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
    experiment_name: str = "default"
    batch_size: int = 512
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    num_threads: int | None = None  # torch threads; None: this job's share of the cores
    resume: bool = False  # in a sweep: skip jobs whose folder already holds a completed result
    retry_on_oom: bool = False  # retry a job that ran out of memory once at half the batch size
    slots_per_gpu: int = 1  # jobs that may share one GPU


def register_schema() -> None:
    """The schema and the resolvers its defaults use, for every way of composing the config."""
    from hexsweep.sweep.naming import register_resolvers

    register_resolvers()
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


METRICS = (
    "objective",
    "loss",
    "policy_loss",
    "value_loss",
    "policy_acc",
    "value_acc",
)
METRIC_NAMES = tuple(f"{split}_{m}" for split in ("train", "val") for m in METRICS)
DEVICES = ("auto", "cpu", "cuda", "mps")
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def validate(cfg: Any) -> None:
    """Range checks the type system cannot express. Raises ConfigError with one line."""
    from hexsweep.hex.board import MAX_SIZE, MIN_SIZE

    _check(cfg.batch_size > 0, "batch_size", cfg.batch_size, "an integer > 0")
    _check(_finite(cfg.optim.lr) and cfg.optim.lr > 0, "optim.lr", cfg.optim.lr, "a number > 0")
    _check(
        _finite(cfg.optim.weight_decay) and cfg.optim.weight_decay >= 0,
        "optim.weight_decay", cfg.optim.weight_decay, "a number >= 0",
    )
    for prefix in ("loss", "objective"):
        node = cfg[prefix]
        for key in ("policy_weight", "value_weight"):
            value = node[key]
            _check(_finite(value) and value >= 0, f"{prefix}.{key}", value, "a number >= 0")
        if node.policy_weight == 0 and node.value_weight == 0:
            raise ConfigError(
                f"{prefix}.policy_weight and {prefix}.value_weight are both 0: "
                "allowed any non-negative pair with at least one > 0"
            )
    _check(0 <= cfg.model.dropout < 1, "model.dropout", cfg.model.dropout, "a number in [0, 1)")
    _check(cfg.model.channels > 0, "model.channels", cfg.model.channels, "an integer > 0")
    _check(cfg.model.stages > 0, "model.stages", cfg.model.stages, "an integer > 0")
    _check(cfg.model.blocks_per_stage >= 0, "model.blocks_per_stage", cfg.model.blocks_per_stage,
           "an integer >= 0")
    _check(cfg.model.head in ("conv", "pooled"), "model.head", cfg.model.head, "'conv' or 'pooled'")
    n = cfg.data.board_size
    _check(MIN_SIZE <= n <= MAX_SIZE, "data.board_size", n, f"an integer in {MIN_SIZE}..{MAX_SIZE}")
    _check(cfg.data.num_positions > 0, "data.num_positions", cfg.data.num_positions, "an integer > 0")
    _check(0 < cfg.data.val_fraction < 1, "data.val_fraction", cfg.data.val_fraction,
           "a number in (0, 1)")
    _check(cfg.data.temperature >= 0, "data.temperature", cfg.data.temperature, "a number >= 0")
    _check(0 <= cfg.data.epsilon <= 1, "data.epsilon", cfg.data.epsilon, "a number in [0, 1]")
    _check(cfg.trainer.epochs >= 0, "trainer.epochs", cfg.trainer.epochs, "an integer >= 0")
    _check(cfg.trainer.patience >= 0, "trainer.patience", cfg.trainer.patience, "an integer >= 0")
    _check(cfg.trainer.lr_schedule in ("none", "cosine"), "trainer.lr_schedule",
           cfg.trainer.lr_schedule, "'none' or 'cosine'")
    _check(cfg.trainer.progress in ("auto", "on", "off"), "trainer.progress", cfg.trainer.progress,
           "'auto', 'on' or 'off'")
    _check(cfg.objective.metric in METRIC_NAMES, "objective.metric", cfg.objective.metric,
           "one of " + ", ".join(METRIC_NAMES))
    _check(cfg.objective.direction in ("minimize", "maximize"), "objective.direction",
           cfg.objective.direction, "'minimize' or 'maximize'")
    _check(cfg.strength.games >= 0, "strength.games", cfg.strength.games, "an integer >= 0")
    device = str(cfg.device)
    base = device.split(":")[0]
    _check(base in DEVICES and (":" not in device or (base == "cuda" and device[5:].isdigit())),
           "device", device, "auto, cpu, cuda, cuda:N or mps")
    _check(cfg.slots_per_gpu > 0, "slots_per_gpu", cfg.slots_per_gpu, "an integer > 0")
    _check(cfg.resources.slots in ("auto", "on", "off"), "resources.slots", cfg.resources.slots,
           "'auto', 'on' or 'off'")
    if cfg.resources.cpu_slots is not None:
        _check(cfg.resources.cpu_slots > 0, "resources.cpu_slots", cfg.resources.cpu_slots,
               "an integer > 0 or null")
    _check(cfg.optuna.pruner in PRUNERS, "optuna.pruner", cfg.optuna.pruner, ", ".join(PRUNERS))
    if cfg.num_threads is not None:
        _check(cfg.num_threads > 0, "num_threads", cfg.num_threads, "an integer > 0 or null")
