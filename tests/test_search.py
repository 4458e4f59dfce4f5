"""Optuna searches through the hexsweep_optuna sweeper: real sweeps on tiny data."""

import json
import multiprocessing
import subprocess
import sys

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from sweep_helpers import console_script, sweep_cmd, sweep_dirs

from hexsweep.errors import ConfigError
from hexsweep.search.space import parse_params
from hexsweep.search.storage import open_storage, redact

pytestmark = pytest.mark.slow


@pytest.fixture
def data(data_root, tiny_dataset):
    return data_root


def search(tmp_path, data, *overrides, study="s", timeout=400):
    cmd = sweep_cmd(tmp_path, data, "hydra/sweeper=hexsweep_optuna", f"hydra.sweeper.study_name={study}",
                    "hydra.sweeper.n_jobs=2", "trainer.epochs=3", *overrides)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def load(tmp_path, study="s"):
    return optuna.load_study(study_name=study, storage=open_storage(str(tmp_path / "optuna/studies.journal")))


def test_grammar_of_the_official_plugin():
    space, fixed = parse_params({
        "x": "range(-5.5, 5.5, step=0.5)", "y": "choice(-5, 0, 5)", "lr": "tag(log, interval(1e-5, 1e-1))",
        "n": "int(interval(1, 8))", "b": "range(1, 5)", "opt": "choice(adam, sgd)", "z": "interval(0, 1)",
        "fixed": "3"})
    assert space["x"] == FloatDistribution(-5.5, 5.5, step=0.5)
    assert space["y"] == CategoricalDistribution([-5, 0, 5])
    assert space["lr"] == FloatDistribution(1e-5, 1e-1, log=True)
    assert space["n"] == IntDistribution(1, 8)
    assert space["b"] == IntDistribution(1, 5)  # as the official plugin: stop is Optuna's (inclusive) high
    assert space["opt"] == CategoricalDistribution(["adam", "sgd"])
    assert space["z"] == FloatDistribution(0.0, 1.0)
    assert fixed == ["fixed=3"]
    with pytest.raises(ConfigError, match="hydra.sweeper.params.bad"):
        parse_params({"bad": "choice("})


