"""The sweep report: results.csv/.parquet, summary.json, report.md/.html and PNG plots."""

from __future__ import annotations

import contextlib
import fcntl
import html
import json
import math
import os
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hexsweep.atomic import atomic_write, atomic_write_json, atomic_write_text
from hexsweep.race.output import RACE_JSON, race_section
from hexsweep.report.aggregate import OK, load_best_rows, load_curves, provenance_warning
from hexsweep.report.stats import CONFIDENCE, MAX_SEEDS, group_stats, more_seeds_command

TOURNAMENT_DIR = "tournament"  # <sweep folder>/tournament/, written by python -m hexsweep.tournament
BEST_SHOWN = 4  # jobs compared in the calibration and policy figures
MAX_GROUPS_SHOWN = 40  # configurations in by_experiment.png (all are in summary.json)


def varying_overrides(df: pd.DataFrame) -> list[str]:
    """The override keys whose value differs between jobs (constant ones say nothing in a label)."""
    cols = [c for c in df.columns if c.startswith("ov.")]
    return [c for c in cols if df[c].astype(str).nunique(dropna=False) > 1]


def _short(value: Any) -> str:
    """Sampled floats such as 0.0013704648392849023 read as 0.00137 in labels."""
    text = str(value)
    if "." in text and len(text) > 8:
        try:
            return f"{float(text):.3g}"
        except ValueError:
            pass
    return text


def add_group(df: pd.DataFrame) -> pd.DataFrame:
    """``label``: the job's varying overrides; ``group``: the label without the seed, so that
    repeated seeds of one configuration pool into one group."""
    df = df.copy()
    if df.empty:
        df["label"], df["group"] = [], []
        return df
    varying = varying_overrides(df)

    def labels(columns: list[str]) -> pd.Series:
        parts = [(c[3:] + "=" + df[c].map(_short)).where(df[c].notna(), "") for c in columns]
        if not parts:
            return pd.Series([""] * len(df), index=df.index)
        joined = parts[0].str.cat(parts[1:], sep=" ") if len(parts) > 1 else parts[0]
        return joined.str.split().str.join(" ")

    fallback = df["experiment"].where(df["experiment"].notna(), "job " + df["job_num"].astype(str)) \
        if "experiment" in df else "job " + df["job_num"].astype(str)
    label, group = labels(varying), labels([c for c in varying if c != "ov.seed"])
    df["label"] = label.where(label != "", fallback)
    df["group"] = group.where(group != "", fallback)
    return df


def ranked(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The table with its labels and groups, best job first by the objective's direction (jobs
    without an objective last), and that direction: the one ranking the report, ``analyze`` and
    the tournament use."""
    df = add_group(df)
    direction = direction_of(df)
    if not df.empty and "objective" in df:
        df = df.sort_values("objective", ascending=direction == "minimize", na_position="last", kind="stable")
    return df, direction


def direction_of(df: pd.DataFrame) -> str:
    """The jobs' own objective.direction; for results written before it was recorded, from the name."""
    if "objective_direction" in df and df["objective_direction"].notna().any():
        return str(df["objective_direction"].dropna().mode().iloc[0])
    return "maximize" if "objective_metric" in df and any(
        str(m).endswith(("_acc",)) or m == "strength" for m in df["objective_metric"].dropna().unique()) \
        else "minimize"


def summarise(df: pd.DataFrame, sweep_dirs: list[Path], direction: str, table: pd.DataFrame) -> dict[str, Any]:
    """The summary; ``table`` is ``group_stats`` of the finished jobs."""
    counts = df["status"].value_counts().to_dict() if not df.empty else {}
    ok = df[df["status"].isin(OK)] if not df.empty else df
    bad = df[~df["status"].isin(OK)] if not df.empty else df
    best = None
    if not ok.empty and ok["objective"].notna().any():
        idx = ok["objective"].idxmax() if direction == "maximize" else ok["objective"].idxmin()
        b = ok.loc[idx]
        best = {"job_num": _plain(b.get("job_num")), "experiment": b.get("experiment"),
                "overrides": b.get("overrides"), "label": b.get("label"), "objective": _plain(b["objective"]),
                "job_dir": b["job_dir"], "sweep": b["sweep"]}
    groups = {name: {"n": int(r["n"]), "mean": _plain(r["mean"]),
                     "std": _plain(r["std"]) if r["n"] > 1 else None, "min": _plain(r["min"]),
                     "max": _plain(r["max"]), "ci_low": _plain(r["ci_low"]), "ci_high": _plain(r["ci_high"]),
                     "diff": _plain(r["diff"]), "diff_low": _plain(r["diff_low"]),
                     "diff_high": _plain(r["diff_high"]), "verdict": r["verdict"],
                     "seeds_needed": None if pd.isna(r["seeds_needed"]) else int(r["seeds_needed"])}
              for name, r in table.iterrows()}
    return {
        "sweeps": [str(s) for s in sweep_dirs],
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "total": len(df),
        "by_status": {k: int(v) for k, v in counts.items()},
        "failed": [{"job_num": _plain(r.get("job_num")), "experiment": r.get("experiment"),
                    "overrides": r.get("overrides"), "label": r.get("label"), "status": r.get("status"),
                    "error": r.get("error"),
                    "job_dir": r.get("job_dir")} for _, r in bad.iterrows()],
        "objective_metric": _first(df, "objective_metric"),
        "direction": direction,
        "best": best,
        "groups": groups,
        "confidence": CONFIDENCE,
        "comparison": compare_best(table, ok),
    }


