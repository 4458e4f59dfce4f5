"""Pruner settings reach the Optuna pruner a job builds (no training, no sweep)."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf

from hexsweep.cli import compose
from hexsweep.errors import HexsweepError
from hexsweep.search.pruning import build_pruner
from hexsweep.search.trials import Trials
from hexsweep.sweep.train_app import TRAIN_APP


def job_config(pruner: dict, study_name: str = "s"):
    """The config of a trial's job: the sweeper's ``optuna.*`` overrides for these pruner
    settings, composed into the train config as the job would."""
    # the keys of the train config the sweeper looks at
    config = OmegaConf.create({"seed": 0, "objective": {"direction": "minimize"}, "optuna": {"study_name": None}})
    trials = Trials(None, TRAIN_APP, config, {"pruner": pruner}, study_name, {}, [], ["minimize"], None, None)
    overrides = trials.overrides(SimpleNamespace(params={}, number=0))
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


@pytest.mark.parametrize("name", ["a,b", "it's", "k=v", "x[0]", "étude", "two words", "back\\slash",
                                  "end\\", "q\\'x"])
def test_any_study_name_reaches_the_job_unchanged(name):
    """A study name is quoted in the job's overrides: Hydra reads it back as it was written."""
    assert job_config({"name": "median"}, study_name=name).optuna.study_name == name


@pytest.mark.parametrize(("setting", "value", "allowed"), [
    ("reduction_factor", 1, "an integer >= 2"), ("percentile", 101.0, "a number in [0, 100]"),
    ("n_startup_trials", -1, "an integer >= 0"), ("min_resource", 0, "an integer >= 1")])
def test_pruner_settings_are_checked_against_their_one_schema(setting, value, allowed):
    from hexsweep.errors import ConfigError
    from hexsweep.pruners import check_pruner

    with pytest.raises(ConfigError) as e:
        check_pruner({"name": "median", setting: value})
    assert str(e.value) == f"hydra.sweeper.pruner.{setting}={value!r} is invalid: allowed {allowed}"
    with pytest.raises(HexsweepError, match=f"optuna.{setting}"):  # the job's copy of the same field
        compose([f"optuna.{setting}={value}"])
