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


def loaded(module: str, *args: str, cwd=None) -> tuple[int, set[str], int]:
    out = subprocess.run([sys.executable, "-c", RUN.format(module=module, args=list(args))], capture_output=True,
                         text=True, timeout=300, cwd=cwd)
    line = next(x for x in out.stdout.splitlines() if x.startswith("MODULES "))
    data = json.loads(line[len("MODULES "):])
    return data["code"], set(data["modules"]), data["frozen"]


def heavy(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if n in modules)


def test_train_help_loads_no_report_search_or_logger_library(tmp_path):
    code, modules, _ = loaded("hexsweep.train", "--help", cwd=tmp_path)
    assert code in (0, None)
    assert "torch" in modules  # the app itself is torch: the baseline --help is measured against
    assert heavy(modules, HEAVY) == []


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
    code, modules, frozen = loaded("hexsweep.analyze", str(sweep), cwd=tmp_path)
    assert code in (0, None)
    # the report was written, with its statistics and plots: the libraries it needs did load
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["groups"]["lr=0.2"]["ci_low"] is not None and (sweep / "by_experiment.png").stat().st_size > 0
    assert {"pandas", "matplotlib", "scipy.special"} <= modules
    assert heavy(modules, ("torch", "scipy.stats", "scipy.optimize", "sqlalchemy", "mlflow", "tensorboard",
                           "optuna", "hydra")) == []
    # its exit skips the garbage collections over a heap about to be freed anyway (hexsweep/cli.py)
    assert frozen > 100_000
