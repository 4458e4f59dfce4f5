"""Imports run one way: entry points -> sweep/search -> job -> library -> base (docs/design.md).

Reads every module's imports (top-level and inside functions) with ``ast``; a module that
imports from a layer above its own fails the test, naming both.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENTRY, SWEEP, JOB, LIBRARY, BASE = 4, 3, 2, 1, 0
LAYERS = {
    "hexsweep.train": ENTRY, "hexsweep.analyze": ENTRY, "hexsweep.study": ENTRY, "hexsweep.monitor": ENTRY,
    "hexsweep.probe": ENTRY, "hexsweep.tournament": ENTRY, "hexsweep.report.draw": ENTRY,
    "hydra_plugins.hexsweep_launcher": ENTRY, "hydra_plugins.hexsweep_optuna": ENTRY,
    "hydra_plugins.hexsweep_race": ENTRY,
    "hexsweep.sweep": SWEEP, "hexsweep.search": SWEEP, "hexsweep.race": SWEEP, "hexsweep.report": SWEEP,
    "hexsweep.lifecycle": JOB,
    "hexsweep.config": LIBRARY, "hexsweep.data": LIBRARY, "hexsweep.hex": LIBRARY, "hexsweep.model": LIBRARY,
    "hexsweep.trainer": LIBRARY, "hexsweep.evaluate": LIBRARY, "hexsweep.faults": LIBRARY,
    "hexsweep.resources": LIBRARY, "hexsweep.cli": LIBRARY, "hexsweep.provenance": LIBRARY,
    "hexsweep.calibration": LIBRARY,
    "hexsweep.arena": LIBRARY, "hexsweep.tracking": LIBRARY,
    "hexsweep.jobfolder": BASE, "hexsweep.errors": BASE, "hexsweep.atomic": BASE, "hexsweep.naming": BASE,
    "hexsweep.heartbeat": BASE,
    "hexsweep.devices": BASE,
    "hexsweep.ranges": BASE, "hexsweep.pruners": BASE, "hexsweep.secrets": BASE, "hexsweep": BASE,
}
NAMES = {ENTRY: "entry point", SWEEP: "sweep/search", JOB: "job", LIBRARY: "library", BASE: "base"}


def layer(module: str) -> int | None:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if (name := ".".join(parts[:i])) in LAYERS:
            return LAYERS[name]
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_every_module_has_a_layer():
    missing = [module_name(p) for p in sorted((ROOT / "hexsweep").rglob("*.py")) if layer(module_name(p)) is None]
    assert not missing


def test_imports_run_one_way():
    wrong = []
    for path in [*sorted((ROOT / "hexsweep").rglob("*.py")), *sorted((ROOT / "hydra_plugins").rglob("*.py"))]:
        me = module_name(path)
        mine = layer(me)
        for imported in imports(path):
            theirs = layer(imported)
            if theirs is not None and mine is not None and theirs > mine:
                wrong.append(f"{me} ({NAMES[mine]}) imports {imported} ({NAMES[theirs]})")
    assert not wrong, "\n".join(wrong)
