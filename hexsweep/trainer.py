"""The training loop: losses, metrics, early stopping with best-weight restore, checkpoints.

One flat loop (nanoGPT style). Per epoch: shuffle, train with optional augmentation,
evaluate on the validation split, append one line to ``metrics.jsonl``, checkpoint, ask
the ``on_epoch_end`` hook whether to stop (the Optuna pruning hook plugs in there).

Loss = policy_weight * cross-entropy(masked logits, move played)
     + value_weight  * MSE(tanh value, game result from the mover's side).
Positions without a policy target (move = -1: final positions, random moves) only count
in the value loss.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
import random
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
import torch.nn.functional as F
from tqdm import tqdm

from hexsweep.atomic import append_jsonl, atomic_write, remove_stale_temps
from hexsweep.calibration import value_detail
from hexsweep.config import flat_config
from hexsweep.data.dataset import HexDataset
from hexsweep.errors import HexsweepError
from hexsweep.evaluate import StrengthSpec, win_rate
from hexsweep.heartbeat import beat
from hexsweep.hex.board import EMPTY
from hexsweep.hex.encoding import encode_batch, legal_mask
from hexsweep.hex.players import ShortestPathPlayer
from hexsweep.hex.symmetry import rotate180_batch, transpose_swap_batch
from hexsweep.model import HexNet, NetConfig
from hexsweep.tracking import Trackers, open_trackers

CHECKPOINT_VERSION = 2  # 2: last.pt holds the complete training state (1: model and optimizer)
# keys whose change does not change what a job computes: a job resumes across them
RESUME_IGNORES = ("resume", "trainer.progress", "trainer.checkpoint_every_steps", "logger.", "resources.",
                  "fault.", "optuna.", "paths.", "device", "num_threads", "strength.", "data.workers")
EpochHook = Callable[[int, dict[str, float], torch.nn.Module], bool]

# Every bar, a disabled one too, takes tqdm's default lock, which holds a multiprocessing RLock: a
# named semaphore that multiprocessing's resource tracker (one for a sweep's driver and its jobs)
# expects its creator to unlink. A job its driver kills (timeout, stall, a second Ctrl-C) never
# does, and the tracker then warns of a leaked semaphore after the sweep's last line. The bars of
# one process need only a thread lock; tqdm.set_lock is tqdm's way to choose it.
tqdm.set_lock(threading.RLock())


@dataclass
class TrainOutcome:
    """What the loop hands back to the job runner."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    stopped_by_hook: bool = False
    restored_best: bool = False
    peak_rss_mb: float = 0.0
    peak_gpu_mem_mb: float | None = None
    resumed_from: tuple[int, int] | None = None  # (epoch, step) the run continued from, if it resumed


@dataclass
class TrainState:
    """last.pt's ``training``: everything besides the weights and the optimizer that a run needs to
    continue exactly where it stopped. ``to_dict``/``from_dict`` are the only writer and reader of
    its keys; plain types and tensors only, so that ``torch.load(weights_only=True)`` takes it."""

    epoch: int  # the epoch to continue with (1-based) ...
    step: int  # ... from this step of it (0: its start)
    partial: dict | None  # what that epoch's first ``step`` steps summed (acc, seen, elapsed_s)
    scheduler: dict | None  # the LR scheduler's state (None: no schedule)
    scaler: dict  # the AMP grad scaler's state
    best_value: float | None  # early stopping: the best objective so far ...
    stale: int  # ... epochs since it improved ...
    best_epoch: int | None  # ... the epoch it came from ...
    best_metrics: dict | None
    best_state: dict | None  # ... and its weights (restored at the end)
    history: list[dict]  # metrics.jsonl's rows so far
    rng: dict  # every random state and the data order (``_rng_state``)

    def to_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: Any) -> TrainState:
        """ValueError naming what is missing or damaged."""
        if not isinstance(d, dict):
            raise ValueError("last.pt holds no complete training state (an older format)")
        if missing := [f for f in cls.__dataclass_fields__ if f not in d]:
            raise ValueError(f"last.pt's training state lacks {', '.join(missing)}")
        state = cls(**{f: d[f] for f in cls.__dataclass_fields__})
        if not (isinstance(state.history, list) and all(isinstance(r, dict) and "epoch" in r for r in state.history)):
            raise ValueError("last.pt's metrics history is damaged")
        if not (isinstance(state.epoch, int) and isinstance(state.step, int) and state.epoch >= 1 and state.step >= 0):
            raise ValueError(f"last.pt's position (epoch {state.epoch!r}, step {state.step!r}) is damaged")
        return state


