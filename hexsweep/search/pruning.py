"""The job side of an Optuna trial: report the objective each epoch, stop when the pruner says.

The pruner is not stored with the study, so the job rebuilds it from ``cfg.optuna``
(the sweeper passes its pruner settings there); the trial is reached through the storage
with ``optuna.trial.Trial(study, trial_id)``.
"""

from __future__ import annotations

import logging
import math
import os
from typing import TYPE_CHECKING, Any

from hexsweep.trainer import EpochHook

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)


def build_pruner(link: Any, max_epochs: int) -> optuna.pruners.BasePruner:
    import optuna

    name = link.pruner
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=link.n_startup_trials,
                                           n_warmup_steps=link.n_warmup_steps)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(link.percentile, n_startup_trials=link.n_startup_trials,
                                               n_warmup_steps=link.n_warmup_steps)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=link.min_resource,
                                                      reduction_factor=link.reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=link.min_resource, max_resource=max(1, max_epochs),
                                              reduction_factor=link.reduction_factor)
    return optuna.pruners.NopPruner()


def trial_hook(cfg: Any, resumed: bool = False) -> tuple[EpochHook | None, dict[str, Any] | None]:
    """(hook, link info for result.json), or (None, None) when the job is not a trial.
    ``resumed``: the job continues from its last.pt (its trial's reported epochs are its own)."""
    link = cfg.optuna
    if link.trial_number is None or link.study_name is None:
        return None, None
    # Optuna and the storage only for a trial: every job calls this, and hexsweep.train's start-up
    # (--help, the driver) imports this module; a sweep's job server preloads them (sweep/warm.py)
    import optuna

    from hexsweep.search.storage import STORAGE_ENV, open_storage

    spec = link.storage or os.environ.get(STORAGE_ENV)
    info = {"study_name": link.study_name, "trial_number": int(link.trial_number)}
    if not spec:
        return None, info
    storage = open_storage(spec)
    study = optuna.load_study(study_name=link.study_name, storage=storage,
                              pruner=build_pruner(link, cfg.trainer.epochs))
    study_id = storage.get_study_id_from_name(link.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, link.trial_number)
    trial = optuna.trial.Trial(study, trial_id)
    if len(study.directions) > 1:
        return None, info  # Optuna cannot report or prune multi-objective trials
    metric = cfg.objective.metric
    # a resumed job (resume=true, a requeue) continues its trial: the epochs it reported before it
    # stopped stay, and are not reported twice (Optuna would warn and ignore them)
    reported = set(storage.get_trial(trial_id).intermediate_values)
    if reported and not resumed:  # e.g. retry_on_oom's second run, or a last.pt of another config
        info["earlier_epochs"] = sorted(reported)
        log.warning("optuna trial %d already has epochs %s from an earlier run that this one does not continue: "
                    "Optuna keeps those values (a trial's reports cannot be replaced); this run reports later epochs",
                    link.trial_number, sorted(reported))

    def hook(epoch: int, metrics: dict[str, float], model: Any) -> bool:
        value = metrics.get(metric)
        if value is None or not math.isfinite(value):
            return False
        if epoch in reported:  # asked before (a resumed job shows its last epoch again): the answer was no
            return False
        trial.report(value, epoch)
        reported.add(epoch)
        return trial.should_prune()

    return hook, info
