"""Query Optuna studies: ``python -m hexsweep.study {list,best,trials,importance,plot}``.

    python -m hexsweep.study list                                  # studies in the default storage
    python -m hexsweep.study best --study hex_tpe                  # value, params, job folder, command
    python -m hexsweep.study trials --study hex_tpe --format csv   # the trials table (pandas)
    python -m hexsweep.study importance --study hex_tpe            # parameter importances
    python -m hexsweep.study plot --study hex_tpe --out plots/     # PNGs (matplotlib)

``--storage`` takes an RDB URL or a ``.journal`` path (default: outputs/optuna/studies.journal).
Every command only reads: a storage that does not exist is a one-line error, never created.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import warnings
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from hexsweep.atomic import atomic_write
from hexsweep.cli import fail
from hexsweep.errors import HexsweepError
from hexsweep.search.storage import default_storage, open_storage, redact

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    overrides = trial.user_attrs.get("overrides") or [f"{k}={v}" for k, v in trial.params.items()]
    return "python -m hexsweep.train " + " ".join(shlex.quote(o) for o in overrides)


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
    if not single:
        plots = {"optuna_pareto_front.png": ovm.plot_pareto_front}
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, fn in plots.items():
            try:
                ax = fn(study) if single or name == "optuna_pareto_front.png" else None
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue  # e.g. importances with fewer than two completed trials
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(9, 5.5)
            fig.tight_layout()
            atomic_write(out / name, lambda f, fig=fig: fig.savefig(f, format="png", dpi=100), mode="wb")
            plt.close(fig)
            written.append(out / name)
    return written


def load(storage_spec: str, name: str) -> optuna.Study:
    storage = open_storage(storage_spec, read_only=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise HexsweepError(f"no study {name!r} in {redact(storage_spec)}: allowed {', '.join(names) or 'none'}") \
            from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hexsweep.study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default=None, help="RDB URL or .journal path (default: the embedded one)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="studies in the storage")
    for name in ("best", "trials", "importance", "plot"):
        p = sub.add_parser(name)
        p.add_argument("--study", required=True)
        if name == "trials":
            p.add_argument("--format", choices=("table", "csv", "json"), default="table")
        if name == "plot":
            p.add_argument("--out", type=Path, default=Path("plots"))
    args = parser.parse_args(argv)
    spec = args.storage or default_storage("outputs")
    try:
        run(args, spec)
    except HexsweepError as e:
        fail(str(e))


def run(args: argparse.Namespace, spec: str) -> None:
    if args.command == "list":
        summaries = optuna.get_all_study_summaries(open_storage(spec, read_only=True))
        if not summaries:
            print(f"no studies in {redact(spec)}")
        for s in summaries:
            best = f", best value {s.best_trial.value:.6g}" if s.best_trial and s.best_trial.values and \
                len(s.best_trial.values) == 1 else ""
            print(f"{s.study_name}: {s.n_trials} trials, {'/'.join(d.name.lower() for d in s.directions)}{best}")
        return
    study = load(spec, args.study)
    if args.command == "best":
        print(best_summary(study).replace("**", ""))
    elif args.command == "trials":
        df = trials_frame(study)
        if args.format == "csv":
            df.to_csv(sys.stdout, index=False)
        elif args.format == "json":
            print(df.to_json(orient="records", indent=1))
        else:
            with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_rows", 500):
                print(df.drop(columns=["job_dir"]).to_string(index=False))
    elif args.command == "importance":
        try:
            importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as e:
            raise HexsweepError(f"cannot compute importances yet: {e}") from None
        for k, v in importances.items():
            print(f"{k:30s} {v:.3f}")
    elif args.command == "plot":
        for path in study_plots(study, args.out):
            print(path)


if __name__ == "__main__":
    main()
