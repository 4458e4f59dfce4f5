"""The Optuna pruner settings, defined once: the sweeper's ``hydra.sweeper.pruner`` node and the
``optuna.*`` keys a trial's job rebuilds its pruner from (config.TrialLinkConfig) both take their
fields and ranges from ``PrunerSettings``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hexsweep.errors import ConfigError
from hexsweep.ranges import check_fields, ranged

PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")


@dataclass
class PrunerSettings:
    n_startup_trials: int = ranged(2, ge=0)  # median/percentile: trials that finish before pruning starts
    n_warmup_steps: int = ranged(1, ge=0)  # median/percentile: epochs before a trial can be pruned
    percentile: float = ranged(25.0, ge=0, le=100)  # percentile: prune below this percentile of the others
    min_resource: int = ranged(1, ge=1)  # successive_halving/hyperband: epochs of the first rung
    # successive_halving/hyperband: 1/reduction_factor of a rung's trials go on to the next rung
    reduction_factor: int = ranged(4, ge=2)


SETTINGS = tuple(PrunerSettings.__dataclass_fields__)


def check_pruner(pruner: dict[str, Any], prefix: str = "hydra.sweeper.pruner") -> None:
    """ConfigError (one line, named as the user wrote it) for a pruner name or setting that cannot work."""
    name = pruner.get("name", "none")
    if name not in PRUNERS:
        raise ConfigError(f"{prefix}.name={name!r} is invalid: allowed {', '.join(PRUNERS)}")
    check_fields(pruner, PrunerSettings, prefix)