def compare_best(table: pd.DataFrame, ok: pd.DataFrame) -> dict[str, Any] | None:
    """The best configuration against the runner-up: are they told apart, and if not, how many
    seeds would probably do it and the command that runs them into the same sweep folder."""
    if len(table) < 2:
        return None
    best, runner = table.index[0], table.index[1]
    r = table.iloc[1]
    out: dict[str, Any] = {"best": best, "runner_up": runner, "verdict": r["verdict"],
                           "diff": _plain(r["diff"]), "diff_low": _plain(r["diff_low"]),
                           "diff_high": _plain(r["diff_high"]), "seeds_needed": None, "command": None, "note": None}
    if not r["verdict"].startswith("not distinguishable"):
        return out
    n = int(max(table["n"].iloc[0], r["n"]))
    need = None if pd.isna(r["seeds_needed"]) else int(r["seeds_needed"])
    if need is None:
        if (table["n"] < 2).all():
            need = 3
            out["note"] = ("one seed per configuration: no spread to estimate from; 3 seeds per "
                           "configuration give a first estimate")
        elif r["diff"] == 0:
            out["note"] = "the same mean: no number of seeds would separate them"
            return out
        else:
            out["note"] = (f"the difference is small next to the spread between seeds: more than {MAX_SEEDS} "
                           "seeds per configuration would be needed")
            return out
    need = max(need, n + 1)
    out["seeds_needed"] = need
    rows = ok[ok["group"].isin([best, runner])]
    sweep = Path(str(rows["sweep"].iloc[0])) if "sweep" in rows and len(rows) else None
    if sweep is not None and (sweep / RACE_JSON).exists():
        out["note"] = (f"a race ran these jobs ({RACE_JSON}): its own verdict is below; continue it with a larger "
                       "hydra.sweeper.max_seeds and resume=true, in the same folder")
    elif sweep is not None:
        out["command"] = more_seeds_command(sweep, need, ok[ok["sweep"] == str(sweep)])
    return out


def _first(df: pd.DataFrame, col: str) -> Any:
    if col not in df:
        return None
    values = df[col].dropna()
    return values.iloc[0] if len(values) else None


