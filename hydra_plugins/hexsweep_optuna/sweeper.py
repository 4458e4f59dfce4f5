"""Registration of ``hydra/sweeper=hexsweep_optuna``: Optuna (>= 4) searches inside Hydra.

Config keys are those of the official hydra-optuna-sweeper (sampler, direction, study_name,
storage, n_trials, n_jobs, max_failure_rate, params, custom_search_space), so its configs
run unchanged apart from the sweeper name; hexsweep adds ``pruner``, ``metrics`` (one metric
per direction for multi-objective searches), ``heartbeat_interval``, ``grace_period`` and
``retry_failed``. The work is in hexsweep/search/sweeper.py, imported when a sweep starts.
"""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from omegaconf import MISSING

from hexsweep.pruners import PrunerSettings


@dataclass
class PrunerConf(PrunerSettings):  # the settings and their ranges: hexsweep/pruners.py
    name: str = "none"  # none | median | percentile | successive_halving | hyperband


@dataclass
class HexsweepOptunaConf:
    _target_: str = "hydra_plugins.hexsweep_optuna.sweeper.HexsweepOptunaSweeper"
    _recursive_: bool = False  # the sampler is built by the sweeper (the grid sampler needs the params)
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])
    sampler: Any = MISSING  # filled by the hydra/sweeper/sampler group (tpe by default)
    direction: Any = "minimize"
    study_name: Optional[str] = None  # noqa: UP045 (Hydra loads this module outside the package)
    # a journal file under paths.outputs (or ./outputs for an app without that key) or an RDB URL;
    # null: an in-memory study, fresh every run (as in the official plugin)
    storage: Optional[str] = "${oc.select:paths.outputs,outputs}/optuna/studies.journal"  # noqa: UP045
    n_trials: int = 20
    n_jobs: Optional[int] = None  # noqa: UP045 (None: what the machine holds)
    max_failure_rate: float = 0.5
    params: Optional[dict[str, str]] = None  # noqa: UP045
    custom_search_space: Optional[str] = None  # noqa: UP045
    pruner: PrunerConf = field(default_factory=PrunerConf)
    metrics: Optional[list[str]] = None  # noqa: UP045
    heartbeat_interval: Optional[int] = 60  # noqa: UP045
    grace_period: Optional[int] = 180  # noqa: UP045
    retry_failed: int = 0


SAMPLERS = {
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10, "multivariate": False},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
    "cmaes": {"_target_": "optuna.samplers.CmaEsSampler", "seed": None, "n_startup_trials": 1},
    "grid": {"_target_": "optuna.samplers.GridSampler", "seed": None},
    "nsgaii": {"_target_": "optuna.samplers.NSGAIISampler", "seed": None, "population_size": 50},
    "qmc": {"_target_": "optuna.samplers.QMCSampler", "seed": None, "qmc_type": "sobol", "scramble": True},
    "gp": {"_target_": "optuna.samplers.GPSampler", "seed": None, "n_startup_trials": 10},
    # removed in Optuna 4.0: selecting it gives the official plugin's message
    "motpe": {"_target_": "hexsweep.search.sweeper.motpe_removed"},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="hexsweep_optuna", node=HexsweepOptunaConf, provider="hexsweep")
for _name, _node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, package="hydra.sweeper.sampler",
             provider="hexsweep")


class HexsweepOptunaSweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        from hexsweep.search.sweeper import OptunaSearch

        self.search = OptunaSearch(params)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.hexsweep_launcher.launcher import exit_on_error, reports_at_end

        # a stop request after the last trial waits for the end-of-sweep report (sweep/stopping.py)
        return exit_on_error(lambda: self.search.sweep(arguments), reports=reports_at_end(self.search.config))
