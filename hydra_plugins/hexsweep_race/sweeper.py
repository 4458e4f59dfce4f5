"""Registration of ``hydra/sweeper=hexsweep_race``: race the sweep's configurations over shared seeds.

``python -m hexsweep.train -m search=race 'experiment=glob(*)'``, or any Hydra app:
``python my_app.py -m hydra/sweeper=hexsweep_race lr=1e-3,3e-3,1e-2``. The work is in
hexsweep/race/ (sweeper.py: Hydra and the launcher; stats.py: the tests; plan.py: what to run
next), imported when a sweep starts: Hydra imports every plugin module at start-up.
"""

from dataclasses import dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper


@dataclass
class HexsweepRaceConf:
    _target_: str = "hydra_plugins.hexsweep_race.sweeper.HexsweepRaceSweeper"
    min_seeds: int = 3  # seeds of every configuration before the first test
    max_seeds: int = 20  # the race ends when the survivors have this many
    alpha: float = 0.05  # family-wise: the chance of any false elimination over the whole race
    budget_jobs: Optional[int] = None  # noqa: UP045 (Hydra loads this module outside the package); null: none
    test: str = "friedman"  # friedman (F-Race: Friedman + Conover post-hoc) | paired_t (Holm)
    seed_key: str = "seed"  # the app's key the race sets to seed k
    # null: the app's objective.direction (hexsweep.train), else minimize
    direction: Optional[str] = None  # noqa: UP045
    seeds: Optional[list[int]] = None  # noqa: UP045 (null: 0, 1, 2, ...; a list: seed k is seeds[k])


ConfigStore.instance().store(group="hydra/sweeper", name="hexsweep_race", node=HexsweepRaceConf, provider="hexsweep")


class HexsweepRaceSweeper(Sweeper):
    def __init__(self, **params: Any) -> None:
        from hexsweep.race.sweeper import RaceSearch

        self.search = RaceSearch(params)

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.search.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        from hydra_plugins.hexsweep_launcher.launcher import exit_on_error, reports_at_end

        # a stop request after the last job waits for the end-of-sweep report (sweep/stopping.py)
        return exit_on_error(lambda: self.search.sweep(arguments), reports=reports_at_end(self.search.config))
