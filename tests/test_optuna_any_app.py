"""hexsweep_optuna on plain Hydra apps: the behaviours the official Optuna sweeper's own tests
check (plugins/hydra_optuna_sweeper/tests in facebookresearch/hydra), written here for our
sweeper, plus failure accounting. The apps are written to tmp_path and run as a user would."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import optuna
import pytest
from omegaconf import OmegaConf

from hexsweep.search.storage import open_storage

pytestmark = pytest.mark.slow

SPHERE = '''
import hydra

@hydra.main(config_path="conf", config_name="{config}", version_base="1.3")
def sphere(cfg):
    if cfg.get("error"):
        raise RuntimeError("cfg.error is True")
    if cfg.get("bad_return"):
        return "abc"
    if cfg.get("pair"):
        return cfg.x, cfg.y
    return cfg.x ** 2 + cfg.y ** 2

if __name__ == "__main__":
    sphere()
'''

CONFIGS = {
    "plain": {"x": 1, "y": 1},  # Hydra's basic sweeper
    "sphere": {"defaults": [{"override hydra/sweeper": "hexsweep_optuna"}, "_self_"], "x": 1, "y": 1,
               "hydra": {"sweeper": {"n_trials": 8, "n_jobs": 2,
                                     "params": {"x": "range(-5.5, 5.5, step=0.5)", "y": "choice(-5, 0, 5)"}}}},
    "grid": {"defaults": [{"override hydra/sweeper": "hexsweep_optuna"},
                          {"override hydra/sweeper/sampler": "grid"}, "_self_"], "x": 1, "y": 1, "z": "foo",
             "hydra": {"sweeper": {"n_trials": 20, "n_jobs": 2,
                                   "params": {"x": "choice(-1, 1)", "y": "range(-1.0, 1.0, step=1)",
                                              "z": "choice(foo, bar)"}}}},
    "pair": {"defaults": [{"override hydra/sweeper": "hexsweep_optuna"}, "_self_"], "x": 1, "y": 1, "pair": True,
             "hydra": {"sweeper": {"n_trials": 8, "n_jobs": 2, "direction": ["minimize", "maximize"],
                                   "params": {"x": "range(0, 5)", "y": "range(0, 3)"}}}},
}


def run(tmp_path, config: str, *args: str, launcher: str = "hexsweep", search: bool = True
        ) -> subprocess.CompletedProcess:
    (tmp_path / "conf").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create(CONFIGS[config]), tmp_path / "conf" / f"{config}.yaml")
    (tmp_path / "sphere.py").write_text(textwrap.dedent(SPHERE.format(config=config)))
    extra = ["hydra.launcher.progress=off"] if launcher == "hexsweep" else []
    if search and config != "grid" and not any(a.startswith("hydra/sweeper/sampler=") for a in args):
        extra.append("hydra/sweeper/sampler=random")
    return subprocess.run([sys.executable, "sphere.py", "-m", f"hydra/launcher={launcher}", *extra,
                           "hydra.sweep.dir=sweep", *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def study(tmp_path, name: str = "hexsweep") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(tmp_path / "outputs/optuna/studies.journal")))


@pytest.mark.parametrize("launcher", ["hexsweep", "basic"])
def test_a_plain_app_is_optimised_from_its_return_value(tmp_path, launcher):
    out = run(tmp_path, "sphere", "hydra.sweeper.sampler.seed=123", launcher=launcher)
    assert out.returncode == 0, out.stderr
    s = study(tmp_path)  # the default journal under ./outputs: the app has no paths.outputs
    assert len(s.trials) == 8 and all(t.state == optuna.trial.TrialState.COMPLETE for t in s.trials)
    best = s.best_trial
    assert best.value == pytest.approx(best.params["x"] ** 2 + best.params["y"] ** 2)
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.name == "optuna" and results.best_value == best.value and results.best_params.x == best.params["x"]


def test_a_value_fixed_on_the_command_line_is_not_searched(tmp_path):
    out = run(tmp_path, "sphere", "y=0", "x=choice(0, 1, 2)")
    assert out.returncode == 0, out.stderr
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert "y" not in results.best_params and results.best_params.x in (0, 1, 2)
    assert all(set(t.params) == {"x"} for t in study(tmp_path).trials)


def test_the_grid_sampler_takes_range_and_choice_points_and_stops_when_the_grid_is_done(tmp_path):
    out = run(tmp_path, "grid")
    assert out.returncode == 0, out.stderr
    trials = study(tmp_path).trials
    assert len(trials) == 8  # 2 x values, range(-1.0, 1.0, step=1) = -1.0, 0.0, 2 z values
    assert {t.params["y"] for t in trials} == {-1.0, 0.0}
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert results.best_value == 1 and abs(results.best_params.x) == 1 and results.best_params.y == 0


def test_several_objectives_come_from_the_returned_tuple(tmp_path):
    out = run(tmp_path, "pair", "hydra.sweeper.sampler.seed=123")
    assert out.returncode == 0, out.stderr
    results = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    front = [s["values"] for s in results.solutions]
    assert front and all(x % 1 == 0 for s in results.solutions for x in s["params"].values())
    for a in front:  # a Pareto front: no solution dominates another (minimize x, maximize y)
        assert not any(b[0] <= a[0] and b[1] >= a[1] and b != a for b in front)


def test_a_bad_return_value_fails_its_trial_with_the_official_message(tmp_path):
    out = run(tmp_path, "sphere", "+bad_return=true", "hydra.sweeper.max_failure_rate=1.0")
    assert out.returncode == 1
    reasons = {t.user_attrs.get("fail_reason") for t in study(tmp_path).trials}
    assert reasons == {"Return value must be float-castable. Got 'abc'."}


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_failures_are_counted_and_a_search_with_no_completed_trial_fails_in_one_line(tmp_path, rate):
    out = run(tmp_path, "sphere", "+error=true", f"hydra.sweeper.max_failure_rate={rate}")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hexsweep: error: ")
    if rate < 1.0:
        assert "trials failed (> max_failure_rate=0.5); sweep stopped" in last
        assert len(study(tmp_path).trials) < 8
    else:  # every trial ran, none completed
        assert "no trial of this search completed (8 trials: 8 failed)" in last
        assert "RuntimeError: cfg.error is True" in last


def test_gp_sampler_preset(tmp_path):
    out = run(tmp_path, "sphere", "hydra/sweeper/sampler=gp", "hydra.sweeper.sampler.seed=0",
              "hydra.sweeper.sampler.n_startup_trials=4")
    assert out.returncode == 0, out.stderr
    assert isinstance(optuna.samplers.GPSampler(seed=0), optuna.samplers.BaseSampler)
    assert len(study(tmp_path).trials) == 8


def test_launcher_values_are_refused_under_a_search_as_under_a_list_launch(tmp_path):
    """The sweeper goes through the launcher's own checks: the same one line, before any trial."""
    for bad in ("hydra.launcher.timeout_s=-1", "hydra.launcher.kill_grace_s=-1", "hydra.launcher.n_jobs=0"):
        searched = run(tmp_path, "sphere", bad)
        listed = run(tmp_path, "plain", bad, "x=1,2", search=False)
        assert searched.returncode == listed.returncode == 2, (bad, searched.stderr, listed.stderr)
        last = searched.stderr.strip().splitlines()[-1]
        assert last == listed.stderr.strip().splitlines()[-1]
        assert last.startswith(f"hexsweep: error: {bad.split('=')[0]}=") and "is invalid" in last
        assert not (tmp_path / "outputs" / "optuna").exists()  # no study, no trial asked