@dataclass
class Resume:
    """A saved run to continue: its weights, its optimizer's state and the rest (``TrainState``)."""

    model: dict
    optimizer: dict
    training: TrainState


def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(policy logits masked to legal cells, tanh value) of a batch."""
    boards, to_move = batch["boards"], batch["to_move"]
    return model(encode_batch(boards, to_move), legal_mask(boards))


def compute_losses(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Summed (not averaged) losses and hit counts of one batch, so epochs average exactly."""
    logits, pred = forward(model, batch)
    return loss_sums(logits, pred, batch)


def loss_sums(logits: torch.Tensor, pred: torch.Tensor, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    move, value = batch["move"], batch["value"]
    has_target = move >= 0
    safe_target = torch.where(has_target, move, torch.zeros_like(move))
    ce = F.cross_entropy(logits.float(), safe_target, reduction="none")
    policy_sum = (ce * has_target).sum()
    value_sum = F.mse_loss(pred.float(), value, reduction="sum")
    policy_hits = ((logits.argmax(1) == move) & has_target).sum()
    value_hits = (torch.sign(pred.float()) == value).sum()
    return {
        "policy_sum": policy_sum,
        "value_sum": value_sum,
        "policy_count": has_target.sum(),
        "count": torch.tensor(len(move), device=move.device),
        "policy_hits": policy_hits,
        "value_hits": value_hits,
    }


TOP_K = (3, 5)


def policy_detail_sums(logits: torch.Tensor, move: torch.Tensor) -> dict[str, torch.Tensor]:
    """Top-3/top-5 hits and the policy's entropy (nats, over legal cells), summed over the
    positions with a policy target."""
    has_target = move >= 0
    logits = logits.float()
    top = logits.topk(min(max(TOP_K), logits.shape[1]), dim=1).indices == move[:, None]
    out = {f"policy_top{k}_hits": (top[:, :k].any(1) & has_target).sum() for k in TOP_K}
    entropy = torch.special.entr(torch.softmax(logits, dim=1)).sum(1)  # illegal cells: p = 0, entr(0) = 0
    out["policy_entropy_sum"] = (entropy * has_target).sum()
    return out


def summarise(sums: dict[str, torch.Tensor], prefix: str, loss_w: tuple[float, float],
              objective_w: tuple[float, float]) -> dict[str, float]:
    s = {k: float(v) for k, v in sums.items()}
    policy_loss = s["policy_sum"] / max(s["policy_count"], 1)
    value_loss = s["value_sum"] / max(s["count"], 1)
    return {
        f"{prefix}_policy_loss": policy_loss,
        f"{prefix}_value_loss": value_loss,
        f"{prefix}_loss": loss_w[0] * policy_loss + loss_w[1] * value_loss,
        f"{prefix}_objective": objective_w[0] * policy_loss + objective_w[1] * value_loss,
        f"{prefix}_policy_acc": s["policy_hits"] / max(s["policy_count"], 1),
        f"{prefix}_value_acc": s["value_hits"] / max(s["count"], 1),
    }


def _add(acc: dict[str, torch.Tensor], part: dict[str, torch.Tensor]) -> None:
    for k, v in part.items():
        acc[k] = acc[k] + v.detach() if k in acc else v.detach()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def augment(batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A random half of the batch rotated 180 degrees, an independent half transposed+swapped."""
    n = len(batch["move"])
    flips = torch.rand(2, n, generator=generator).to(batch["move"].device) < 0.5
    boards, move = rotate180_batch(batch["boards"], batch["move"], flips[0])
    boards, to_move, move = transpose_swap_batch(boards, batch["to_move"], move, flips[1])
    return {"boards": boards, "to_move": to_move, "move": move, "value": batch["value"]}


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: HexDataset, batch_size: int, device: torch.device,
             loss_w: tuple[float, float], objective_w: tuple[float, float],
             autocast: Callable[[], Any], strength: StrengthSpec | None = None) -> dict[str, Any]:
    """Validation metrics: the losses and accuracies, policy top-3/top-5 accuracy and entropy, the
    value head's calibration and error by game stage (hexsweep/calibration.py), and with
    ``strength`` the greedy win rate against the generator's player (objective.metric=strength)."""
    was_training = model.training
    model.eval()
    acc: dict[str, torch.Tensor] = {}
    preds, targets, stones = [], [], []
    for batch in data.batches(batch_size, shuffle=False):
        beat()
        batch = to_device(batch, device)
        with autocast():
            logits, pred = forward(model, batch)
            _add(acc, loss_sums(logits, pred, batch))
            _add(acc, policy_detail_sums(logits, batch["move"]))
        preds.append(pred.float())
        targets.append(batch["value"])
        stones.append((batch["boards"] != EMPTY).flatten(1).sum(1))
    model.train(was_training)
    metrics: dict[str, Any] = summarise(acc, "val", loss_w, objective_w)
    if acc:
        counted = max(float(acc["policy_count"]), 1)
        for k in TOP_K:
            metrics[f"val_policy_top{k}_acc"] = float(acc[f"policy_top{k}_hits"]) / counted
        metrics["val_policy_entropy"] = float(acc["policy_entropy_sum"]) / counted
        metrics.update(value_detail(torch.cat(preds).cpu().numpy(), torch.cat(targets).cpu().numpy(),
                                    torch.cat(stones).cpu().numpy(), data.board_size ** 2))
    if strength is not None:
        metrics["strength"] = win_rate(model, ShortestPathPlayer(strength.temperature, 0.0), data.board_size,
                                       strength.games, device, strength.seed)
    return metrics


def save_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    net_cfg: NetConfig, epoch: int, metrics: dict, config: dict,
                    training: TrainState | None = None) -> None:
    """Self-describing checkpoint; plain types and tensors only, so weights_only=True loads it.
    ``training``: the rest of the training state (last.pt), for a run that continues from it."""
    state = {
        "format_version": CHECKPOINT_VERSION,
        "model_config": net_cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "metrics": metrics,
        "config": config,
    }
    if training is not None:
        state["training"] = training.to_dict()
    # the job owns its folder: a temp file of this checkpoint is what a save killed mid-way left
    remove_stale_temps(path)
    atomic_write(path, lambda f: torch.save(state, f), mode="wb")


class CheckpointError(HexsweepError):
    """A checkpoint file cannot be used; the message names the file and says why, in one line."""


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict:
    """``torch.load`` of a hexsweep checkpoint (weights only), every failure a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        what = ("a folder" if path.is_dir() else "a link to nothing" if path.is_symlink() and not path.exists()
                else "missing" if not path.exists() else "not a regular file")
        raise CheckpointError(f"{path} is {what}, not a checkpoint")
    try:
        with warnings.catch_warnings():
            # a foreign pickle makes torch warn about its protocol before it refuses it: the
            # CheckpointError below says it in one line
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message here advises weights_only=False, which runs whatever code the file holds:
        # never pass that advice on for a file that is damaged or not hexsweep's
        raise CheckpointError(f"{path} is damaged or not a hexsweep checkpoint: torch's weights-only "
                              "loader refused its content") from None
    except Exception as e:  # noqa: BLE001  damaged bytes raise whatever torch's zip reader or unpickler meets
        # (a truncated file OSError(EINVAL) without the file's name, a torn zip RuntimeError, struct.error...)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).split(". ")[0].strip()
        raise CheckpointError(f"{path} cannot be read, truncated or damaged ({why or type(e).__name__})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model_config"), dict) \
            or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} holds no model (model_config and model): not a hexsweep checkpoint")
    return state


def model_from(state: dict, path: str | Path) -> HexNet:
    """The network a checkpoint's state describes, its weights loaded (CheckpointError if they do not fit)."""
    try:
        model = HexNet(NetConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        why = " ".join(str(e).split()) or type(e).__name__  # load_state_dict's message spans lines
        why = why if len(why) <= 160 else why[:157] + "..."
        raise CheckpointError(f"{path}: its weights do not fit its model_config ({why})") from None
    return model


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[HexNet, dict]:
    state = read_checkpoint(path, device)
    model = model_from(state, path)
    model.to(device).eval()
    return model, state


class Stopped(KeyboardInterrupt):
    """Ctrl-C, SIGTERM or a scheduler's preemption signal stopped training at a step boundary,
    after last.pt was written. ``handover``: for a preemption under submitit, submitit's own
    handler (checkpoint and requeue), which the job calls once it has recorded the stop."""

    def __init__(self, message: str, handover: Callable[[], None] | None = None) -> None:
        super().__init__(message)
        self.handover = handover


PREEMPT_GRACE_S = 20  # at most this long from submitit's signal to the save (submitit_local signals 30 s early)


def _submitits(handler: Any) -> bool:
    """Whether a signal handler is submitit's (a bound method of its SignalHandler), so that the
    library never imports an executor: a job that submitit runs in this very process."""
    return type(getattr(handler, "__self__", None)).__module__.split(".")[0] == "submitit"


class _StopRequests:
    """Stop requests during training, honoured at the next step boundary after saving the
    training state. Only in the main thread, where Python runs signal handlers; the previous
    handlers come back on exit.

    - SIGINT/SIGTERM: the first asks the loop to stop, a second stops at once.
    - In a job submitit runs (its handler holds the preemption signal, USR2 unless
      ``SUBMITIT_PREEMPT_SIGNAL`` names another): that signal asks the loop to save and stop, and
      then to hand over to submitit's handler (``Stopped.handover``), which checkpoints (Hydra's
      submitit launcher resubmits the same job) and requeues. Left alone, that handler requeues
      at once, wherever the job is, losing every step since the last save. If no step boundary
      comes within ``PREEMPT_GRACE_S`` (a long evaluation), submitit's handler runs anyway. A
      preemption that arrives after the last step is handed over when training returns.
    - There, SIGTERM only asks for a save at the next step, and training goes on: submitit
      ignores SIGTERM (a requeue may be under way), while a Slurm preemption without
      ``preempt_send_user_signal`` is SIGTERM, then SIGKILL after the grace time."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.save_now = False
        self.previous: dict[int, Any] = {}
        self.preempt: int | None = None
        self.handover: Callable[[], None] | None = None

    def __enter__(self) -> _StopRequests:
        if threading.current_thread() is not threading.main_thread():
            return self
        sig = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
        if sig is not None and _submitits(signal.getsignal(sig)):
            self.preempt = sig
        for s in (signal.SIGINT, signal.SIGTERM, self.preempt) if self.preempt else (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.preempt is not None and signum == signal.SIGTERM:
            self.save_now = True
            return
        if signum == self.preempt:
            submitit_handler = self.previous[signum]
            if self.handover is not None:  # preempted again before a step boundary: submitit's handler, now
                submitit_handler(signum, frame)
            self.handover = lambda: submitit_handler(signum, None)
            self.previous.setdefault(signal.SIGALRM, signal.signal(
                signal.SIGALRM, lambda *_: submitit_handler(signum, None)))
            signal.alarm(PREEMPT_GRACE_S)
        elif self.requested:
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name} (again)")
        self.requested = signal.Signals(signum).name

    def stopped(self, message: str) -> Stopped:
        if self.handover is not None:
            signal.alarm(0)  # the state is saved: the job hands over now
        return Stopped(message, self.handover)

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if self.handover is not None:
            signal.alarm(0)
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if exc_type is None and self.handover is not None:  # preempted after the last step
            raise self.stopped(f"stopped by {self.requested} after training's last step: the training state is "
                               "in last.pt")


def changed_keys(old: dict, new: dict) -> list[str]:
    """Config keys whose value differs between two resolved configs, bookkeeping keys aside."""
    a, b = flat_config(old), flat_config(new)
    return [k for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not any(k == i or k.startswith(i) for i in RESUME_IGNORES)]


def load_training_state(job_dir: Path, plain_config: dict) -> tuple[Resume | None, str]:
    """The saved run in ``job_dir/last.pt`` if the job can continue from it, else (None, why).

    Whatever is wrong with last.pt (torn, a folder, foreign, an older format, parts missing,
    weights or optimizer state that do not fit the model) means: start afresh, saying why.
    Never a failed job: a resume is an optimisation. A folder named last.pt is moved aside
    (``last.pt.unusable-*``), since the job's own saves could not replace it."""
    path = job_dir / "last.pt"
    remove_stale_temps(path)  # left by a save that was killed: this job is the only writer
    if not (path.exists() or path.is_symlink()):
        return None, "no last.pt in the job folder"
    if path.is_dir() and not path.is_symlink():
        # the job's saves would fail on it (a file cannot replace a folder): set it aside, kept
        aside = Path(tempfile.mkdtemp(prefix="last.pt.unusable-", dir=job_dir))
        path.rename(aside)  # onto the empty folder that reserved the name (POSIX rename replaces it)
        return None, f"{path} is a folder, not a checkpoint: moved to {aside}"
    try:
        state = read_checkpoint(path)
    except CheckpointError as e:
        return None, str(e)
    if state.get("format_version") != CHECKPOINT_VERSION:
        return None, "last.pt holds no complete training state (an older format)"
    try:
        training = TrainState.from_dict(state.get("training"))
    except ValueError as e:
        return None, str(e)
    if why := _unusable(state, path):
        return None, why
    if keys := changed_keys(state.get("config") or {}, plain_config):
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        return None, f"config changed: {shown}"
    return Resume(state["model"], state["optimizer"], training), ""


def _unusable(state: dict, path: Path) -> str:
    """Why the saved weights or optimizer state cannot be restored ('' if they can): tried on a
    fresh model of the saved config, so that training never meets them half-restored."""
    try:
        model = model_from(state, path)
    except CheckpointError as e:
        return str(e)
    try:
        optimizer = torch.optim.AdamW(model.parameters())
        optimizer.load_state_dict(state["optimizer"])
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        return f"last.pt's optimizer state does not fit its model ({type(e).__name__})"
    return ""


def _rng_state(gen: torch.Generator, data_epoch_start: dict, device: torch.device) -> dict[str, Any]:
    """Every random state training draws from, in types that torch.load(weights_only=True) takes."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "augment": gen.get_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "data_epoch_start": data_epoch_start}


def _restore_rng(state: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["augment"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


def is_better(value: float, best: float | None, direction: str, min_delta: float) -> bool:
    if not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best - min_delta if direction == "minimize" else value > best + min_delta


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def train(cfg: Any, train_data: HexDataset, val_data: HexDataset, model: HexNet,
          device: torch.device, job_dir: Path, plain_config: dict,
          on_epoch_end: EpochHook | None = None, logger: Trackers | None = None,
          resume: Resume | None = None) -> TrainOutcome:
    """Train ``model`` in place; on return it holds the best epoch's weights. ``logger``: the job's
    trackers (hexsweep/tracking.py); without one, those ``cfg.logger`` turns on, closed on return.
    ``resume``: a saved run from ``load_training_state``, continued exactly where it stopped.

    ``last.pt`` is the complete training state (model, optimizer, and ``TrainState``: scheduler,
    scaler, the early-stopping state with the best weights, the metrics so far, every RNG state
    and the data order), written atomically at the end of every epoch and every
    ``trainer.checkpoint_every_steps`` steps. Ctrl-C or SIGTERM (under submitit: its preemption
    signal) stops at the next step boundary after writing it (a second one stops at once), and
    raises ``Stopped``. A resumed run shows ``on_epoch_end`` its last finished epoch again first."""
    own_logger = logger is None
    run = _Run(cfg, train_data, model, device, job_dir, plain_config, logger or open_trackers(cfg, job_dir))
    try:
        with _StopRequests() as stop:
            return run.loop(val_data, on_epoch_end, resume, stop)
    finally:
        if own_logger:
            run.logger.close()


class _Run:
    """One training run's state: the model and its optimizer, scheduler and scaler, the random
    generators and the early-stopping state. ``loop`` is the training loop itself."""

    def __init__(self, cfg: Any, train_data: HexDataset, model: HexNet, device: torch.device, job_dir: Path,
                 plain_config: dict, logger: Trackers) -> None:
        self.cfg, self.train_data, self.model, self.device = cfg, train_data, model, device
        self.job_dir, self.plain_config, self.logger = job_dir, plain_config, logger
        tcfg = cfg.trainer
        model.to(device)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.steps_per_epoch = train_data.num_batches(cfg.batch_size, tcfg.max_steps_per_epoch)
        self.scheduler = None
        if tcfg.lr_schedule == "cosine" and tcfg.epochs > 0:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=max(1, tcfg.epochs * self.steps_per_epoch))
        self.use_amp = bool(tcfg.amp) and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.rng = np.random.default_rng([cfg.seed, 1])  # the data order
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the augmentation
        self.out = TrainOutcome(peak_rss_mb=current_rss_mb())
        self.best_value: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0
        # What every step reads, as plain values: an OmegaConf lookup costs ~15 us, and a step made
        # ~10 of them (~0.15 ms a step: a few percent of a small model's step on a GPU)
        self.augment, self.grad_clip = bool(cfg.data.augment), tcfg.grad_clip
        self.loss_weights = (cfg.loss.policy_weight, cfg.loss.value_weight)
        self.checkpoints, self.checkpoint_every = bool(tcfg.checkpoints), tcfg.checkpoint_every_steps

    def autocast(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)

    def state(self, epoch: int, step: int, data_epoch_start: dict, partial: dict | None) -> TrainState:
        """Everything needed to continue at ``step`` of ``epoch`` (0: its start)."""
        out = self.out
        return TrainState(epoch=epoch, step=step, partial=partial,
                          scheduler=self.scheduler.state_dict() if self.scheduler is not None else None,
                          scaler=self.scaler.state_dict(), best_value=self.best_value, stale=self.stale,
                          best_epoch=out.best_epoch, best_metrics=out.best_metrics, best_state=self.best_state,
                          history=out.history, rng=_rng_state(self.gen, data_epoch_start, self.device))

    def save(self, epoch: int, step: int, data_epoch_start: dict, partial: dict | None) -> None:
        """last.pt, atomically."""
        save_checkpoint(self.job_dir / "last.pt", self.model, self.optimizer, self.model.cfg, epoch - 1,
                        self.out.history[-1] if self.out.history else {}, self.plain_config,
                        self.state(epoch, step, data_epoch_start, partial))

    def restore(self, resume: Resume) -> tuple[int, int, dict | None]:
        """Continue where the saved run stopped, as if never interrupted: (epoch, step, partial sums)."""
        t, out = resume.training, self.out
        self.model.load_state_dict(resume.model)
        self.optimizer.load_state_dict(resume.optimizer)
        if self.scheduler is not None and t.scheduler is not None:
            self.scheduler.load_state_dict(t.scheduler)
        self.scaler.load_state_dict(t.scaler)
        self.best_value, self.stale, self.best_state = t.best_value, t.stale, t.best_state
        out.best_epoch, out.best_metrics, out.history = t.best_epoch, t.best_metrics, t.history
        self.rng.bit_generator.state = t.rng["data_epoch_start"]
        _restore_rng(t.rng, self.gen, self.device)
        out.resumed_from = (t.epoch, t.step)
        return t.epoch, t.step, t.partial

    def loop(self, val_data: HexDataset, on_epoch_end: EpochHook | None, resume: Resume | None,
             stop: _StopRequests) -> TrainOutcome:
        cfg, tcfg, model, out = self.cfg, self.cfg.trainer, self.model, self.out
        show_bar = tcfg.progress == "on" or (tcfg.progress == "auto" and sys.stderr.isatty())
        first_epoch, skip, partial = self.begin(resume, on_epoch_end)
        for epoch in range(first_epoch, tcfg.epochs + 1):
            model.train()
            acc: dict[str, torch.Tensor] = {}
            start = time.perf_counter()
            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{tcfg.epochs}", unit="batch",
                       disable=not show_bar, file=sys.stderr, leave=False)
            seen, elapsed_before, step = 0, 0.0, 0
            if partial is not None:  # a resumed epoch: what its first steps had summed
                acc, seen, elapsed_before, step = partial["acc"], partial["seen"], partial["elapsed_s"], skip
                bar.update(skip)
                partial = None
            data_epoch_start = copy.deepcopy(self.rng.bit_generator.state)  # the data order of this epoch
            for batch in self.train_data.batches(cfg.batch_size, True, self.rng, tcfg.max_steps_per_epoch,
                                                 skip=skip):
                beat()  # progress, for the sweep driver's stall watchdog (hexsweep/heartbeat.py)
                count = self.step(batch, acc)
                seen += count
                step += 1
                bar.update(1)
                every = self.checkpoint_every
                if step >= self.steps_per_epoch:
                    continue  # the epoch's end saves the state (and stops, if asked)
                if self.checkpoints and (stop.requested or stop.save_now or (every and step % every == 0)):
                    stop.save_now = False
                    self.save(epoch, step, data_epoch_start, {
                        "acc": acc, "seen": seen, "elapsed_s": elapsed_before + time.perf_counter() - start})
                if stop.requested:
                    bar.close()
                    raise stop.stopped(f"stopped by {stop.requested} at epoch {epoch}, step {step}: the training "
                                       "state is in last.pt (resume=true continues from there)")
            skip = 0
            bar.close()
            metrics = self.epoch_metrics(epoch, acc, val_data, seen, elapsed_before, start)
            append_jsonl(self.job_dir / "metrics.jsonl", metrics)
            self.logger.on_epoch(epoch, metrics)
            out.history.append(metrics)
            self.keep_if_best(epoch, metrics)
            if self.checkpoints:
                self.save(epoch + 1, 0, copy.deepcopy(self.rng.bit_generator.state), None)
                stop.save_now = False
            if stop.requested:
                raise stop.stopped(f"stopped by {stop.requested} after epoch {epoch}: the training state is in "
                                   "last.pt (resume=true continues from there)")
            if on_epoch_end is not None and on_epoch_end(epoch, metrics, model):
                out.stopped_by_hook = True
                break
            if tcfg.patience and self.stale >= tcfg.patience:
                out.stopped_early = True
                break
        if self.best_state is not None and out.best_epoch != len(out.history):
            model.load_state_dict(self.best_state)
            out.restored_best = True
        return out

    def begin(self, resume: Resume | None, on_epoch_end: EpochHook | None) -> tuple[int, int, dict | None]:
        """Where the loop starts: (epoch, step within it, the partial sums of a resumed epoch)."""
        tcfg, out = self.cfg.trainer, self.out
        first_epoch, skip, partial = 1, 0, None
        if resume is not None:
            first_epoch, skip, partial = self.restore(resume)
            if tcfg.patience and self.stale >= tcfg.patience:  # it had stopped early: nothing left to train
                out.stopped_early, first_epoch = True, tcfg.epochs + 1
            elif on_epoch_end is not None and out.history and skip == 0:
                # the last finished epoch again: a stop between its save and its hook left it unasked
                # (a pruning hook reports each epoch once and may prune now)
                last = out.history[-1]
                if on_epoch_end(int(last["epoch"]), last, self.model):
                    out.stopped_by_hook, first_epoch = True, tcfg.epochs + 1
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return first_epoch, skip, partial

    def step(self, batch: dict[str, Any], acc: dict[str, torch.Tensor]) -> int:
        """One optimizer step on ``batch``; adds its loss sums to ``acc``; returns its size."""
        batch = to_device(batch, self.device)
        if self.augment:
            batch = augment(batch, self.gen)
        with self.autocast():
            sums = compute_losses(self.model, batch)
        count = len(batch["move"])
        policy_w, value_w = self.loss_weights
        loss = (policy_w * sums["policy_sum"] / sums["policy_count"].clamp(min=1)
                + value_w * sums["value_sum"] / count)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        _add(acc, sums)
        self.logger.on_step(loss, count, self.optimizer)
        return count

    def epoch_metrics(self, epoch: int, acc: dict[str, torch.Tensor], val_data: HexDataset, seen: int,
                      elapsed_before: float, start: float) -> dict[str, float]:
        """The epoch's row of metrics.jsonl: train (summed over its steps), validation, throughput, memory."""
        cfg, out, device = self.cfg, self.out, self.device
        loss_w = (cfg.loss.policy_weight, cfg.loss.value_weight)
        objective_w = (cfg.objective.policy_weight, cfg.objective.value_weight)
        train_time = elapsed_before + time.perf_counter() - start
        metrics: dict[str, float] = {"epoch": epoch}
        metrics.update(summarise(acc, "train", loss_w, objective_w))
        metrics.update(evaluate(self.model, val_data, cfg.trainer.eval_batch_size, device, loss_w,
                                objective_w, self.autocast, StrengthSpec.for_objective(cfg)))
        out.peak_rss_mb = max(out.peak_rss_mb, current_rss_mb())
        metrics.update({
            "samples_per_s": seen / train_time if train_time > 0 else float("nan"),
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_time_s": time.perf_counter() - start,
            "rss_mb": current_rss_mb(),
        })
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) / 2**20
            out.peak_gpu_mem_mb = max(out.peak_gpu_mem_mb or 0.0, peak)
            metrics["gpu_peak_mb"] = peak
        return metrics

    def keep_if_best(self, epoch: int, metrics: dict[str, float]) -> None:
        """Early stopping's state: the best epoch's weights (and best.pt), the epochs since it."""
        cfg = self.cfg
        value = metrics[cfg.objective.metric]
        best = self.best_value
        if is_better(value, best, cfg.objective.direction, cfg.trainer.min_delta if best is not None else 0):
            self.best_value, self.stale = value, 0
            self.out.best_epoch, self.out.best_metrics = epoch, dict(metrics)
            self.best_state = copy.deepcopy(self.model.state_dict())
            if cfg.trainer.checkpoints:
                save_checkpoint(self.job_dir / "best.pt", self.model, None, self.model.cfg, epoch, metrics,
                                self.plain_config)
        else:
            self.stale += 1