def _plain(x: Any) -> Any:
    if x is None:
        return None
    if hasattr(x, "item"):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def save_png(fig: Any, out: Path) -> bool:
    """Lay out, write atomically, free the figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    # zlib level 1, not Pillow's default 6: the same pixels, a larger file, and ~0.1 s less per figure
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110, pil_kwargs={"compress_level": 1}),
                 mode="wb")
    plt.close(fig)
    return True


def plot_curves(df: pd.DataFrame, curves: dict[str, list[dict]], metric: str, out: Path) -> bool:
    import matplotlib.pyplot as plt

    if not curves:
        return False
    labels = df.set_index("job_dir")
    drawn = {job_dir: pts for job_dir, rows in curves.items()
             if (pts := [(r["epoch"], r.get(metric)) for r in rows if r.get(metric) is not None])}
    if not drawn:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for job_dir, pts in drawn.items():
        row = labels.loc[job_dir]
        ax.plot(*zip(*pts, strict=True), marker="o", ms=3,
                label=textwrap.shorten(f"{row.get('job_num')}: {row.get('label')}", 60))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} of every job")
    if len(drawn) <= 20:
        ax.legend(fontsize=6, loc="best", framealpha=0.6)
    ax.grid(alpha=0.3)
    return save_png(fig, out)


def plot_groups(ok: pd.DataFrame, metric: str, out: Path, direction: str, table: pd.DataFrame) -> bool:
    """Each configuration's mean with its 95% t-interval across seeds, its jobs as dots, best on top;
    ``table`` is ``group_stats(ok, direction)``."""
    import matplotlib.pyplot as plt

    if ok.empty or ok["objective"].notna().sum() == 0:
        return False
    shown = table.head(MAX_GROUPS_SHOWN).iloc[::-1]  # best at the top
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.5 * len(shown)))
    best = table.iloc[0]
    if pd.notna(best["ci_low"]):
        ax.axvspan(best["ci_low"], best["ci_high"], color="#f2c14e", alpha=0.25, lw=0,
                   label=f"best's {CONFIDENCE:.0%} CI")
    ax.axvline(best["mean"], color="#c9972c", lw=1, ls="--")
    for i, (group, r) in enumerate(shown.iterrows()):
        pts = ok.loc[ok["group"] == group, "objective"].dropna()
        ax.scatter(pts, [i] * len(pts), color="#555", s=12, zorder=3, alpha=0.8)
        colour = {"best": "#c9972c", "worse": "#b5485d", "better": "#3f8f5b"}.get(r["verdict"], "#3a6ea5")
        if pd.notna(r["ci_low"]):
            ax.errorbar(r["mean"], i, xerr=[[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]], fmt="o",
                        color=colour, ms=7, capsize=4, lw=2, zorder=4)
        else:
            ax.plot(r["mean"], i, "o", mfc="white", color=colour, ms=7, zorder=4)
    ax.set_yticks(range(len(shown)), [f"{textwrap.shorten(g, 50)} (n={int(r['n'])})\n{_verdict_short(r['verdict'])}"
                                      for g, r in shown.iterrows()], fontsize=8)
    ax.set_xlabel(f"{metric}: mean and {CONFIDENCE:.0%} t-interval across seeds; dots: jobs; open circle: one seed",
                  fontsize=8)
    more = f" (best {MAX_GROUPS_SHOWN} of {len(table)})" if len(table) > MAX_GROUPS_SHOWN else ""
    ax.set_title(f"objective per configuration{more}; {'lower' if direction == 'minimize' else 'higher'} is better",
                 fontsize=10)
    if pd.notna(best["ci_low"]):
        ax.legend(fontsize=7, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, out)


def _verdict_short(v: str) -> str:
    """The verdict against the best, for a plot label."""
    if v == "best":
        return "best"
    return "not distinguishable from the best" if v.startswith("not") else f"{v} than the best"


def plot_calibration(best_rows: dict[str, dict], labels: dict[str, str], out: Path) -> bool:
    """Reliability curves (predicted against actual win probability) of the best jobs, and their
    value error by game stage."""
    import matplotlib.pyplot as plt
    import numpy as np

    curves = {job: r["val_calibration"] for job, r in best_rows.items() if isinstance(r.get("val_calibration"), dict)}
    if not curves:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [1.1, 1]})
    ax.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="perfectly calibrated")
    for job, c in curves.items():
        pts = [(p, a, n) for p, a, n in zip(c["predicted"], c["actual"], c["count"], strict=True) if p is not None]
        if not pts:
            continue
        p, a, n = map(np.array, zip(*pts, strict=True))
        line, = ax.plot(p, a, marker="o", ms=3, lw=1.5,
                        label=textwrap.shorten(f"{labels.get(job, job)} (ECE {c.get('ece', math.nan):.3f})", 60))
        ax.scatter(p, a, s=20 + 200 * n / n.sum(), color=line.get_color(), alpha=0.35)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted win probability of the mover, (v + 1) / 2")
    ax.set_ylabel("observed win rate (validation positions)")
    ax.set_title("value-head reliability (marker size: positions in the bin)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    stages = ("early", "middle", "late")
    width = 0.8 / len(curves)
    for k, job in enumerate(curves):
        row = best_rows[job]
        mse = [row.get(f"val_value_loss_{s}") for s in stages]
        ax2.bar(np.arange(3) + (k - (len(curves) - 1) / 2) * width, [m if m is not None else np.nan for m in mse],
                width, label=textwrap.shorten(labels.get(job, job), 60))
    bounds = next(iter(curves.values())).get("stages") or {}
    ax2.set_xticks(range(3), [f"{s}\n{bounds[s][0]:.0%}-{bounds[s][1]:.0%} filled" if s in bounds else s
                              for s in stages], fontsize=8)
    ax2.axhline(1.0, color="#999", ls=":", lw=1)
    ax2.set_ylabel("value MSE (1.0: always predicting 0)")
    ax2.set_title("value error by game stage", fontsize=10)
    ax2.legend(fontsize=7, loc="upper center", ncol=1)
    ax2.set_ylim(0, 1.05 + 0.07 * len(curves))
    ax2.grid(axis="y", alpha=0.3)
    return save_png(fig, out)


def plot_policy(curves: dict[str, list[dict]], labels: dict[str, str], out: Path) -> bool:
    """Top-1/3/5 policy accuracy and policy entropy per epoch, for the best jobs."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    drawn = {job: rows for job, rows in curves.items() if any("val_policy_top3_acc" in r for r in rows)}
    if not drawn:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"val_policy_acc": "-", "val_policy_top3_acc": "--", "val_policy_top5_acc": ":"}
    for job, rows in drawn.items():
        colour = None
        for key, ls in styles.items():
            pts = [(r["epoch"], r[key]) for r in rows if r.get(key) is not None]
            if pts:
                line, = ax.plot(*zip(*pts, strict=True), ls=ls, marker="o", ms=3, color=colour,
                                label=textwrap.shorten(labels.get(job, job), 60) if colour is None else None)
                colour = line.get_color()
        pts = [(r["epoch"], r["val_policy_entropy"]) for r in rows if r.get("val_policy_entropy") is not None]
        if pts:
            ax2.plot(*zip(*pts, strict=True), marker="o", ms=3, color=colour)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation policy accuracy")
    ax.set_title("policy top-1 (solid), top-3 (dashed), top-5 (dotted)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("policy entropy (nats, legal cells)")
    ax2.set_title("policy entropy: lower is more decided", fontsize=10)
    ax2.grid(alpha=0.3)
    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_png(fig, out)


def plot_elo(entries: list[dict[str, Any]], first_move: dict[str, Any], games: int, out: Path) -> bool:
    """Tournament Elo with 95% intervals, the random player at 0 (written by hexsweep.tournament)."""
    import matplotlib.pyplot as plt

    if not entries:
        return False
    shown = list(reversed(entries))  # best at the top
    fig, ax = plt.subplots(figsize=(8.5, 1.5 + 0.5 * len(shown)))
    for i, e in enumerate(shown):
        colour = "#3a6ea5" if e["kind"] == "job" else "#888"
        ax.errorbar(e["elo"], i, xerr=[[e["elo"] - e["elo_low"]], [e["elo_high"] - e["elo"]]], fmt="o",
                    color=colour, ms=7, capsize=4, lw=2)
        ax.annotate(f"{e['elo']:.0f}", (e["elo"], i), textcoords="offset points", xytext=(0, 7), ha="center",
                    fontsize=7)
    ax.axvline(0, color="#999", lw=1, ls=":")
    ax.set_yticks(range(len(shown)), [textwrap.shorten(f"{e['label']} ({e['score']:.0%} of {e['games']})", 60)
                                      for e in shown], fontsize=8)
    ax.set_xlabel(f"Elo (maximum likelihood, {CONFIDENCE:.0%} interval; random = 0)", fontsize=9)
    ax.set_title(f"tournament, {games} games per pairing\nfirst-move advantage {first_move['elo']:+.0f} "
                 f"[{first_move['low']:+.0f}, {first_move['high']:+.0f}] Elo", fontsize=10)
    ax.margins(y=0.15)
    ax.grid(axis="x", alpha=0.3)
    return save_png(fig, out)


def plot_tradeoff(ok: pd.DataFrame, out: Path) -> bool:
    import matplotlib.pyplot as plt

    data = ok.dropna(subset=["best_val_policy_acc", "best_val_value_loss"]) if not ok.empty else ok
    if data.empty:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for exp, g in data.groupby(data["experiment"].fillna("?")):
        ax.scatter(g["best_val_value_loss"], g["best_val_policy_acc"], label=exp, s=30)
    ax.set_xlabel("validation value loss (best epoch)")
    ax.set_ylabel("validation policy top-1 accuracy (best epoch)")
    ax.set_title("policy accuracy vs value loss")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_png(fig, out)


TABLE_COLUMNS = ["job_num", "experiment", "label", "status", "objective", "best_epoch", "epochs_run",
                 "best_val_policy_acc", "best_val_value_loss", "wall_time_s", "peak_rss_mb", "error"]


MAX_TABLE_ROWS = 200  # the report lists the best jobs; results.csv has them all


def _fmt(df: pd.DataFrame) -> pd.DataFrame:
    df = df.head(MAX_TABLE_ROWS)
    cols = [c for c in TABLE_COLUMNS if c in df]
    if "host" in df and df["host"].nunique() > 1:
        cols.insert(1, "host")
    out = df[cols].copy()
    for c in out.columns:
        if out[c].dtype.kind == "f":
            out[c] = out[c].map(lambda v: "" if pd.isna(v) else f"{v:.4g}")
    return out.fillna("")


REPORT_LOCK = ".report.lock"


REPORT_LOCK_WAIT_S = 30.0  # a holder this long is stuck (a stopped or hung drawing)


class ReportLockHeld(OSError):
    """Another process held the folder's report lock for ``REPORT_LOCK_WAIT_S``."""


@contextlib.contextmanager
def report_lock(folder: Path, give_up: bool = False) -> Iterator[None]:
    """One writer of a folder's report at a time: a report (a sweep's end, ``analyze``, the
    tournament's) and a background drawing publishing its plots (report/drawing.py). flock: the
    kernel releases it when its holder dies. FileNotFoundError when the folder is gone.

    A holder that never lets go (a drawing stopped with SIGSTOP, or hung on a storage) must not
    hang the next report: after ``REPORT_LOCK_WAIT_S`` a report goes ahead without the lock,
    saying so, and a drawing (``give_up``) raises ReportLockHeld instead (its failure is recorded)."""
    with open(folder / REPORT_LOCK, "a") as f:
        deadline = time.monotonic() + REPORT_LOCK_WAIT_S
        while not (locked := _try_flock(f.fileno())) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not locked:
            held = f"{folder / REPORT_LOCK} held by another process for {REPORT_LOCK_WAIT_S:g} s"
            if give_up:
                raise ReportLockHeld(held)
            print(f"[hexsweep] warning: {held} (a stopped plot drawing?): writing the report without it",
                  file=sys.stderr, flush=True)
        try:
            yield
        finally:
            if locked:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def write_report(df: pd.DataFrame, out_dir: Path, sweep_dirs: list[Path], max_curves: int = 200,
                 plots: str = "wait") -> dict[str, Any]:
    """Write every artefact into ``out_dir``; returns the summary. ``plots``: ``wait`` draws the
    plots here; ``background`` and ``off`` leave them out of report.md, saying so (the caller
    starts their drawing, report/draw.py); the table, summary and report come first either way."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with report_lock(out_dir):
        return _write_report(df, out_dir, sweep_dirs, max_curves, plots)


def _write_report(df: pd.DataFrame, out_dir: Path, sweep_dirs: list[Path], max_curves: int,
                  plots: str) -> dict[str, Any]:
    df, direction = ranked(df)
    atomic_write(out_dir / "results.csv", lambda f: df.to_csv(f, index=False))
    atomic_write(out_dir / "results.parquet", lambda f: df.to_parquet(f, index=False), mode="wb")
    ok = df[df["status"].isin(OK)] if not df.empty else df
    table = group_stats(ok, direction)
    summary = summarise(df, sweep_dirs, direction, table)  # the table, once: the summary and the plot share it
    summary["out_dir"] = str(out_dir)
    summary["provenance_warning"] = provenance_warning(df)
    summary["tournaments"] = load_tournaments(sweep_dirs)
    summary["detail"] = detail_rows(best_jobs(ok))
    # which report this is: a background drawing of its plots rewrites report.md only while no newer
    # report (a resumed sweep's, analyze's) has replaced this one (report/draw.py)
    summary["report_id"] = uuid.uuid4().hex
    atomic_write_json(out_dir / "summary.json", summary)
    made = draw_plots(df, summary, max_curves, table) if plots == "wait" else {}
    write_pages(df, summary, made, max_curves, plot_note(plots, out_dir))
    return summary


def plot_note(plots: str, folder: Path, error: str | None = None) -> str | None:
    """What report.md says where its plots would be: None when they are drawn (``wait``)."""
    redraw = f"Draw them with `python -m hexsweep.analyze {folder}`."
    if error is not None:
        return f"Could not be drawn: {error} (the traceback: {folder / 'plots.log'}). {redraw}"
    return {"wait": None,
            "background": f"Being drawn in the background; this page is written again with them when they are "
                          f"done ({folder / 'plots.json'} says how it went). {redraw}",
            "off": f"Not drawn (`hydra.callbacks.sweep_report.plots=off`). {redraw}"}[plots]


def draw_plots(df: pd.DataFrame, summary: dict[str, Any], max_curves: int,
               table: pd.DataFrame | None = None, into: Path | None = None) -> dict[str, bool]:
    """Draw the report's PNGs from the ranked table ``df`` into ``into`` (default: the summary's
    folder); which were drawn (a plot with nothing to show is not)."""
    out_dir = into or out_dir_of(summary)
    ok = df[df["status"].isin(OK)] if not df.empty else df
    if table is None:
        table = group_stats(ok, summary["direction"])
    metric = summary["objective_metric"] or "val_objective"
    top = best_jobs(ok)
    labels = {row.job_dir: f"{row.job_num}: {row.label}" for row in top.itertuples()}
    return {
        "curves.png": plot_curves(df, load_curves(best_jobs(ok, max_curves)), curve_metric_of(summary),
                                  out_dir / "curves.png"),
        "by_experiment.png": plot_groups(ok, metric, out_dir / "by_experiment.png", summary["direction"], table),
        "accuracy_vs_value_loss.png": plot_tradeoff(ok, out_dir / "accuracy_vs_value_loss.png"),
        "calibration.png": plot_calibration(load_best_rows(list(top["job_dir"])) if not top.empty else {}, labels,
                                            out_dir / "calibration.png"),
        "policy.png": plot_policy(load_curves(top), labels, out_dir / "policy.png"),
    }


def curve_metric_of(summary: dict[str, Any]) -> str:
    metric = summary["objective_metric"] or "val_objective"
    return metric if str(metric).startswith("val_") else "val_objective"


def write_pages(df: pd.DataFrame, summary: dict[str, Any], plots: dict[str, bool], max_curves: int,
                note: str | None = None) -> None:
    """report.md and report.html, with the plots drawn, or ``note`` saying why there are none."""
    out_dir = out_dir_of(summary)
    atomic_write_text(out_dir / "report.md", markdown(df, summary, plots, curve_metric_of(summary), max_curves,
                                                      note))
    atomic_write_text(out_dir / "report.html", to_html(df, summary, plots, note))


def best_jobs(ok: pd.DataFrame, k: int = BEST_SHOWN) -> pd.DataFrame:
    """The ``k`` best finished jobs (``ok`` is sorted best first)."""
    if ok.empty or "objective" not in ok:
        return ok.iloc[0:0] if not ok.empty else ok
    return ok.dropna(subset=["objective"]).head(k)


DETAIL = [("top-1", "best_val_policy_acc"), ("top-3", "best_val_policy_top3_acc"),
          ("top-5", "best_val_policy_top5_acc"), ("entropy", "best_val_policy_entropy"),
          ("value ECE", "best_val_value_ece"), ("MSE early", "best_val_value_loss_early"),
          ("MSE middle", "best_val_value_loss_middle"), ("MSE late", "best_val_value_loss_late"),
          ("acc early", "best_val_value_acc_early"), ("acc middle", "best_val_value_acc_middle"),
          ("acc late", "best_val_value_acc_late")]


def detail_rows(top: pd.DataFrame) -> list[dict[str, Any]]:
    """Policy detail and value calibration of the best jobs, at their best epoch."""
    if top.empty or "best_val_value_ece" not in top or top["best_val_value_ece"].isna().all():
        return []
    return [{"job_num": _plain(r.get("job_num")), "label": r.get("label"),
             **{name: _plain(r.get(col)) for name, col in DETAIL}} for _, r in top.iterrows()]


def load_tournaments(sweep_dirs: list[Path]) -> list[dict[str, Any]]:
    """Each sweep's tournament (``python -m hexsweep.tournament``), when it has one."""
    found = []
    for sweep in sweep_dirs:
        path = Path(sweep) / TOURNAMENT_DIR / "tournament.json"
        try:
            t = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(t, dict) and isinstance(t.get("elo"), list):
            t["folder"] = str(path.parent)
            found.append(t)
    return found


