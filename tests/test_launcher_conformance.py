"""Hydra's own launcher conformance suites, run against ``hydra/launcher=hexsweep``.

The same suites Hydra's joblib, submitit and ray launchers pass (they ship inside hydra-core,
in ``hydra.test_utils.launcher_common_tests``). They launch plain Hydra apps, none of
hexsweep's keys, and check return values, ``JobReturn.cfg``/``hydra_cfg``, the sweep folder
layout, ``override_dirname``, ``hydra.job.chdir`` and ``to_absolute_path``. The fixtures
(``hydra_sweep_runner``, ``hydra_restore_singletons``) come from Hydra's pytest plugin.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.test_utils.launcher_common_tests import (
    BatchedSweeperTestSuite,
    IntegrationTestSuite,
    LauncherTestSuite,
)

from hydra_plugins.hexsweep_launcher.launcher import HexsweepLauncher

# a plain app's job must not wait for hexsweep's progress ticker
PLAIN = ["hydra.launcher.progress=off"]


@pytest.fixture(autouse=True)
def hydras_default_version_base():
    """The suites expect Hydra's defaults without a version_base (jobs chdir into their folder).
    Other tests of this session compose hexsweep's config with version_base="1.3", which Hydra
    keeps in a process-wide singleton: forget it for these tests (hydra_restore_singletons,
    which the suites use, puts it back afterwards)."""
    from hydra.core.singleton import Singleton
    from hydra.version import VersionBase

    Singleton._instances.pop(VersionBase, None)
    yield


def test_discovery() -> None:
    assert HexsweepLauncher.__name__ in [x.__name__ for x in Plugins.instance().discover(Launcher)]


@pytest.mark.parametrize("launcher_name, overrides", [("hexsweep", PLAIN)])
class TestHexsweepLauncher(LauncherTestSuite):
    pass


@pytest.mark.parametrize("launcher_name, overrides", [("hexsweep", [*PLAIN, "hydra.sweeper.max_batch_size=2"])])
class TestHexsweepLauncherBatched(BatchedSweeperTestSuite):
    pass


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({"defaults": [{"override hydra/launcher": "hexsweep"},
                    {"override hydra/hydra_logging": "hydra_debug"},
                    {"override hydra/job_logging": "disabled"}],
       "hydra": {"launcher": {"n_jobs": 2, "progress": "off"}}},
      ["-m"])],
)
class TestHexsweepLauncherIntegration(IntegrationTestSuite):
    pass


APP = textwrap.dedent('''
    import os
    import hydra

    @hydra.main(config_path=None, version_base="1.3")
    def app(cfg):
        if cfg.x == 3:
            raise ValueError("three is not allowed")
        return (cfg.x - 2) ** 2 + os.getpid() * 0

    if __name__ == "__main__":
        app()
''')


def test_example_app_returns_values_and_a_raising_job_fails_the_sweep(tmp_path) -> None:
    """A ten-line app, as a user runs it: every job runs, and the raising one fails the
    sweep the way Hydra's basic launcher does (exit 1, its error printed)."""
    (tmp_path / "app.py").write_text(APP)
    out = subprocess.run([sys.executable, "app.py", "-m", "+x=1,2,3", "hydra/launcher=hexsweep",
                          "hydra.launcher.progress=off", "hydra.sweep.dir=sweep"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "three is not allowed" in out.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1", "2"]
    assert 'app.py", line 8, in app' in out.stderr  # the job's own frame, from the job process


SLOT_APP = textwrap.dedent('''
    import os
    import socket
    from pathlib import Path

    import hydra
    from hydra.core.hydra_config import HydraConfig

    from hexsweep.resources.slots import read_holders

    @hydra.main(config_path=None, version_base="1.3")
    def app(cfg):
        me = HydraConfig.get().runtime.output_dir
        holders = read_holders(Path("outputs/.locks") / socket.gethostname().split(".")[0])
        mine = [h["slot"] for h in holders if h.get("job_dir") == me]
        Path(me, "ran").write_text(",".join(mine))
        return cfg.x * 10

    if __name__ == "__main__":
        app()
''')


def test_a_plain_apps_jobs_hold_slots_and_resume_skips_what_completed(tmp_path) -> None:
    (tmp_path / "app.py").write_text(SLOT_APP)

    def sweep(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "app.py", "-m", "hydra/launcher=hexsweep", "hydra.launcher.n_jobs=2",
                               "hydra.launcher.progress=off", "hydra.sweep.dir=sweep", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    out = sweep("+x=1,2,3")
    assert out.returncode == 0, out.stderr
    slots = [(tmp_path / "sweep" / str(i) / "ran").read_text() for i in range(3)]
    assert all(s in ("cpu-0", "cpu-1") for s in slots)  # each job held one slot of the shared pool
    for i in range(3):
        (tmp_path / "sweep" / str(i) / "ran").unlink()
    again = sweep("+x=1,2,3,4", "hydra.launcher.resume=true")
    assert again.returncode == 0, again.stderr
    ran = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/ran"))
    assert ran == ["3"]  # the three completed jobs were not run again
