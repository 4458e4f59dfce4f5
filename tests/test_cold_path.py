"""Start-up and report paths load only what they use (issue 24): listed from sys.modules of a
real run of the command, in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

# Each of these costs 0.1-1.5 s to import; none is needed to print --help or to write a report.
HEAVY = ("scipy.stats", "scipy.optimize", "sqlalchemy", "mlflow", "tensorboard", "torch.utils.tensorboard",
         "optuna", "pandas", "matplotlib", "pyarrow")

RUN = """
import json, runpy, sys
sys.argv = [{module!r}, *{args!r}]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
else:
    code = 0
import atexit, gc
atexit._run_exitfuncs()  # what the process would run at exit, then: how much of its heap is frozen
print("\\nMODULES " + json.dumps({{"code": code, "modules": sorted(sys.modules), "frozen": gc.get_freeze_count()}}))
"""


def loaded(module: str, *args: str, cwd=None) -> tuple[int, set[str], int, str]:
    """The exit code, the modules loaded, the frozen heap's size, and what the command printed."""
    out = subprocess.run([sys.executable, "-c", RUN.format(module=module, args=list(args))], capture_output=True,
                         text=True, timeout=300, cwd=cwd)
    printed, _, line = out.stdout.rpartition("\nMODULES ")
    data = json.loads(line)
    return data["code"], set(data["modules"]), data["frozen"], printed


def heavy(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules)


def test_train_help_loads_no_report_search_or_logger_library(tmp_path):
    code, modules, _, printed = loaded("hexsweep.train", "--help", cwd=tmp_path)
    assert code in (0, None)
    # torch is the job's (hexsweep/lifecycle.py), loaded in the job server, never by --help
    assert heavy(modules, ("torch", *HEAVY)) == []
    # every config group is still listed with its options (hexsweep/sweep/compose.py: shared_config_store)
    assert "model: resnet, resnet18, small" in printed and "logger: csv, mlflow, none, tensorboard" in printed


def test_analyze_loads_no_torch_and_no_scipy_stats(tmp_path):
    sweep = tmp_path / "sweep"
    for num, (seed, lr, value) in enumerate([(0, 0.1, 1.2), (1, 0.1, 1.0), (0, 0.2, 1.1), (1, 0.2, 0.9)]):
        job = sweep / str(num)
        job.mkdir(parents=True)
        result = {"status": "completed", "experiment": "balanced_weights", "overrides": [f"seed={seed}", f"lr={lr}"],
                  "objective": {"metric": "val_objective", "direction": "minimize", "value": value},
                  "best": {"val_objective": value, "val_policy_acc": 0.4, "val_value_loss": 0.9},
                  "final": {"val_objective": value}, "epochs_run": 2, "best_epoch": 2}
        (job / "result.json").write_text(json.dumps(result))
        (job / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "val_objective": value + 1 / e}) + "\n"
                                                   for e in (1, 2)))
    code, modules, frozen, _ = loaded("hexsweep.analyze", str(sweep), cwd=tmp_path)
    assert code in (0, None)
    # the report was written, with its statistics and plots: the libraries it needs did load
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["groups"]["lr=0.2"]["ci_low"] is not None and (sweep / "by_experiment.png").stat().st_size > 0
    assert {"pandas", "matplotlib", "scipy.special"} <= modules
    assert heavy(modules, ("torch", "scipy.stats", "scipy.optimize", "sqlalchemy", "mlflow", "tensorboard",
                           "optuna", "hydra")) == []
    # its exit skips the garbage collections over a heap about to be freed anyway (hexsweep/cli.py)
    assert frozen > 100_000


# ---- the driver's cached composition (hexsweep/sweep/compose.py) against Hydra's own -------------
# Each case: a job's overrides. Several share their config-group choices with an earlier case, so
# they compose from the cache; the others fill it. A case Hydra refuses must fail the same way.
JOB_OVERRIDES = [
    ["seed=1"],
    ["seed=2", "optim.lr=0.01", "experiment_name=${model.name}_x", "batch_size=${seed}"],
    ["model=resnet", "seed=0"],
    ["seed=3", "model=resnet", "model.channels=8", "~hydra.callbacks.sweep_report"],
    ["model=resnet", "~model.dropout"],
    ["seed=1", "+extra=5", "++optim.weight_decay=0.5", "++added=x"],
    ["model@model=resnet", "seed=2"],
    ["experiment=balanced_high_lr", "debug=tiny"],
    ["debug=tiny", "trainer.epochs=1", "hydra.job.name=other", "hydra.job.chdir=true"],
    ["logger=[tensorboard,csv]", "~debug"],
    ["~logger", "seed=5"],
    ["model={channels: 8}", "seed=6"],
    ["+data@extra=tiny"],
    ["hydra/launcher=local", "seed=7"],
    ["hydra.job.config.override_dirname.exclude_keys=[seed]", "seed=8", "optim.lr=0.1"],
    ["seed=abc"],
    ["nonexistent=1"],
    ["model=nonexistent"],
    ["seed=1,2"],
    ["+model=small"],
]