def _num(v: Any, fmt: str = ".4f") -> str:
    return "" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def interval_texts(g: dict[str, Any]) -> tuple[str, str]:
    """One configuration of ``summary["groups"]`` as report.md, report.html and ``analyze`` show
    it: its mean's interval, and its difference from the best with that interval."""
    ci = f"[{_num(g['ci_low'])}, {_num(g['ci_high'])}]" if g["ci_low"] is not None else ""
    diff = "" if g["verdict"] == "best" else f"{g['diff']:+.4f}" + (
        f" [{g['diff_low']:+.4f}, {g['diff_high']:+.4f}]" if g["diff_low"] is not None else "")
    return ci, diff


def comparison_lines(s: dict[str, Any]) -> list[str]:
    """The per-configuration table with intervals and verdicts, and what to do next."""
    if not s["groups"]:
        return []
    conf = f"{s.get('confidence', CONFIDENCE):.0%}"
    lines = ["## Which configuration is better? (seeds pooled)", "",
             f"Per configuration (the overrides other than `seed`): the {conf} t-interval of the mean "
             f"objective; against the best, the difference with its {conf} Welch interval.", "",
             f"| configuration | n | mean | std | {conf} CI | difference vs best [{conf} CI] | verdict "
             "| seeds that would probably separate it |", "|---|---|---|---|---|---|---|---|"]
    for name, g in list(s["groups"].items())[:MAX_TABLE_ROWS]:
        ci, diff = interval_texts(g)
        needed = g["seeds_needed"] if g["seeds_needed"] is not None else ""
        lines.append(f"| `{name}` | {g['n']} | {_num(g['mean'])} | {_num(g['std'])} | {ci} | {diff} "
                     f"| {g['verdict']} | {needed} |")
    lines.append("")
    c = s.get("comparison")
    if c:
        if not c["verdict"].startswith("not distinguishable"):
            lines += [f"**`{c['best']}` is {'better' if c['verdict'] == 'worse' else c['verdict']}** than the "
                      f"runner-up `{c['runner_up']}`: the difference {c['diff']:+.4f} "
                      f"[{c['diff_low']:+.4f}, {c['diff_high']:+.4f}] excludes 0.", ""]
        else:
            lines += [f"**The best, `{c['best']}`, is {c['verdict']} from `{c['runner_up']}`** "
                      f"(difference {c['diff']:+.4f}" + (f" [{c['diff_low']:+.4f}, {c['diff_high']:+.4f}]"
                                                        if c["diff_low"] is not None else "") + ")."]
            if c["note"]:
                lines.append(f"{c['note'][0].upper()}{c['note'][1:]}.")
            if c["seeds_needed"] and not c["note"]:
                lines.append(f"About **{c['seeds_needed']} seeds per configuration** would probably separate them "
                             f"(80% power at the 5% level, taking the observed difference and spread as real).")
                if c["seeds_needed"] > 30:
                    lines.append("That many runs for a difference this small next to the spread between seeds: "
                                 "for practical purposes the two are equally good.")
            if c["command"]:
                lines += ["Run them into this sweep folder (completed jobs are skipped):", "", "```bash",
                          c["command"], "```"]
            lines.append("")
    return lines