def test_tpe_search_runs_two_at_a_time_links_trials_and_reports(tmp_path, data):
    out = search(tmp_path, data, "hydra.sweeper.n_trials=5", "optim.lr=tag(log,interval(1e-4,1e-2))",
                 "batch_size=choice(128,256)", "hydra.sweeper.sampler.seed=0")
    assert out.returncode == 0, out.stderr
    study = load(tmp_path)
    assert len(study.trials) == 5 and {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    sweep = sweep_dirs(tmp_path)[0]
    for t in study.trials:  # linked both ways
        result = json.loads((sweep / str(t.number) / "result.json").read_text())
        assert t.user_attrs["job_dir"] == str(sweep / str(t.number))
        assert result["optuna"] == {"study_name": "s", "trial_number": t.number}
        assert f"batch_size={t.params['batch_size']}" in t.user_attrs["overrides"]
        assert result["config"]["batch_size"] == t.params["batch_size"]
    seeds = {json.loads((sweep / str(t.number) / "result.json").read_text())["config"]["seed"] for t in study.trials}
    assert len(seeds) == 5
    report = (sweep / "report.md").read_text()
    assert "## Optuna study" in report and f"Best trial {study.best_trial.number}" in report
    assert (sweep / "optuna_history.png").stat().st_size > 1000
    assert len(pd.read_csv(sweep / "results.csv")) == 5
    journal = str(tmp_path / "optuna/studies.journal")
    cli = subprocess.run([console_script("optuna"), "trials", "--study-name", "s", "--storage", journal,
                          "--storage-class", "JournalFileBackend", "-f", "json"], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert len(json.loads(cli.stdout)) == 5
    best = subprocess.run([sys.executable, "-m", "hexsweep.study", "--storage", journal, "best", "--study", "s"],
                          capture_output=True, text=True)
    assert f"best trial {study.best_trial.number}" in best.stdout
    assert "Reproduce: `python -m hexsweep.train" in best.stdout
    for command in (["importance"], ["plot", "--out", str(tmp_path / "plots")]):
        done = subprocess.run([sys.executable, "-m", "hexsweep.study", "--storage", journal, command[0], "--study", "s",
                               *command[1:]], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert "optim.lr" in subprocess.run(
        [sys.executable, "-m", "hexsweep.study", "--storage", journal, "importance", "--study", "s"],
        capture_output=True, text=True).stdout
    assert (tmp_path / "plots" / "optuna_history.png").exists() and (tmp_path / "plots" / "optuna_slice.png").exists()


def test_failures_are_trials_not_crashes_and_pruning_prunes(tmp_path, data):
    out = search(tmp_path, data, "hydra/sweeper/sampler=grid", "hydra.sweeper.max_failure_rate=0.9",
                 "fault.raise_at_epoch=choice(2,99)",
                 "fault.nan_at_epoch=choice(1,99)", "hydra.sweeper.n_trials=4")
    assert out.returncode == 0, out.stderr
    by_params = {(t.params["fault.raise_at_epoch"], t.params["fault.nan_at_epoch"]): t for t in load(tmp_path).trials}
    assert by_params[(99, 99)].state == TrialState.COMPLETE
    raised = by_params[(2, 99)]
    assert raised.state == TrialState.FAIL and "InjectedFault" in raised.user_attrs["fail_reason"]
    nan = by_params[(99, 1)]
    assert nan.state == TrialState.FAIL and "NonFiniteObjective" in nan.user_attrs["fail_reason"]
    # a search built to prune: one good learning rate, then hopeless ones, median pruner
    # (sampler seed 5 puts the good one first in the grid's order, so the pruner has a reference)
    out = search(tmp_path, data, "hydra/sweeper/sampler=grid", "trainer.epochs=5", "hydra.sweeper.n_jobs=1",
                 "hydra.sweeper.sampler.seed=5",
                 "optim.lr=choice(3e-3,1e-7,2e-7,3e-7)", "hydra.sweeper.n_trials=4",
                 "hydra.sweeper.pruner.name=median", "hydra.sweeper.pruner.n_startup_trials=1",
                 "hydra.sweeper.pruner.n_warmup_steps=1", study="p")
    assert out.returncode == 0, out.stderr
    pruned = [t for t in load(tmp_path, "p").trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in load(tmp_path, "p").trials]
    job = json.loads((__import__("pathlib").Path(pruned[0].user_attrs["job_dir"]) / "result.json").read_text())
    assert job["status"] == "pruned" and job["pruned_at_epoch"] == pruned[0].user_attrs["pruned_at_epoch"] < 5
    # the sweep's last line does not count a pruned trial as completed
    assert f"4 of 4 jobs ended ({4 - len(pruned)} completed, {len(pruned)} pruned)" in out.stderr, out.stderr


def test_too_many_failures_stop_the_sweep_with_a_message(tmp_path, data):
    out = search(tmp_path, data, "fault.raise_at_epoch=1", "hydra.sweeper.n_trials=6",
                 "seed=range(0,6)")
    assert out.returncode == 1
    assert "trials failed (> max_failure_rate=0.5); sweep stopped" in out.stderr
    assert len(load(tmp_path).trials) < 6


def test_resume_continues_numbering_and_counts_the_total(tmp_path, data):
    args = ["hydra.sweeper.n_trials=3", "optim.lr=tag(log,interval(1e-4,1e-2))"]
    assert search(tmp_path, data, *args).returncode == 0
    again = search(tmp_path, data, *args)
    assert again.returncode == 2 and "already has 3 trials" in again.stderr and "resume=true" in again.stderr
    more = search(tmp_path, data, "hydra.sweeper.n_trials=5", args[1], "resume=true")
    assert more.returncode == 0, more.stderr
    study = load(tmp_path)
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]
    newest = sweep_dirs(tmp_path)[-1]
    assert sorted(p.name for p in newest.iterdir() if p.is_dir()) == ["3", "4"]
    seeds = [json.loads((__import__("pathlib").Path(t.user_attrs["job_dir"]) / "result.json").read_text())
             ["config"]["seed"] for t in study.trials]
    assert len(set(seeds)) == 5


def test_a_continued_seeded_search_proposes_new_parameters_and_a_fresh_one_stays_reproducible(tmp_path, data):
    """A driver builds its own sampler: continuing a study with the seed of the driver before it
    used to propose that driver's first parameters again (TPE's random startup trials)."""
    space = {"optim.lr": "tag(log,interval(1e-4,1e-2))", "model.dropout": "interval(0,0.3)"}
    args = ["hydra.sweeper.sampler.seed=0", "trainer.epochs=1", *(f"{k}={v}" for k, v in space.items())]
    assert search(tmp_path, data, "hydra.sweeper.n_trials=2", *args).returncode == 0
    more = search(tmp_path, data, "hydra.sweeper.n_trials=4", "resume=true", *args)
    assert more.returncode == 0, more.stderr
    trials = load(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    first, continued = [trials[0].params, trials[1].params], [trials[2].params, trials[3].params]
    assert not any(p == q for p in continued for q in first), (first, continued)
    assert "study 's' holds 2 trials: sampler seed 0 ->" in more.stdout  # Hydra logs the driver's info there
    # a fresh study keeps what seed 0 proposed before: the first asks of the configured sampler
    # (the sweeper's default tpe), in the space's order
    plain = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10, multivariate=False))
    distributions = parse_params(space)[0]
    assert first == [plain.ask(distributions).params for _ in range(2)]


def test_a_joining_driver_derives_its_seed_but_a_grid_keeps_the_studys():
    """In process, no training: which samplers a joining driver reseeds, and that a continued grid
    runs every point once (its trials index the grid its seed shuffled)."""
    from hexsweep.search.sweeper import OptunaSearch, joining_seed
    from hexsweep.search.trials import tell

    space = parse_params({"a": "choice(1,2,3)", "b": "choice(10,20,30)"})[0]

    def samplers(target, seed, held):  # (as configured, as a driver joining at `held` trials builds it)
        search = OptunaSearch({"sampler": {"_target_": f"optuna.samplers.{target}", "seed": seed}})
        configured = search._sampler(space)
        return configured, search._joining_sampler(configured, space, held, "s")

    def first_ask(sampler):
        return optuna.create_study(sampler=sampler).ask(space).params

    assert joining_seed(0, 4) == joining_seed(0, 4) != joining_seed(0, 5)
    assert joining_seed(0, 4) != joining_seed(1, 4)
    for held in (2, 4):  # a derived seed: reproducible, and off the configured seed's sequence
        configured, joining = samplers("RandomSampler", 0, held)
        assert first_ask(joining) == first_ask(samplers("RandomSampler", 0, held)[1]) != first_ask(configured)
    for target, seed in (("RandomSampler", None), ("GridSampler", 0), ("GridSampler", None), ("QMCSampler", 0)):
        configured, joining = samplers(target, seed, 4)
        assert joining is configured, target  # unseeded stays unseeded; a grid's and QMC's seed is the study's
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="g", storage=storage, sampler=samplers("GridSampler", 0, 0)[1])
    for _ in range(4):
        tell(study, study.ask(space), 0.0)
    joined = optuna.load_study(study_name="g", storage=storage, sampler=samplers("GridSampler", 0, 4)[1])
    for _ in range(5):
        tell(joined, joined.ask(space), 0.0)
    assert len({tuple(sorted(t.params.items())) for t in joined.trials}) == 9


