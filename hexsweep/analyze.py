"""Re-aggregate sweeps: ``python -m hexsweep.analyze <sweep dir> [<sweep dir> ...] [--out DIR]``.

``python -m hexsweep.analyze --diff <job A> <job B>``: how two jobs differ: config keys, code
(git commit, uncommitted diff), packages and versions (from their ``env.json``).

One folder: the table, summary and report are (re)written into it. Several folders (other
sweeps, other machines): one merged table and report, with ``sweep`` and ``host``
columns, into ``--out`` (default ``outputs/analysis/<date>_<time>``).

Prints the jobs, then per configuration (seeds pooled, across all the sweeps given) the mean
with its 95% interval, the difference from the best with a verdict, how many seeds would
probably separate the best from the runner-up and the command that runs them; and each sweep's
tournament (``python -m hexsweep.tournament``) when it has one.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hexsweep import provenance
from hexsweep.cli import fail, skip_exit_collection
from hexsweep.jobfolder import read_result
from hexsweep.report.aggregate import aggregate
from hexsweep.report.end import failure_line
from hexsweep.report.files import interval_texts, ranked, tournament_text, write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.analyze", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweeps", nargs="+", type=Path, help="sweep folders (outputs/multirun/...)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (several sweeps)")
    parser.add_argument("--max-curves", type=int, default=200, help="jobs drawn in curves.png")
    parser.add_argument("--diff", action="store_true", help="compare two job folders: config, code, packages")
    args = parser.parse_args(argv)
    skip_exit_collection()
    if args.diff:
        if len(args.sweeps) != 2 or not all((j / "result.json").exists() or (j / "env.json").exists()
                                            for j in args.sweeps):
            fail("--diff takes two job folders (each with result.json or env.json), e.g. "
                 "outputs/multirun/<date>/<sweep>/0 outputs/multirun/<date>/<sweep>/1")
        print("\n".join(job_diff(*args.sweeps)))
        return
    for s in args.sweeps:
        if not s.is_dir():
            fail(f"{s} is not a folder: give sweep folders such as outputs/multirun/<date>/<time>")
        if (s / "result.json").is_file():  # a job folder itself, not the sweep that holds it
            fail(f"{s} is a job folder: give its sweep folder ({s.resolve().parent}), or two job folders "
                 "with --diff")
    sweeps = [s.resolve() for s in args.sweeps]
    df = aggregate(sweeps)
    if df.empty:
        fail(f"no job folders in {', '.join(map(str, sweeps))}: a job folder holds result.json or .hydra/")
    out = args.out or (sweeps[0] if len(sweeps) == 1 else
                       Path("outputs/analysis") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S"))
    summary = write_report(df, out.resolve(), sweeps, args.max_curves)
    show, _ = ranked(df)
    cols = [c for c in ("job_num", "host", "label", "status", "objective", "best_epoch", "epochs_run")
            if c in show and (c != "host" or show["host"].nunique() > 1)]
    if len(sweeps) > 1:
        cols.insert(0, "sweep")
        show["sweep"] = show["sweep"].map(lambda p: Path(p).name)
    with pd.option_context("display.max_rows", 50, "display.width", 200, "display.max_colwidth", 60):
        print(show[cols].to_string(index=False))
    if len(summary["groups"]) > 1 or any(g["n"] > 1 for g in summary["groups"].values()):
        print("\n" + format_groups(summary))
    for t in summary.get("tournaments") or []:
        print("\n" + tournament_text(t))
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["by_status"].items()))
    print(f"\n{summary['total']} jobs: {counts}")
    if line := failure_line(summary):
        print(line)
    print(f"report: {out / 'report.md'}  table: {out / 'results.csv'}")


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def job_diff(a: Path, b: Path) -> list[str]:
    """Lines saying how job ``b`` differs from job ``a``: config keys, code, packages, versions."""
    lines = [f"--- {a}", f"+++ {b}"]
    from hexsweep.config import flat_config  # the schema's module imports Hydra: --diff only

    ra, rb = read_result(a), read_result(b)
    ca, cb = flat_config((ra and ra.config) or {}), flat_config((rb and rb.config) or {})
    skip = ("optuna.trial_number",)
    keys = [k for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k) and k not in skip]
    lines.append(f"config: {len(keys)} key(s) differ" if keys else "config: the same")
    lines += [f"  {k}: {ca.get(k, '(absent)')!r} -> {cb.get(k, '(absent)')!r}" for k in keys]
    ea, eb = _json(a / provenance.ENV_FILE), _json(b / provenance.ENV_FILE)
    if not ea or not eb:
        lines.append("code and packages: unknown (no env.json in " + " and ".join(
            str(j) for j, e in ((a, ea), (b, eb)) if not e) + ")")
        return lines
    ga, gb = ea.get("git") or {}, eb.get("git") or {}
    if (ga.get("commit"), ga.get("diff_sha256")) == (gb.get("commit"), gb.get("diff_sha256")):
        lines.append(f"code: the same (commit {ga.get('commit')}{', dirty' if ga.get('dirty') else ''})")
    else:
        lines.append(f"code: commit {ga.get('commit')} (diff {ga.get('diff_sha256')}) -> "
                     f"{gb.get('commit')} (diff {gb.get('diff_sha256')}); the uncommitted diffs: "
                     f"{a / provenance.DIFF_FILE}, {b / provenance.DIFF_FILE}")
    va, vb = ea.get("versions") or {}, eb.get("versions") or {}
    changed = [f"{k} {va.get(k)} -> {vb.get(k)}" for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)]
    lines.append("versions: " + ("; ".join(changed) if changed else "the same"))
    if ea.get("packages_sha256") == eb.get("packages_sha256"):
        lines.append("packages: the same")
    else:
        pa, pb = set(provenance.package_list(a)), set(provenance.package_list(b))
        lines.append(f"packages: {len(pa - pb)} only in A, {len(pb - pa)} only in B")
        lines += [f"  - {x}" for x in sorted(pa - pb)] + [f"  + {x}" for x in sorted(pb - pa)]
    if ea.get("host") != eb.get("host") or ea.get("device_name") != eb.get("device_name"):
        lines.append(f"machine: {ea.get('host')} ({ea.get('device_name')}) -> {eb.get('host')} "
                     f"({eb.get('device_name')})")
    return lines


def format_groups(summary: dict) -> str:
    """Per configuration: n, mean [95% CI], difference from the best [95% CI], verdict."""
    rows = []
    for name, g in list(summary["groups"].items())[:30]:
        ci, diff = interval_texts(g)
        rows.append({"configuration": name, "n": g["n"], "mean": f"{g['mean']:.4f}", "95% CI": ci,
                     "vs best": diff, "verdict": g["verdict"],
                     "seeds needed": "" if g["seeds_needed"] is None else g["seeds_needed"]})
    with pd.option_context("display.width", 250, "display.max_colwidth", 60):
        lines = [pd.DataFrame(rows).to_string(index=False)]
    if len(summary["groups"]) > 30:
        lines.append(f"... {len(summary['groups']) - 30} more configurations in summary.json")
    c = summary.get("comparison")
    if c and c["verdict"].startswith("not distinguishable"):
        if c["note"]:
            lines.append(c["note"])
        elif c["seeds_needed"]:
            lines.append(f"about {c['seeds_needed']} seeds per configuration would probably separate "
                         f"{c['best']} from {c['runner_up']}")
        if c["command"]:
            lines.append(f"run them: {c['command']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
