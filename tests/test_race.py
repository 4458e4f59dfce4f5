"""Racing (hydra/sweeper=hexsweep_race): the decisions in-process on synthetic numbers, then real
races of a fast synthetic plain Hydra app whose configurations have known means and whose noise
comes from the seed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy import stats

from hexsweep.errors import ConfigError
from hexsweep.race.plan import COMPLETED, Race, RaceJob
from hexsweep.race.stats import RaceDecider, conover_friedman
from hexsweep.race.sweeper import RaceSearch


def synthetic(means, seeds: int, rng, shared: float = 0.6, own: float = 0.4) -> np.ndarray:
    """(configurations x seeds) objectives: the mean, a seed effect shared by every configuration
    (what pairing removes) and each run's own noise."""
    seed_effect = rng.normal(0.0, shared, seeds)
    return np.asarray(means, float)[:, None] + seed_effect[None, :] + rng.normal(0.0, own, (len(means), seeds))


def run_decider(values: np.ndarray, test: str, alpha: float = 0.05, min_seeds: int = 3, max_seeds: int = 20):
    """A race on a fixed table: each round every survivor finishes its next seed."""
    d = RaceDecider(len(values), "minimize", alpha, min_seeds, max_seeds, test)
    finished = np.zeros(values.shape, dtype=bool)
    for k in range(max_seeds):
        finished[d.alive, k] = True
        d.update(values, finished)
        if d.done:
            break
    return d


@pytest.mark.parametrize("test", ["friedman", "paired_t"])
def test_false_eliminations_among_identical_configurations_stay_within_alpha(test):
    """Many races of 4 identical configurations: any elimination is false. Its count must be
    one that a procedure whose false-elimination rate is exactly alpha would reach with at
    least 1% chance (binomial, from scipy); testing at alpha at every look instead (no
    correction over the looks) eliminates falsely in about a fifth of the races and fails this."""
    rng = np.random.default_rng(2025)
    races, alpha = 120, 0.05
    false = sum(bool(run_decider(synthetic([0.0] * 4, 20, rng), test, alpha).eliminations) for _ in range(races))
    bound = int(stats.binom.ppf(0.99, races, alpha))
    assert false <= bound, f"{false} of {races} races eliminated a configuration (allowed {bound})"


@pytest.mark.parametrize("test", ["friedman", "paired_t"])
def test_the_race_keeps_the_best_and_drops_the_clearly_worse_early(test):
    rng = np.random.default_rng(7)
    values = synthetic([0.0, 0.1, 2.0, 3.0, 4.0], 20, rng)
    d = run_decider(values, test)
    assert 0 in d.alive
    out = {e.config: e.seeds for e in d.eliminations}
    assert set(out) >= {2, 3, 4} and max(out[c] for c in (2, 3, 4)) <= 6, out


def test_conover_matches_the_rank_sum_formula():
    """Perfectly concordant blocks have no residual rank variance (Conover's t is infinite): each
    pair gets the Wilcoxon test instead, which three seeds cannot make significant."""
    r, p, pairs = conover_friedman(np.array([[1.0, 1.1, 0.9], [2.0, 2.2, 1.9], [3.0, 3.1, 3.3]]))
    assert list(r) == [3.0, 6.0, 9.0] and pairs == [(0, 1), (0, 2), (1, 2)] and list(p) == [0.25, 0.25, 0.25]
    blocks = np.array([[1.0, 2.0, 3.0, 1.0], [2.0, 1.0, 1.0, 3.0], [3.0, 3.0, 2.0, 2.0]])
    r, p, _ = conover_friedman(blocks)
    b, k = 4, 3
    a = float((stats.rankdata(blocks, axis=0) ** 2).sum())
    t = abs(r[0] - r[2]) / np.sqrt(2 * (b * a - (r**2).sum()) / ((b - 1) * (k - 1)))
    assert p[1] == pytest.approx(2 * stats.t.sf(t, (b - 1) * (k - 1)))


def test_an_asynchronous_race_is_sized_by_its_budget():
    """budget_jobs=3 of a 4 x 20 grid: the launcher is told 3 jobs (its progress bar's total, and
    no more jobs at once), not the grid's 80."""
    seen = {}

    class Launcher:
        def n_jobs_for(self, total):
            return min(total, 8)

        def launch_async(self, feed, on_done, total, n_jobs):
            seen.update(total=total, n_jobs=n_jobs)

    search = RaceSearch({"seed_key": "seed"})
    search.launcher = Launcher()
    search._run_async(new_race(4, budget_jobs=3))
    assert seen == {"total": 3, "n_jobs": 3}