def test_multi_objective_search(tmp_path, data):
    out = search(tmp_path, data, "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=[maximize,minimize]",
                 "hydra.sweeper.metrics=[val_policy_acc,val_value_loss]", "hydra/sweeper/sampler=nsgaii",
                 "optim.lr=tag(log,interval(1e-4,1e-2))")
    assert out.returncode == 0, out.stderr
    study = load(tmp_path)
    assert len(study.directions) == 2 and all(len(t.values) == 2 for t in study.trials)
    assert study.best_trials
    sweep = sweep_dirs(tmp_path)[0]
    r = json.loads((sweep / "0" / "result.json").read_text())
    assert study.trials[0].values == [r["best"]["val_policy_acc"], r["best"]["val_value_loss"]]


def _writer(args):
    path, worker = args
    study = optuna.load_study(study_name="w", storage=open_storage(path))
    for _ in range(10):
        trial = study.ask()
        x = trial.suggest_float("x", -1, 1)
        for step in range(3):
            trial.report(x * step, step)
        study.tell(trial, x * x)
    return worker


def test_eight_concurrent_writers_share_the_default_storage(tmp_path):
    path = str(tmp_path / "studies.journal")
    optuna.create_study(study_name="w", storage=open_storage(path))
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        assert sorted(pool.map(_writer, [(path, i) for i in range(8)])) == list(range(8))
    study = optuna.load_study(study_name="w", storage=open_storage(path))
    numbers = [t.number for t in study.trials]
    assert len(numbers) == 80 and sorted(numbers) == list(range(80))
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in study.trials)


