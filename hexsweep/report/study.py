"""What a study holds, as tables, text and plots: shared by the Optuna sweeper's end-of-search
report and the ``python -m hexsweep.study`` queries."""

from __future__ import annotations

import logging
import shlex
import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from hexsweep.atomic import atomic_write
from hexsweep.jobfolder import read_result


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        row = {"number": t.number, "state": t.state.name, "duration_s": duration,
               "pruned_epoch": t.user_attrs.get("pruned_at_epoch"),
               "fail_reason": t.user_attrs.get("fail_reason"), "job_dir": t.user_attrs.get("job_dir")}
        if t.values is not None:
            if len(t.values) == 1:
                row["value"] = t.values[0]
            else:
                row.update({f"value_{i}": v for i, v in enumerate(t.values)})
        row.update({f"params.{k}": v for k, v in t.params.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def reproduce_command(trial: optuna.trial.FrozenTrial) -> str:
    """The command that trains the trial's configuration again. A hexsweep.train job also gets the
    thread count it ran with, from its job folder where this host can read it: its value depends
    on it in the last digits (the float sums run in another order)."""
    overrides = list(trial.user_attrs.get("overrides") or [f"{k}={v}" for k, v in trial.params.items()])
    program = trial.user_attrs.get("program") or "python -m hexsweep.train"
    job_dir = trial.user_attrs.get("job_dir")
    record = read_result(job_dir) if job_dir else None  # None where this host has no such folder
    if (record is not None and record.num_threads and program.endswith("hexsweep.train")
            and not any(o.partition("=")[0].lstrip("+") == "num_threads" for o in overrides)):
        overrides.append(f"num_threads={record.num_threads}")
    return program + " " + " ".join(shlex.quote(o) for o in overrides)


def best_summary(study: optuna.Study) -> str:
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    counts = pd.Series([t.state.name for t in study.get_trials(deepcopy=False)]).value_counts().to_dict()
    head = f"{len(study.trials)} trials: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
    if not done:
        return head + "; no completed trial yet"
    if len(study.directions) > 1:
        lines = [head, "", f"Pareto front ({len(study.best_trials)} trials):"]
        lines += [f"- trial {t.number}: values {t.values} params {t.params} ({t.user_attrs.get('job_dir')})"
                  for t in study.best_trials]
        return "\n".join(lines)
    b = study.best_trial
    params = "\n".join(f"  {k} = {v}" for k, v in b.params.items())
    return (f"{head}; best trial {b.number}: value {b.value:.6g}\n\n"
            f"**Best trial {b.number}**: value {b.value:.6g}\n\nParams:\n\n{params}\n\n"
            f"Job folder: {b.user_attrs.get('job_dir')}\n\nReproduce: `{reproduce_command(b)}`")


def study_plots(study: optuna.Study, out: Path) -> list[Path]:
    """Optuna's matplotlib plots as PNGs; returns the files written (some need >= 2 finished trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out.mkdir(parents=True, exist_ok=True)
    single = len(study.directions) == 1
    plots = {"optuna_history.png": ovm.plot_optimization_history,
             "optuna_parallel_coordinates.png": ovm.plot_parallel_coordinate,
             "optuna_slice.png": ovm.plot_slice,
             "optuna_importances.png": ovm.plot_param_importances,
             "optuna_intermediate_values.png": ovm.plot_intermediate_values}
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        del plots["optuna_intermediate_values.png"]  # nothing reported per epoch (a plain app, no pruning)
    if not single:
        plots = {"optuna_pareto_front.png": ovm.plot_pareto_front}
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        # no value yet (a search interrupted early, every trial pruned or paused): only the curves
        # mean something; the other plots would be empty, with one Optuna warning each
        plots = {k: v for k, v in plots.items() if k == "optuna_intermediate_values.png"}
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its notes on categorical axes
        for name, fn in plots.items():
            try:
                ax = fn(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances with fewer than two completed trials
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            atomic_write(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100), mode="wb")
            plt.close(fig)
            written.append(out / name)
    return written