def test_race_png_puts_each_value_at_its_seed():
    """Seed 1 was interrupted (it runs again on resume), seed 2 completed: in race.png seed 2's
    value stands at the third seed, not the second, and the running mean is numpy's."""
    import warnings

    from hexsweep.race.output import seed_curve

    race = new_race(2)
    for k in range(3):
        race.start(k, 0, k)
    race.finish(0, COMPLETED, 1.0)
    race.finish(1, "interrupted")
    race.finish(2, COMPLETED, 3.0)
    with warnings.catch_warnings():  # arm 1 has no value yet: nothing on stderr
        warnings.simplefilter("error")
        summary = race.summary()
    xs, ys, running = seed_curve(json.loads(json.dumps(summary))["configs"][0])
    assert list(xs) == [1, 3] and list(ys) == [1.0, 3.0] and list(running) == [1.0, 2.0]


def test_identical_configurations_are_compared_without_a_warning():
    """Configurations of a deterministic app: the same values (p = 1) or a constant gap (p = 0),
    and nothing on stderr (scipy's precision-loss warning came at every look)."""
    import warnings

    from hexsweep.race.stats import paired_t_all

    loss = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.1, 2.1, 3.1], [1.5, 2.1, 3.9]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = paired_t_all(loss, [(0, 1), (0, 2), (0, 3)])
    assert list(p[:2]) == [1.0, 0.0] and p[2] == pytest.approx(stats.ttest_rel(loss[0], loss[3]).pvalue)


def simulate(race: Race, values: np.ndarray, slots: int, stop_after: int | None = None) -> list[int]:
    """The asynchronous loop with ``slots`` jobs at once, each job taking 1 + (seed index % 3)
    time units; returns how many jobs ran at every moment some job ended."""
    running: list[tuple[float, RaceJob]] = []
    now, busy = 0.0, []
    while True:
        while len(running) < slots and (stop_after is None or race.jobs_started() < stop_after):
            pick = race.next_job()
            if pick is None:
                break
            if isinstance(pick, RaceJob):
                pick.state, job = "running", pick
            else:
                job = race.start(race.next_num(), *pick)
            running.append((now + 1 + job.seed_index % 3, job))
        if not running:
            return busy
        busy.append(len(running))
        running.sort(key=lambda x: x[0])
        now, job = running.pop(0)
        race.finish(job.num, COMPLETED, values[job.config, job.seed_index])


def new_race(n: int, **kw) -> Race:
    return Race([[f"arm={i}"] for i in range(n)], [f"arm={i}" for i in range(n)], list(range(20)), **kw)


def test_asynchronous_scheduling_keeps_every_slot_busy_and_gives_the_fewest_seeds_first():
    rng = np.random.default_rng(3)
    values = synthetic([0.0, 0.05, 1.5, 3.0], 20, rng)
    race = new_race(4)
    busy = simulate(race, values, slots=3)
    last_start = max(j.num for j in race.jobs.values())
    # every slot is busy until the race has nothing more to start (no round barrier)
    assert all(b == 3 for b in busy[:last_start - 2]), busy
    counts = [len(race.started(c)) for c in race.alive]
    assert max(counts) - min(counts) <= 1


def test_resume_recomputes_the_same_eliminations_and_finishes_the_same_race():
    rng = np.random.default_rng(11)
    values = synthetic([0.0, 0.3, 1.0, 2.5], 20, rng)
    whole = new_race(4)
    simulate(whole, values, slots=2)
    half = new_race(4)
    simulate(half, values, slots=2, stop_after=14)
    saved = json.loads(json.dumps(half.summary()))  # as race.json holds it
    again = new_race(4)
    again.restore(saved["jobs"])
    assert [(e.config, e.seeds) for e in again.decider.eliminations] == \
        [(e.config, e.seeds) for e in half.decider.eliminations]
    assert len(again.jobs) == 14
    simulate(again, values, slots=2)
    assert [(e.config, e.seeds) for e in again.decider.eliminations] == \
        [(e.config, e.seeds) for e in whole.decider.eliminations]
    assert again.verdict()["text"] == whole.verdict()["text"]


