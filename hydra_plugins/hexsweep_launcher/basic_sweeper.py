"""Registration of ``hydra/sweeper=hexsweep_basic``: Hydra's basic sweeper, composing each job once.

Hydra's BasicSweeper composes every job's config to check it, then the launcher composes
it again to run it (~0.15 s a job, twice, before the first job starts). This subclass
composes once, also checks hexsweep's value ranges (one line naming the job and the key),
and hands the configs to the hexsweep launcher. Sweep grammar and behaviour are Hydra's.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore


@dataclass
class HexsweepBasicSweeperConf:
    _target_: str = "hydra_plugins.hexsweep_launcher.basic_sweeper.HexsweepBasicSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (Hydra loads this module outside the package)
    params: Optional[dict[str, str]] = None  # noqa: UP045


ConfigStore.instance().store(group="hydra/sweeper", name="hexsweep_basic", node=HexsweepBasicSweeperConf,
                             provider="hexsweep")


class HexsweepBasicSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        from hexsweep.sweep.launcher import prepare_batch

        prepare_batch(self.hydra_context.config_loader, self.config, batch)