def detail_lines(s: dict[str, Any]) -> list[str]:
    rows = s.get("detail") or []
    if not rows:
        return []
    names = [name for name, _ in DETAIL]
    lines = ["## Value head and policy (best epoch of the best jobs)", "",
             "Policy top-k accuracy on positions with a move played; entropy in nats over the legal cells. Value "
             "ECE: expected calibration error of (v + 1) / 2 as the mover's win probability (10 bins); MSE and "
             "sign accuracy of the value by stage (stones on the board: early < 15% of the cells, middle < 35%, "
             "late the rest). Per epoch: `metrics.jsonl`; the curve: `best.val_calibration` in `result.json`.", "",
             "| job | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        lines.append(f"| {r['job_num']}: `{r['label']}` | " + " | ".join(_num(r[n], ".3f") for n in names) + " |")
    return lines + [""]


def tournament_lines(s: dict[str, Any], out_dir: Path) -> list[str]:
    lines = []
    for t in s.get("tournaments") or []:
        folder = Path(t["folder"])
        lines += [f"## Tournament ({Path(t.get('sweep', folder.parent)).name})", "",
                  f"{t['games_per_pairing']} games per pairing ({t['games_per_pairing'] // 2} balanced openings, each "
                  f"played twice with colours swapped), {t['games']} games in all on {t['board_size']}x"
                  f"{t['board_size']}; maximum-likelihood Elo (Bradley-Terry) with {CONFIDENCE:.0%} intervals from "
                  f"the observed information, random = 0.", "",
                  "| player | Elo | 95% CI | games | score |", "|---|---|---|---|---|"]
        for e in t["elo"]:
            lines.append(f"| `{e['label']}` | {e['elo']:.0f} | [{e['elo_low']:.0f}, {e['elo_high']:.0f}] "
                         f"| {e['games']} | {e['score']:.0%} |")
        fm = t["first_move"]
        lines += ["", f"First-move advantage: {fm['elo']:+.0f} Elo [{fm['low']:+.0f}, {fm['high']:+.0f}].", ""]
        lines += [f"> **Warning**: {w}" for w in t.get("warnings") or []]
        png = folder / "elo.png"
        if png.exists():
            lines += ["", f"![tournament Elo]({os.path.relpath(png, out_dir)})"]
        lines += ["", f"Games: `{os.path.relpath(folder / 'games.trmph', out_dir)}`; table: "
                      f"`{os.path.relpath(folder / 'results.csv', out_dir)}`.", ""]
    return lines


def tournament_text(t: dict[str, Any]) -> str:
    """The Elo table as text (also for ``python -m hexsweep.analyze``)."""
    lines = [f"tournament: {t['games']} games, {t['games_per_pairing']} per pairing, "
             f"{t['board_size']}x{t['board_size']}; Elo with 95% intervals, random = 0"]
    width = max(len(e["label"]) for e in t["elo"])
    for e in t["elo"]:
        lines.append(f"  {e['label']:<{width}}  {e['elo']:6.0f}  [{e['elo_low']:6.0f}, {e['elo_high']:6.0f}]  "
                     f"{e['wins']}/{e['games']} won")
    fm = t["first_move"]
    lines.append(f"  first-move advantage: {fm['elo']:+.0f} [{fm['low']:+.0f}, {fm['high']:+.0f}] Elo")
    lines += [f"warning: {w}" for w in t.get("warnings") or []]
    return "\n".join(lines)


def objective_text(s: dict[str, Any], quote: str = "", as_html: bool = False) -> str:
    """The report's objective: its metric and direction, or that no job has recorded one yet (a
    sweep stopped, or failed, before any job started training)."""
    metric = s["objective_metric"]
    if metric is None or (isinstance(metric, float) and math.isnan(metric)):
        return "no job recorded its objective yet"
    shown = f"<code>{html.escape(str(metric))}</code>" if as_html else f"{quote}{metric}{quote}"
    return f"objective {shown} ({s['direction']})"


def markdown(df: pd.DataFrame, s: dict[str, Any], plots: dict[str, bool], curve_metric: str,
             max_curves: int, plot_note: str | None = None) -> str:
    lines = ["# Sweep report", "", f"Sweep folder(s): {', '.join(s['sweeps'])}  ",
             f"Generated {s['generated_at']}; {objective_text(s, '`')}.", ""]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s["by_status"].items()))
    lines += [f"**{s['total']} jobs**: {counts or 'none'}.", ""]
    if s.get("provenance_warning"):
        lines += [f"**Warning**: {s['provenance_warning']}.", ""]
    if s["best"]:
        b = s["best"]
        lines += [f"**Best job**: {b['job_num']} `{b['label']}`: {s['objective_metric']} = "
                  f"{b['objective']:.4f} ({b['job_dir']})", ""]
    lines += comparison_lines(s)
    images = plot_note is None  # figures are shown only by a page written with them: none are stale
    for sweep in s["sweeps"]:  # a race's eliminations and verdict (hexsweep/race/output.py)
        lines += race_section(Path(sweep), out_dir_of(s), images)
    lines += tournament_lines(s, out_dir_of(s))
    lines += detail_lines(s)
    if s["failed"]:
        lines += ["## Jobs that did not complete", ""]
        lines += [f"- job {f['job_num']} `{f['label']}`: **{f['status']}** "
                  f"{f['error'] if isinstance(f['error'], str) else ''}".rstrip() for f in s["failed"]]
        lines.append("")
    title = "All jobs" if len(df) <= MAX_TABLE_ROWS else f"Best {MAX_TABLE_ROWS} of {len(df)} jobs (all in results.csv)"
    lines += [f"## {title}", "", md_table(_fmt(df)), ""]
    study = out_dir_of(s) / "study.md"
    if study.exists():  # an Optuna sweep: the study's best trial and Optuna's own plots
        lines += ["## Optuna study", "", study.read_text().split("\n", 2)[-1].strip(), ""]
        lines += [f"![{p.stem}]({p.name})" for p in sorted(out_dir_of(s).glob("optuna_*.png")) if images]
        lines.append("")
    captions = {"curves.png": f"{curve_metric} per epoch, every job"
                + (f" (best {max_curves} shown)" if len(df) > max_curves else ""),
                "by_experiment.png": "objective per configuration: mean and 95% interval across seeds",
                "accuracy_vs_value_loss.png": "policy accuracy vs value loss",
                "calibration.png": "value-head reliability and error by game stage, best jobs",
                "policy.png": "policy top-1/3/5 accuracy and entropy per epoch, best jobs"}
    lines += ["## Plots", ""]
    lines += [f"![{captions[name]}]({name})" for name, made in plots.items() if made]
    if plot_note:
        lines.append(plot_note)
    return "\n".join(lines) + "\n"