def test_a_resumed_race_never_gives_a_new_job_the_number_of_a_dropped_one():
    """Job 12 (arm 3) was running when the race stopped, and arm 3 is out by the finished jobs:
    on resume it is not run again, and the next new job does not get its number (its folder)."""
    values = np.tile(np.arange(3.0), (4, 1))
    values[3] += 100.0  # a constant gap: paired_t eliminates arm 3 at the first look
    jobs = [{"num": c * 3 + k, "config": c, "seed_index": k, "seed": k, "state": COMPLETED,
             "value": float(values[c, k])} for c in range(4) for k in range(3)]
    jobs.append({"num": 12, "config": 3, "seed_index": 3, "seed": 3, "state": "running"})
    race = new_race(4, test="paired_t")
    race.restore(jobs)
    assert 3 not in race.alive
    assert race.next_job() == (0, 3)
    assert race.next_num() == 13
    again = new_race(4, test="paired_t")  # a second resume still knows number 12 was used
    again.restore(json.loads(json.dumps(race.summary()))["jobs"])
    again.next_job()
    assert again.next_num() == 13


# ---- real races through Hydra ---------------------------------------------------------------

APP = '''
import json, os, time
import hydra
import numpy as np

MEANS = {"a": 0.0, "b": 0.05, "c": 2.0, "d": 4.0}

@hydra.main(config_path="conf", config_name="config", version_base="1.3")
def task(cfg):
    if cfg.fail:
        raise RuntimeError("this arm always fails")
    log = os.path.join(cfg.events, f"{cfg.arm}-{cfg.seed}")
    open(log + ".start", "w").close()
    time.sleep(cfg.sleep * (1 + cfg.seed % 3))
    shared = np.random.default_rng(cfg.seed).normal(0, 0.5)
    own = np.random.default_rng([cfg.seed, ord(cfg.arm)]).normal(0, 0.2)
    open(log + ".end", "w").close()
    return MEANS[cfg.arm] + shared + own

if __name__ == "__main__":
    task()
'''


