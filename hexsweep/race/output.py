"""What a race writes into its sweep folder: race.json (for scripts), race.md, race.png.

All three come from the summary ``Race.summary`` builds; ``race_section`` is what the sweep's
report.md includes when its folder holds a race.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from hexsweep.atomic import atomic_write, atomic_write_json, atomic_write_text

RACE_JSON, RACE_MD, RACE_PNG = "race.json", "race.md", "race.png"


def write_outputs(summary: dict[str, Any], sweep_dir: Path, plots: str = "wait") -> None:
    """race.json and race.md; race.png now (``wait``), after the sweep's last line with the report's
    plots (``background``: report/draw.py, which writes race.md again) or never (``off``)."""
    atomic_write_json(sweep_dir / RACE_JSON, summary)
    plotted = False
    if plots == "wait":
        try:
            plotted = plot_race(summary, sweep_dir / RACE_PNG)
        except Exception as e:  # a plot is a bonus: a plotting error must not hide the race's answer
            import logging

            logging.getLogger(__name__).warning("race.png not written: %s", e)
    elif plots == "background":
        from hexsweep.report.end import defer_plots

        defer_plots(sweep_dir, race=True)
    write_race_md(summary, sweep_dir, plotted)


def write_race_md(summary: dict[str, Any], sweep_dir: Path, plotted: bool) -> None:
    atomic_write_text(sweep_dir / RACE_MD, "\n".join(markdown(summary, RACE_PNG if plotted else None)) + "\n")


def _f(x: Any, fmt: str = ".4f", sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, ("+" if sign else "") + fmt)


def _p(x: Any) -> str:
    return "n/a" if x is None else f"{x:.2g}"


def markdown(s: dict[str, Any], png: str | None, heading: str = "#") -> list[str]:
    n_cfg = len(s["configs"])
    lines = [f"{heading} Race: {s['verdict']['text']}", "",
             f"{n_cfg} configurations, `{s['metric']}` ({s['direction']}), test `{s['test']}`, "
             f"alpha={s['alpha']:g} family-wise: each look at n seeds (n = {s['min_seeds']}..{s['max_seeds']}) tests "
             f"at {s['level_per_look']:.2g} (Bonferroni over the looks), Holm over the pairs of survivors. "
             f"Ended by {s['ended_by']}.",
             "",
             f"Jobs: {s['jobs_run']} run, against {s['grid_jobs']} for every configuration at max_seeds "
             f"({s['jobs_run'] / max(1, s['grid_jobs']):.2f} of the grid).", "",
             "| configuration | seeds | mean | eliminated | p (Holm) | effect vs best [95% CI] |",
             "|---|---|---|---|---|---|"]
    order = sorted(range(n_cfg), key=lambda i: (s["configs"][i]["eliminated"],
                                                -(s["configs"][i]["eliminated_at_seeds"] or 0)))
    final = {f["label"]: f for f in s.get("survivors_vs_best") or []}
    for i in order:
        c = s["configs"][i]
        if c["eliminated"]:
            when = "failed" if c["test"] == "failed" else f"after {c['eliminated_at_seeds']} seeds"
            low, high = c["effect_interval"] or [None, None]
            eff = f"{_f(c['effect'], sign=True)} [{_f(low, sign=True)}, {_f(high, sign=True)}]" \
                if c["test"] != "failed" else ""
            p = _p(c["p_value"])
        else:
            when, p = "survived", ""
            f = final.get(c["label"])
            eff = f"{_f(f['effect'], sign=True)} [{_f(f['effect_interval'][0], sign=True)}, " \
                  f"{_f(f['effect_interval'][1], sign=True)}] (at the end)" if f else "best" \
                if c["label"] == s["verdict"].get("best") else ""
        fails = f" ({c['failed']} failed)" if c["failed"] else ""
        lines.append(f"| `{c['label']}` | {len(c['seeds_run'])}{fails} | {_f(c['mean'])} | {when} | {p} | {eff} |")
    lines += ["", "Eliminations, in order:" if s["eliminations"] else "No configuration was eliminated."]
    for e in s["eliminations"]:
        if e["test"] == "failed":
            lines.append(f"- `{e['label']}` after {e['seeds']} seeds: its first {e['seeds']} jobs failed")
        else:
            lines.append(f"- `{e['label']}` after {e['seeds']} seeds ({e['blocks']} paired): {e['test']}, "
                         f"p = {_p(e['p'])} < {e['level']:.2g} against `{e['best_label']}`; effect "
                         f"{_f(e['effect'], sign=True)} [{_f(e['low'], sign=True)}, {_f(e['high'], sign=True)}] "
                         "(mean paired difference, eliminated - best, 95% t-interval)")
    corr = s.get("correlation")
    lines.append("")
    if corr:
        gain = corr.get("pairing_gain")
        helped = "" if gain is None else (
            f"; pairing by seed divided the variance of a difference by {gain:.2f} (median over pairs): "
            + ("it helped (an unpaired test would have needed about that many times the seeds)" if gain > 1.1 else
               "it barely mattered" if gain >= 0.9 else "it cost a little (seeds anti-correlate)"))
        lines.append(f"Seeds across configurations: mean Pearson r = {corr['mean_r']:+.2f} "
                     f"(from {corr['min_r']:+.2f} to {corr['max_r']:+.2f}) over the {corr['seeds']} seeds every "
                     f"configuration completed{helped}.")
    else:
        lines.append("Seed correlation: too few seeds that every configuration completed (3 needed).")
    if png:
        lines += ["", f"![race]({png})"]
    return lines


def plot_race(s: dict[str, Any], out: Path) -> bool:
    """The objective per seed for each configuration (dots), its running mean (line), and an X
    where it was eliminated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = s["configs"]
    if not any(c["completed"] for c in configs):
        return False
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, c in enumerate(configs):
        color = cmap(i % 10)
        xs, ys, running = seed_curve(c)
        if not len(xs):
            continue
        ax.scatter(xs, ys, s=14, color=color, alpha=0.55)
        label = c["label"] + ("" if not c["eliminated"] else
                              " (failed)" if c["test"] == "failed" else f" (out at {c['eliminated_at_seeds']})")
        ax.plot(xs, running, color=color, lw=1.6, label=label)
        if c["eliminated"] and c["test"] != "failed":
            # the look that eliminated it saw seeds 1..n: the running mean there
            at = max(1, int(np.searchsorted(xs, c["eliminated_at_seeds"], side="right")))
            ax.scatter([xs[at - 1]], [running[at - 1]], marker="X", s=90, color=color, edgecolor="black", zorder=5)
    ax.set_xlabel("seeds (k-th seed of every configuration)")
    ax.set_ylabel(f"{s['metric']} ({s['direction']})")
    ax.set_title(f"race: {s['verdict']['text']}"[:110], fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110), mode="wb")
    plt.close(fig)
    return True


def seed_curve(c: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One configuration of race.json: its completed values at their seed positions (1-based: the
    k-th seed of every configuration), and their running mean."""
    values = np.array([math.nan if v is None else v for v in c["values"]], dtype=float)
    seeds = np.asarray(c.get("seed_indices") or range(len(values)), dtype=float) + 1  # older race.json: in order
    done = np.isfinite(values)
    xs, ys = seeds[done], values[done]
    return xs, ys, np.cumsum(ys) / np.arange(1, len(ys) + 1)


def race_section(sweep_dir: Path, out_dir: Path, images: bool = True) -> list[str]:
    """report.md's race section when the sweep folder holds a race (race.json), else nothing;
    with race.png if ``images`` (a page written with its figures)."""
    import os

    path = Path(sweep_dir) / RACE_JSON
    try:
        s = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    png = Path(sweep_dir) / RACE_PNG
    rel = os.path.relpath(png, out_dir) if images and png.exists() else None
    try:
        return ["", *markdown(s, rel, heading="##")]
    except (KeyError, TypeError, ValueError):
        return []