def _nodes(cfg, path=""):
    """Every node's value, type, flags and schema, unresolved: what must match for the cache to be Hydra's."""
    from omegaconf import DictConfig, ListConfig

    meta = cfg._metadata
    yield path, type(cfg).__name__, meta.object_type, meta.ref_type, meta.optional, dict(meta.flags or {}), \
        getattr(meta, "key_type", None), getattr(meta, "element_type", None)
    if isinstance(cfg, DictConfig):
        if cfg._is_missing() or cfg._is_none() or cfg._is_interpolation():
            yield path, cfg._value()
            return
        for key in cfg:
            yield from _nodes(cfg._get_node(key), f"{path}.{key}")
    elif isinstance(cfg, ListConfig):
        if cfg._is_missing() or cfg._is_none() or cfg._is_interpolation():
            yield path, cfg._value()
            return
        for i in range(len(cfg)):
            yield from _nodes(cfg._get_node(i), f"{path}[{i}]")
    else:
        yield path, repr(cfg._value())


def _outcome(load, master, overrides):
    from omegaconf import OmegaConf

    try:
        cfg = load(master, overrides)
    except Exception as e:  # the error itself must be Hydra's
        return ("error", type(e).__name__, str(e), repr(e.__cause__))
    task = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    return list(_nodes(cfg)), task, OmegaConf.select(cfg, "hydra.sweep.dir")


def test_cached_composition_is_hydras(tmp_path, monkeypatch):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from hexsweep.cli import CONF_DIR
    from hexsweep.config import register_schema
    from hexsweep.sweep.compose import SweepComposer, share_composition

    monkeypatch.chdir(tmp_path)
    register_schema()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        hydra_load = loader.load_sweep_config
        master = loader.load_configuration(
            "train", ["hydra.launcher.n_jobs=2", "hydra.job.config.override_dirname.item_sep=+",
                      f"paths.outputs={tmp_path}", "seed=0,1"], RunMode.MULTIRUN)
        composer = share_composition(loader)
        assert share_composition(loader) is composer and isinstance(composer, SweepComposer)
        for overrides in JOB_OVERRIDES:
            cached = _outcome(loader.load_sweep_config, master, overrides)
            assert cached == _outcome(hydra_load, master, overrides), overrides
            # the composition handed out is the caller's own: changing it changes no later job
            if cached[0] != "error":
                cfg = loader.load_sweep_config(master, overrides)
                cfg.hydra.job.name, cfg.experiment_name = "changed", "changed"
        assert composer.enabled and composer.hits >= 8
        # a job's payload carries the loader: it travels without the cache, and still composes
        import cloudpickle

        copied = cloudpickle.loads(cloudpickle.dumps(loader))
        assert copied.load_sweep_config.__self__._bases == {}
        assert _outcome(copied.load_sweep_config, master, ["seed=3"]) == _outcome(hydra_load, master, ["seed=3"])
        copied.load_sweep_config.__self__.enabled = False  # Hydra's code, not this composer again
        assert _outcome(copied.load_sweep_config, master, ["seed=3"]) == _outcome(hydra_load, master, ["seed=3"])


def test_driver_prefetches_the_report_modules_in_the_background(monkeypatch):
    from hexsweep.sweep.apps import PLAIN
    from hexsweep.sweep.driver import prefetch
    from hexsweep.sweep.train_app import TRAIN_APP

    # hexsweep.train's driver imports its report's libraries while it waits for the job server
    assert {"hexsweep.report.files", "matplotlib.pyplot"} <= set(TRAIN_APP.driver_later) and not PLAIN.driver_later
    assert prefetch(()) is None and prefetch(("json",)) is None  # nothing to do: no thread
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    thread = prefetch(("colorsys", "hexsweep_no_such_module", "json"))
    thread.join(60)
    assert not thread.is_alive() and "colorsys" in sys.modules  # a module that fails stops it quietly


def test_sweep_driver_modules_load_no_torch():
    # what a sweep's driver imports (the app, the launcher, its driver, Hydra's end-of-sweep callback
    # with MLflow's tracking): torch is the jobs', loaded once by the job server (sweep/warm.py)
    code = ("import sys, hexsweep.train, hydra_plugins.hexsweep_launcher.launcher, hexsweep.sweep.launcher, "
            "hexsweep.sweep.driver, hexsweep.sweep.callbacks, hexsweep.sweep.compose; "
            f"print(sorted(m for m in {('torch', *HEAVY)!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_job_inherits_the_job_servers_heap_frozen(hydra_sweep_runner, tmp_path):
    """The job server freezes what it imported before it forks (sweep/frozen.py): a job's garbage
    collections never walk, and so never copy, the inherited heap."""
    import gc

    def task(cfg):
        return gc.get_freeze_count()

    with hydra_sweep_runner(calling_file=None, calling_module="hydra.test_utils.a_module", task_function=task,
                            config_path="configs", config_name="compose.yaml",
                            overrides=["hydra/launcher=hexsweep", "hydra.launcher.progress=off", "+a=1,2"],
                            temp_dir=str(tmp_path)) as sweep:
        frozen = [r.return_value for r in sweep.returns[0]]
    # the server imported at least Hydra and its plugins: tens of thousands of objects
    assert all(n > 10_000 for n in frozen), frozen