@pytest.fixture
def race_app(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "events").mkdir()
    OmegaConf.save(OmegaConf.create({
        "defaults": [{"override hydra/sweeper": "hexsweep_race"}, "_self_"],
        "arm": "a", "seed": 0, "fail": False, "sleep": 0.0, "events": str(tmp_path / "events"),
        "hydra": {"sweeper": {"max_seeds": 8}}}), tmp_path / "conf" / "config.yaml")
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))

    def run(*args: str, launcher: str = "hexsweep") -> subprocess.CompletedProcess:
        extra = ["hydra.launcher.progress=off", "hydra.launcher.n_jobs=2"] if launcher == "hexsweep" else []
        return subprocess.run([sys.executable, "app.py", "-m", f"hydra/launcher={launcher}", *extra,
                               "hydra.sweep.dir=sweep", "arm=a,b,c,d", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)

    return run


def race_json(tmp_path) -> dict:
    return json.loads((tmp_path / "sweep" / "race.json").read_text())


@pytest.mark.slow
def test_a_plain_app_races_asynchronously_and_resumes_mid_race(tmp_path, race_app):
    out = race_app("hydra.sweeper.budget_jobs=10")
    assert out.returncode == 0, out.stderr
    first = race_json(tmp_path)
    assert first["ended_by"] == "the budget (budget_jobs=10)" and first["jobs_run"] == 10
    out = race_app("hydra.launcher.resume=true")
    assert out.returncode == 0, out.stderr
    s = race_json(tmp_path)
    by = {c["label"]: c for c in s["configs"]}
    assert not by["arm=a"]["eliminated"]
    assert by["arm=c"]["eliminated"] and by["arm=d"]["eliminated"]
    assert by["arm=d"]["eliminated_at_seeds"] <= 5
    assert by["arm=d"]["p_value"] < s["level_per_look"]
    # the 10 jobs of the first run counted: none ran twice
    starts = sorted(p.name for p in (tmp_path / "events").glob("*.start"))
    assert len(starts) == s["jobs_run"] == len({(j["config"], j["seed"]) for j in s["jobs"]})
    assert s["jobs_run"] < s["grid_jobs"]
    assert (tmp_path / "sweep" / "race.png").stat().st_size > 0
    md = (tmp_path / "sweep" / "race.md").read_text()
    assert "arm=d` after" in md and s["verdict"]["text"] in md


@pytest.mark.slow
def test_under_another_launcher_the_race_runs_in_batches(tmp_path, race_app):
    out = race_app("hydra.sweeper.test=paired_t", launcher="basic")
    assert out.returncode == 0, out.stderr
    s = race_json(tmp_path)
    by = {c["label"]: c for c in s["configs"]}
    assert not by["arm=a"]["eliminated"] and by["arm=d"]["eliminated"]


@pytest.mark.slow
def test_a_race_whose_every_job_fails_exits_1_in_one_line(tmp_path, race_app):
    out = race_app("fail=true")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    # 3 per arm, and perhaps a next seed an arm started before its third failure was back
    assert re.match(r"hexsweep: error: no job of the race completed \((\d+) jobs: \1 failed\); first: job 0 "
                    r"\(arm=a seed=0\): failed: RuntimeError: this arm always fails$", last), out.stderr


def test_bad_race_settings_are_one_line_before_any_job(tmp_path, race_app):
    out = race_app("hydra.sweeper.test=anova")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == \
        "hexsweep: error: hydra.sweeper.test=anova is invalid: allowed friedman or paired_t"
    assert not list((tmp_path / "events").iterdir())


def test_the_seed_is_the_race_s_to_set():
    search = RaceSearch({"seed_key": "seed"})
    search.hydra_context = SimpleNamespace(config_loader=None)
    with pytest.raises(ConfigError, match="seed is set by the race"):
        search.configurations(["arm=a,b", "seed=1,2"])
    with pytest.raises(ConfigError, match="at least 2 configurations"):
        search.configurations(["arm=a"])
    assert search.configurations(["arm=a,b", "x=1"]) == [["arm=a", "x=1"], ["arm=b", "x=1"]]


def test_only_hexsweep_train_declares_an_objective_direction():
    """A plain app's config may hold any keys, objective.direction and optuna.* included: the
    sweepers add none of them (Hydra's semantics); hexsweep.train's jobs follow the search's
    direction and get the link to their trial."""
    from hexsweep.sweep.apps import PLAIN
    from hexsweep.sweep.train_app import TRAIN_APP

    cfg = OmegaConf.create({"seed": 0, "objective": {"metric": "m", "direction": "minimize"},
                            "optuna": {"study_name": None}})
    assert PLAIN.trial_overrides(cfg, 2, ["maximize"], set()) == ["seed=2"]
    assert TRAIN_APP.trial_overrides(cfg, 2, ["maximize"], set()) == ["seed=2", "objective.direction=maximize"]
    assert PLAIN.trial_link(cfg, "s", 2, {"name": "median"}) == []  # nothing in a plain job reads it
    assert TRAIN_APP.trial_link(cfg, "s", 2, {"name": "median"}) == [
        "optuna.study_name=s", "optuna.trial_number=2", "optuna.pruner=median"]
    search = RaceSearch({"seed_key": "seed", "direction": "maximize"})
    search.config = cfg
    race = new_race(2, direction="maximize")
    assert (search.metric(), search.job_overrides(race, 0, 1)) == ("the task's return value", ["arm=0", "seed=1"])
    search.app = TRAIN_APP
    assert search.metric() == "m"
    assert search.job_overrides(race, 0, 1) == ["arm=0", "seed=1", "objective.direction=maximize"]


def test_only_the_app_says_what_resumes_a_race():
    """``resume`` is hexsweep.train's key: a plain app's config may hold a key of that name for
    its own use, and continues a race only with hydra.launcher.resume=true."""
    from hexsweep.sweep.train_app import TRAIN_APP

    search = RaceSearch({"seed_key": "seed"})
    search.config = OmegaConf.create({"resume": True, "hydra": {"launcher": {}}})
    assert not search.resuming()
    search.config.hydra.launcher.resume = True
    assert search.resuming()
    search.app, search.config = TRAIN_APP, OmegaConf.create({"resume": True, "hydra": {"launcher": {}}})
    assert search.resuming()


def test_a_stop_request_after_the_race_waits_for_the_report(monkeypatch):
    """As after a list launch or a search: once the race's jobs are over, Hydra's end-of-sweep
    callback writes the report, and SIGTERM then is remembered instead of killing it mid-write."""
    import signal

    from hexsweep.sweep import stopping
    from hydra_plugins.hexsweep_race.sweeper import HexsweepRaceSweeper

    sweeper = HexsweepRaceSweeper(seed_key="seed")
    sweeper.search.config = OmegaConf.create(
        {"hydra": {"callbacks": {"report": {"_target_": "hexsweep.sweep.callbacks.SweepReport"}}}})
    monkeypatch.setattr(sweeper.search, "sweep", lambda arguments: None)
    try:
        sweeper.sweep([])
        assert signal.getsignal(signal.SIGTERM) is stopping._remember
    finally:
        stopping._restore()