def test_a_plain_apps_job_folders_get_no_hexsweep_file(tmp_path):
    out = run(tmp_path, "sphere", "hydra.sweeper.n_trials=2")
    assert out.returncode == 0, out.stderr
    jobs = [p for p in (tmp_path / "sweep").iterdir() if p.is_dir() and p.name.isdigit()]
    assert len(jobs) == 2
    for job in jobs:  # Hydra's own files and the app's log only
        assert {p.name for p in job.iterdir()} <= {".hydra", "sphere.log"}, sorted(p.name for p in job.iterdir())


def test_storage_null_is_a_fresh_in_memory_study_every_run(tmp_path):
    """As lightning-hydra-template's hparams_search configs use it: no journal, no joining."""
    for _ in range(2):
        out = run(tmp_path, "sphere", "hydra.sweeper.storage=null", "hydra.sweeper.n_trials=3")
        assert out.returncode == 0, out.stderr
        assert "study 'hexsweep': 3 trials: 3 complete" in out.stderr
    assert not (tmp_path / "outputs" / "optuna").exists()
    assert "in memory" in (tmp_path / "sweep" / "study.md").read_text()


def test_joining_a_study_searched_over_another_space_stops_before_any_trial(tmp_path):
    assert run(tmp_path, "sphere", "hydra.sweeper.n_trials=2").returncode == 0
    out = run(tmp_path, "sphere", "hydra.sweeper.n_trials=2", "x=choice(a, b)")  # x: another kind
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hexsweep: error: study 'hexsweep' in ") and "was searched over {x: " in last
    assert "this search is over {x: CategoricalDistribution" in last and "hydra.sweeper.study_name" in last
    assert len(study(tmp_path).trials) == 2


def test_the_removed_motpe_sampler_gives_the_official_message(tmp_path):
    out = run(tmp_path, "pair", "hydra/sweeper/sampler=motpe")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == (
        "hexsweep: error: The 'motpe' sampler was removed in Optuna 4.0. Use 'hydra/sweeper/sampler=tpe' "
        "instead. TPESampler now handles multi-objective optimization.")


def test_a_journal_that_cannot_grow_mid_search_ends_it_in_one_line(tmp_path):
    """A full disk, as the journal meets it: writes past the file size limit fail (EFBIG; Python
    ignores SIGXFSZ). The search stops asking, keeps what finished, and exits 1 with one line."""
    import resource

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (15_000, 15_000))

    (tmp_path / "conf").mkdir()
    OmegaConf.save(OmegaConf.create(CONFIGS["sphere"]), tmp_path / "conf" / "sphere.yaml")
    (tmp_path / "sphere.py").write_text(textwrap.dedent(SPHERE.format(config="sphere")))
    out = subprocess.run([sys.executable, "sphere.py", "-m", "hydra/launcher=hexsweep", "hydra.launcher.progress=off",
                          "hydra/sweeper/sampler=random", "hydra.sweep.dir=sweep", "hydra.sweeper.n_trials=60",
                          "hydra.sweeper.n_jobs=1"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         preexec_fn=small_files)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hexsweep: error: the Optuna storage ") and "cannot be written (File too large)" in last
    assert "studies.journal" in last
    done = [t for t in study(tmp_path).trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert 0 < len(done) < 60  # what finished is kept (the torn last line is cut off when read again)


@pytest.mark.parametrize(("value", "message"), [
    ("hydra.sweeper.n_trials=-1", "hydra.sweeper.n_trials=-1 is invalid: allowed an integer > 0"),
    ("hydra.sweeper.storage=folder.journal", "hydra.sweeper.storage=folder.journal is invalid: it is a folder"),
    ("hydra.sweeper.pruner.percentile=101", "hydra.sweeper.pruner.percentile=101.0 is invalid: allowed a number in")])
def test_a_sweeper_value_that_cannot_work_is_one_line_before_any_trial(tmp_path, value, message):
    (tmp_path / "folder.journal").mkdir()
    out = run(tmp_path, "sphere", value)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(f"hexsweep: error: {message}")
    assert "Traceback" not in out.stderr and not (tmp_path / "outputs" / "optuna").exists()
