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
import sys
from pathlib import Path

import optuna
import pandas as pd

from hexsweep.cli import fail
from hexsweep.errors import HexsweepError
from hexsweep.report.study import best_summary, study_plots, trials_frame
from hexsweep.search.storage import default_storage, open_storage, redact

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