def test_any_rdb_url_works_and_optunas_cli_reads_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="r", storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=3)
    cli = subprocess.run([console_script("optuna"), "trials", "--study-name", "r", "--storage", url, "-f", "json"],
                         capture_output=True, text=True)
    assert cli.returncode == 0 and len(json.loads(cli.stdout)) == 3
    listed = subprocess.run([sys.executable, "-m", "hexsweep.study", "--storage", url, "list"],
                            capture_output=True, text=True)
    assert listed.stdout.startswith("r: 3 trials, minimize")
    with pytest.raises(ConfigError, match=r"postgresql://bob:\*\*\*@127.0.0.1:1/none cannot be opened"):
        open_storage("postgresql://bob:hunter2@127.0.0.1:1/none")


def test_optuna_dashboard_reads_the_default_storage(tmp_path):
    import socket
    import time
    import urllib.request

    journal = str(tmp_path / "studies.journal")
    optuna.create_study(study_name="dash", storage=open_storage(journal)).optimize(
        lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([console_script("optuna-dashboard"), journal, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        body = None
        for _ in range(60):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=2).read()
                break
            except OSError:
                time.sleep(0.25)
        assert body is not None and json.loads(body)["study_summaries"][0]["study_name"] == "dash"
    finally:
        server.terminate()
        server.wait(10)


def test_passwords_never_show():
    assert redact("postgresql://bob:s3cret@db.example/hex") == "postgresql://bob:***@db.example/hex"
    assert redact("sqlite:///x.db") == "sqlite:///x.db"


def test_trials_orphaned_by_a_dead_driver_are_failed_on_the_next_run(tmp_path, data):
    storage = open_storage(str(tmp_path / "optuna/studies.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    orphan = study.ask()
    job = tmp_path / "old" / "0"
    job.mkdir(parents=True)
    (job / "result.json").write_text(json.dumps({"status": "running", "pid": 2**22 + 7,
                                                 "host": __import__("socket").gethostname()}))
    orphan.set_user_attr("job_dir", str(job))
    orphan.set_user_attr("driver", {"host": __import__("socket").gethostname(), "pid": 2**22 + 6,
                                    "sweep_dir": str(tmp_path / "old")})  # its lock is held by nobody
    out = search(tmp_path, data, "hydra.sweeper.n_trials=2", "resume=true",
                 "optim.lr=tag(log,interval(1e-4,1e-2))")
    assert out.returncode == 0, out.stderr
    trials = load(tmp_path).trials
    assert trials[0].state == TrialState.FAIL and "orphaned" in trials[0].user_attrs["fail_reason"]
    assert trials[1].state in (TrialState.COMPLETE, TrialState.PRUNED) and len(trials) == 2


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",  # heartbeats: Optuna's own
                            "ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_whose_driver_died_as_it_asked_fails_after_the_grace_period(tmp_path):
    """A driver killed between study.ask and naming itself on the trial leaves a RUNNING trial
    that never beat: Optuna's stale-trial check skips it, so it stayed RUNNING for ever."""
    import time

    from hexsweep.search.lifecycle import fail_stale

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    study.ask()  # its driver died here: no driver named, no heartbeat
    beating = study.ask()  # another program's live trial: it beats and names no driver
    storage.record_heartbeat(beating._trial_id)
    fail_stale(study, storage)
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 2  # within the grace period
    time.sleep(1.5)
    storage.record_heartbeat(beating._trial_id)
    fail_stale(study, storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert study.trials[0].user_attrs["fail_reason"] == "orphaned: its driver died as it asked for it"


def test_configurations_that_ran_out_of_memory_are_not_proposed_again(tmp_path):
    from hexsweep.search.trials import Trials
    from hexsweep.sweep.train_app import TRAIN_APP

    study = optuna.create_study()
    dist = {"batch_size": CategoricalDistribution([256, 512, 1024]),
            "model.channels": CategoricalDistribution([32, 64])}
    oom = study.ask(dist)
    while oom.params != {"batch_size": 512, "model.channels": 64}:
        study.tell(oom, state=TrialState.FAIL)
        oom = study.ask(dist)
    oom.set_user_attr("fail_status", "oom")
    study.tell(oom, state=TrialState.FAIL)
    blocked = Trials(study, TRAIN_APP, None, {}, "s", dist, [], ["minimize"], tmp_path, None).oom_blocked
    assert blocked({"batch_size": 512, "model.channels": 64}) == oom.number
    assert blocked({"batch_size": 1024, "model.channels": 64}) == oom.number  # larger batch: also out
    assert blocked({"batch_size": 256, "model.channels": 64}) is None
    assert blocked({"batch_size": 1024, "model.channels": 32}) is None


def test_custom_search_space_hook(tmp_path, data):
    import os

    env = {**os.environ, "PYTHONPATH": str(__import__("pathlib").Path(__file__).parent)}
    cmd = sweep_cmd(tmp_path, data, "hydra/sweeper=hexsweep_optuna", "hydra.sweeper.study_name=s",
                    "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2", "trainer.epochs=1",
                    "optim.lr=tag(log,interval(1e-4,1e-2))",
                    "hydra.sweeper.custom_search_space=sweep_helpers.dropout_space")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    for t in load(tmp_path).trials:
        assert 0.0 <= t.params["model.dropout"] <= (0.3 if t.params["optim.lr"] > 1e-3 else 0.1)
        result = json.loads((__import__("pathlib").Path(t.user_attrs["job_dir"]) / "result.json").read_text())
        assert result["config"]["model"]["dropout"] == pytest.approx(t.params["model.dropout"])


def test_a_live_drivers_trials_are_not_orphans_and_telling_twice_is_harmless(tmp_path):
    """Orphaned means the trial's driver died, not that its job ended: a trial whose driver
    still holds its sweep folder is left alone, whatever its job folder says."""
    import socket
    import textwrap

    from hexsweep.search.lifecycle import fail_orphans
    from hexsweep.search.trials import Trials
    from hexsweep.sweep.train_app import TRAIN_APP

    storage = open_storage(str(tmp_path / "s.journal"))
    study = optuna.create_study(study_name="s", storage=storage)
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from hexsweep.sweep.owner import own
        own(Path({str(live_dir)!r}))
        print("owned", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "owned"
        live = study.ask()
        live.set_user_attr("driver", {"host": socket.gethostname(), "pid": holder.pid, "sweep_dir": str(live_dir)})
        (live_dir / "0").mkdir()
        (live_dir / "0" / "result.json").write_text(json.dumps({"status": "failed"}))  # its job ended
        unwritten = study.ask()  # its job has not written a result yet
        unwritten.set_user_attr("driver", {"host": socket.gethostname(), "pid": holder.pid,
                                           "sweep_dir": str(live_dir)})
        fail_orphans(study, storage, tmp_path / "other")
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.RUNNING]
    finally:
        holder.kill()
        holder.wait()
    fail_orphans(study, storage, tmp_path / "other")  # now its driver is dead
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.FAIL]
    # the live driver, back from a pause, tells its trial: harmless
    trials = Trials(study, TRAIN_APP, None, {}, "s", {}, [], ["minimize"], live_dir, None)
    assert trials.finish(live, live_dir / "0") == "already finished"


def test_command_line_values_stay_fixed_and_leave_the_search_space():
    from hexsweep.search.sweeper import OptunaSearch

    search = OptunaSearch({"params": {"batch_size": "choice(32,64,128)", "model.channels": "choice(8,16)",
                                      "optim.lr": "tag(log,interval(1e-4,1e-2))"}})
    space, fixed = search._space(["batch_size=64", "model.channels=8", "seed=3"])
    assert set(space) == {"optim.lr"}
    assert fixed == ["batch_size=64", "model.channels=8", "seed=3"]
    assert search.fixed_keys == ["batch_size", "model.channels"]
    with pytest.raises(ConfigError, match="batch_size is both fixed and searched"):
        search._space(["batch_size=64", "batch_size=choice(16,32)"])


def test_trials_that_cannot_start_count_as_failures(tmp_path, data):
    """Every sampled dropout is out of range: each trial fails before its job starts, the
    failure rate stops the search, and the command exits 1 with one line."""
    out = search(tmp_path, data, "hydra.sweeper.n_trials=6", "model.dropout=interval(1.0, 2.0)")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("hexsweep: error: 2 of 2 trials failed (> max_failure_rate=0.5); sweep stopped")
    assert "model.dropout=" in last and "is invalid" in last
    assert [t.user_attrs["fail_status"] for t in load(tmp_path).trials] == ["invalid", "invalid"]


def test_an_interrupted_search_resumed_in_its_folder_continues_its_trials(tmp_path, data, spawn):
    """Ctrl-C of a search, then the same command with hydra.sweep.dir=<its folder> resume=true:
    each interrupted trial continues from its last.pt in its own trial, its reported epochs kept
    and each epoch reported once; the search still has n_trials trials and they all complete."""
    import signal

    from sweep_helpers import read_result, wait_for

    args = ["hydra.sweeper.n_trials=2", "optim.lr=tag(log,interval(1e-4,1e-2))", "trainer.epochs=4",
            "fault.sleep_s_per_epoch=1", "num_threads=1", "hydra.sweeper.pruner.name=median"]
    cmd = sweep_cmd(tmp_path, data, "hydra/sweeper=hexsweep_optuna", "hydra.sweeper.study_name=s",
                    "hydra.sweeper.n_jobs=2", *args)
    proc = spawn(cmd)

    def reported_twice() -> bool:
        try:
            return sum(len(t.intermediate_values) >= 1 for t in load(tmp_path).trials) == 2
        except KeyError:  # the study is not created yet
            return False

    wait_for(reported_twice, timeout=180, poll=0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    before = {t.number: dict(t.intermediate_values) for t in load(tmp_path).trials}
    assert {t.state for t in load(tmp_path).trials} == {TrialState.RUNNING}  # paused, not failed
    sweep = sweep_dirs(tmp_path)[0]
    # the search space has grown meanwhile: the paused trials continue with what they started with
    again = subprocess.run([*cmd, "batch_size=choice(128,256)", f"hydra.sweep.dir={sweep}", "resume=true"],
                           capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stderr
    assert "2 trial(s) paused with their training state (0, 1)" in err
    assert "continuing 2 paused trial(s)" in again.stdout + again.stderr
    study = load(tmp_path)
    assert [t.number for t in study.trials] == [0, 1]
    for t in study.trials:
        r = read_result(sweep / str(t.number))
        assert t.state == TrialState.COMPLETE and r["resumed_from_epoch"] >= 1
        assert sorted(t.intermediate_values) == [1, 2, 3, 4]
        assert all(t.intermediate_values[e] == v for e, v in before[t.number].items())  # kept as reported
        assert t.value == r["objective"]["value"]


def test_a_bad_pruner_setting_is_one_line_before_any_trial(tmp_path, data):
    out = search(tmp_path, data, "hydra.sweeper.pruner.name=hyperband", "hydra.sweeper.pruner.reduction_factor=1")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == \
        "hexsweep: error: hydra.sweeper.pruner.reduction_factor=1 is invalid: allowed an integer >= 2"
    with pytest.raises(KeyError):
        load(tmp_path)  # no study was created, no trial asked
