"""The sweep report: results.csv/.parquet, summary.json, report.md/.html and PNG plots."""

from __future__ import annotations

import html
import math
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hexsweep.atomic import atomic_write, atomic_write_json, atomic_write_text
from hexsweep.sweep.aggregate import OK, load_curves


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


def direction_of(df: pd.DataFrame) -> str:
    return "maximize" if "objective_metric" in df and any(
        str(m).endswith(("_acc",)) for m in df["objective_metric"].dropna().unique()) else "minimize"


def summarise(df: pd.DataFrame, sweep_dirs: list[Path], direction: str) -> dict[str, Any]:
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
    groups = {}
    if not ok.empty:
        for name, g in ok.groupby("group"):
            vals = g["objective"].astype(float)
            groups[name] = {"n": len(g), "mean": _plain(vals.mean()),
                            "std": _plain(vals.std()) if len(g) > 1 else None,
                            "min": _plain(vals.min()), "max": _plain(vals.max())}
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
    }


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
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
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


def plot_groups(ok: pd.DataFrame, metric: str, out: Path) -> bool:
    import matplotlib.pyplot as plt

    if ok.empty:
        return False
    stats = ok.groupby("group")["objective"].agg(["mean", "std", "count"]).sort_values("mean")
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(stats)))
    y = range(len(stats))
    ax.barh(list(y), stats["mean"], xerr=stats["std"].fillna(0), color="#7aa6c2", capsize=3)
    for i, group in enumerate(stats.index):
        pts = ok.loc[ok["group"] == group, "objective"]
        ax.scatter(pts, [i] * len(pts), color="k", s=10, zorder=3)
    ax.set_yticks(list(y), [textwrap.shorten(f"{g} (n={c})", 70) for g, c in
                            zip(stats.index, stats["count"], strict=True)], fontsize=8)
    lo, hi = float(ok["objective"].min()), float(ok["objective"].max())
    if lo > 0:  # bars from zero would hide the differences that matter
        ax.set_xlim(left=max(0.0, lo - 0.6 * max(hi - lo, 0.05 * hi)))
    ax.set_xlabel(f"{metric} (mean, bars: std across seeds, dots: jobs)")
    ax.set_title("final objective per experiment")
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


def write_report(df: pd.DataFrame, out_dir: Path, sweep_dirs: list[Path], max_curves: int = 200
                 ) -> dict[str, Any]:
    """Write every artefact into ``out_dir``; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = add_group(df)
    direction = direction_of(df)
    if not df.empty and "objective" in df:
        df = df.sort_values("objective", ascending=direction == "minimize", na_position="last")
    atomic_write(out_dir / "results.csv", lambda f: df.to_csv(f, index=False))
    atomic_write(out_dir / "results.parquet", lambda f: df.to_parquet(f, index=False), mode="wb")
    summary = summarise(df, sweep_dirs, direction)
    summary["out_dir"] = str(out_dir)
    atomic_write_json(out_dir / "summary.json", summary)
    metric = summary["objective_metric"] or "val_objective"
    curve_metric = metric if str(metric).startswith("val_") else "val_objective"
    ok = df[df["status"].isin(OK)] if not df.empty else df
    plots = {
        "curves.png": plot_curves(df, load_curves(df, max_curves), curve_metric, out_dir / "curves.png"),
        "by_experiment.png": plot_groups(ok, metric, out_dir / "by_experiment.png"),
        "accuracy_vs_value_loss.png": plot_tradeoff(ok, out_dir / "accuracy_vs_value_loss.png"),
    }
    atomic_write_text(out_dir / "report.md", markdown(df, summary, plots, curve_metric, max_curves))
    atomic_write_text(out_dir / "report.html", to_html(df, summary, plots))
    return summary


def markdown(df: pd.DataFrame, s: dict[str, Any], plots: dict[str, bool], curve_metric: str,
             max_curves: int) -> str:
    lines = ["# Sweep report", "", f"Sweep folder(s): {', '.join(s['sweeps'])}  ",
             f"Generated {s['generated_at']}; objective `{s['objective_metric']}` ({s['direction']}).", ""]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s["by_status"].items()))
    lines += [f"**{s['total']} jobs**: {counts or 'none'}.", ""]
    if s["best"]:
        b = s["best"]
        lines += [f"**Best job**: {b['job_num']} `{b['label']}`: {s['objective_metric']} = "
                  f"{b['objective']:.4f} ({b['job_dir']})", ""]
    if s["groups"]:
        lines += ["## Per experiment (seeds pooled)", "", "| group | n | mean | std | min | max |",
                  "|---|---|---|---|---|---|"]
        for name, g in sorted(s["groups"].items(), key=lambda kv: kv[1]["mean"] or 0,
                              reverse=s["direction"] == "maximize"):
            std = f"{g['std']:.4f}" if g["std"] is not None else ""
            lines.append(f"| `{name}` | {g['n']} | {g['mean']:.4f} | {std} | {g['min']:.4f} "
                         f"| {g['max']:.4f} |")
        lines.append("")
    if s["failed"]:
        lines += ["## Jobs that did not complete", ""]
        lines += [f"- job {f['job_num']} `{f['label']}`: **{f['status']}** {f['error'] or ''}"
                  for f in s["failed"]]
        lines.append("")
    title = "All jobs" if len(df) <= MAX_TABLE_ROWS else f"Best {MAX_TABLE_ROWS} of {len(df)} jobs (all in results.csv)"
    lines += [f"## {title}", "", md_table(_fmt(df)), ""]
    study = out_dir_of(s) / "study.md"
    if study.exists():  # an Optuna sweep: the study's best trial and Optuna's own plots
        lines += ["## Optuna study", "", study.read_text().split("\n", 2)[-1].strip(), ""]
        lines += [f"![{p.stem}]({p.name})" for p in sorted(out_dir_of(s).glob("optuna_*.png"))]
        lines.append("")
    captions = {"curves.png": f"{curve_metric} per epoch, every job"
                + (f" (best {max_curves} shown)" if len(df) > max_curves else ""),
                "by_experiment.png": "objective per experiment: mean, spread across seeds",
                "accuracy_vs_value_loss.png": "policy accuracy vs value loss"}
    lines += ["## Plots", ""]
    lines += [f"![{captions[name]}]({name})" for name, made in plots.items() if made]
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


def to_html(df: pd.DataFrame, s: dict[str, Any], plots: dict[str, bool]) -> str:
    best = s["best"]
    best_line = (f"<p><b>Best job</b>: {best['job_num']} <code>{html.escape(str(best['label']))}</code>: "
                 f"{best['objective']:.4f}</p>" if best else "")
    counts = ", ".join(f"{v} {k}" for k, v in sorted(s["by_status"].items()))
    imgs = "".join(f'<img src="{n}" style="max-width:48%">' for n, made in plots.items() if made)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>hexsweep report</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:12px}}"
            f"td,th{{border:1px solid #ccc;padding:3px 6px}}</style></head><body>"
            f"<h1>Sweep report</h1><p>{html.escape(', '.join(s['sweeps']))}</p>"
            f"<p><b>{s['total']} jobs</b>: {html.escape(counts)}; objective "
            f"<code>{html.escape(str(s['objective_metric']))}</code> ({s['direction']})</p>{best_line}"
            f"{imgs}<h2>Jobs (best {MAX_TABLE_ROWS} at most; all in results.csv)</h2>"
            f"{_fmt(df).to_html(index=False, escape=True)}</body></html>\n")