def out_dir_of(summary: dict[str, Any]) -> Path:
    return Path(summary.get("out_dir") or ".")


def md_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs the extra 'tabulate' package)."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    rows = ["| " + " | ".join(map(cell, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def to_html(df: pd.DataFrame, s: dict[str, Any], plots: dict[str, bool], plot_note: str | None = None) -> str:
    best = s["best"]
    best_line = (f"<p><b>Best job</b>: {best['job_num']} <code>{html.escape(str(best['label']))}</code>: "
                 f"{best['objective']:.4f}</p>" if best else "")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s["by_status"].items()))
    imgs = "".join(f'<img src="{n}" style="max-width:48%">' for n, made in plots.items() if made)
    if plot_note:
        imgs += f"<p><b>Plots</b>: {html.escape(plot_note)}</p>"
    groups = ""
    if s["groups"]:
        table = pd.DataFrame([{"configuration": name, "n": g["n"], "mean": _num(g["mean"]),
                               **dict(zip(("95% CI", "difference vs best"), interval_texts(g), strict=True)),
                               "verdict": g["verdict"], "seeds needed": g["seeds_needed"] or ""}
                              for name, g in list(s["groups"].items())[:MAX_TABLE_ROWS]])
        c = s.get("comparison") or {}
        command = f"<pre>{html.escape(c['command'])}</pre>" if c.get("command") else ""
        groups = f"<h2>Which configuration is better?</h2>{table.to_html(index=False, escape=True)}{command}"
    for t in s.get("tournaments") or []:
        elo = pd.DataFrame([{"player": e["label"], "Elo": f"{e['elo']:.0f}",
                             "95% CI": f"[{e['elo_low']:.0f}, {e['elo_high']:.0f}]", "games": e["games"],
                             "score": f"{e['score']:.0%}"} for e in t["elo"]])
        warn = "".join(f"<p><b>Warning</b>: {html.escape(w)}</p>" for w in t.get("warnings") or [])
        png = os.path.relpath(Path(t["folder"]) / "elo.png", out_dir_of(s))
        groups += (f"<h2>Tournament</h2>{elo.to_html(index=False, escape=True)}{warn}"
                   f'<img src="{html.escape(png)}" style="max-width:60%">')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>hexsweep report</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}"
            f"td,th{{border:1px solid #ccc;padding:3px 6px}}</style></head><body>"
            f"<h1>Sweep report</h1><p>{html.escape(', '.join(s['sweeps']))}</p>"
            f"<p><b>{s['total']} jobs</b>: {html.escape(counts)}; {objective_text(s, as_html=True)}</p>{best_line}"
            f"{groups}{imgs}<h2>Jobs (best {MAX_TABLE_ROWS} at most; all in results.csv)</h2>"
            f"{_fmt(df).to_html(index=False, escape=True)}</body></html>\n")
