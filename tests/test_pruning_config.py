"""Pruner settings reach the Optuna pruner a job builds (no training, no sweep)."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf

from hexsweep.cli import compose
from hexsweep.errors import HexsweepError
from hexsweep.search.pruning import build_pruner
from hexsweep.search.sweeper import OptunaSearch


def job_config(pruner: dict):
    """The config of a trial's job: the sweeper's ``optuna.*`` overrides for these pruner
    settings, composed into the train config as the job would."""
    search = OptunaSearch({"pruner": pruner})
    # the keys of the train config the sweeper looks at
    search.config = OmegaConf.create({"seed": 0, "objective": {"direction": "minimize"},
                                      "optuna": {"study_name": None}})
    search.study_name = "s"
    overrides = search._overrides(SimpleNamespace(params={}, number=0), {}, [], ["minimize"])
    return compose([o for o in overrides if o.startswith("optuna.")])


@pytest.mark.parametrize("name", ["successive_halving", "hyperband"])
def test_reduction_factor_reaches_the_pruner(name):
    cfg = job_config({"name": name, "min_resource": 2, "reduction_factor": 3})
    assert (cfg.optuna.pruner, cfg.optuna.min_resource, cfg.optuna.reduction_factor) == (name, 2, 3)
    pruner = build_pruner(cfg.optuna, max_epochs=8)
    kind = optuna.pruners.SuccessiveHalvingPruner if name == "successive_halving" else optuna.pruners.HyperbandPruner
    assert isinstance(pruner, kind)
    assert (pruner._min_resource, pruner._reduction_factor) == (2, 3)
    if name == "hyperband":
        assert pruner._max_resource == 8


def test_reduction_factor_defaults_to_optunas():
    cfg = job_config({"name": "successive_halving"})
    assert build_pruner(cfg.optuna, max_epochs=8)._reduction_factor == 4


@pytest.mark.parametrize("value", [1, 0])
def test_reduction_factor_below_2_is_refused_in_one_line(value):
    with pytest.raises(HexsweepError) as e:
        compose([f"optuna.reduction_factor={value}"])
    assert "optuna.reduction_factor" in str(e.value) and "\n" not in str(e.value)
