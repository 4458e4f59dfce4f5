"""Train one model: ``python -m hexsweep.train [overrides]`` (``-m`` for a sweep).

compose (Hydra) -> validate -> slot + dataset (generated once, memory-mapped) + model ->
trainer -> job folder (hexsweep/jobfolder.py). ``main`` returns the objective so Hydra
sweepers can optimise it. In a sweep a job never raises: its failure is recorded in its
folder (status, error.txt) and it returns NaN, so one bad job cannot end the sweep (Hydra
would skip the post-sweep aggregation, see docs/design.md); the sweep's summary and
exit status report it instead. A single run exits non-zero with one line. ``TRAIN_APP``
(sweep/train_app.py) is this app's side of the launcher's seam.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # a sweep: start the job server now, so that its imports overlap ours
    from hexsweep.sweep.process import start_server_early

    start_server_early(sys.argv[1:], ("hexsweep.sweep.warm", "hexsweep.sweep.warm_hydra", "hexsweep.train",
                                      "hexsweep.sweep.callbacks"))

import logging  # noqa: E402  (after the job server's start, on purpose)
from pathlib import Path  # noqa: E402

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from hexsweep.cli import CONF_DIR, compose, fail
from hexsweep.config import check_name, register_schema, validate
from hexsweep.errors import HexsweepError
from hexsweep.jobfolder import INTERRUPTED, completed_result
from hexsweep.naming import register_resolvers
from hexsweep.report.end import PLOTS_KEY, check_plots
from hexsweep.sweep.apps import job_app
from hexsweep.sweep.compose import shared_config_store
from hexsweep.sweep.train_app import TRAIN_APP

log = logging.getLogger("hexsweep.train")
HELP = {"--help", "-h", "--hydra-help"}
register_schema()
register_resolvers()


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
@job_app(TRAIN_APP)
def main(cfg: DictConfig) -> float:
    # the job's side (torch, the trainer) loads here, in the job: --help and the sweep's driver
    # never need it, and a sweep's job server has it loaded already (sweep/warm.py)
    from hexsweep.lifecycle import anchor_paths, enter_launch_dir, train_job_recorded
    from hexsweep.search.pruning import trial_hook

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    if not hc.job.chdir:
        enter_launch_dir(hc.runtime.cwd)
    else:  # in the job folder: relative paths still mean the launch directory's (one slot pool, one dataset)
        anchor_paths(cfg, hc.runtime.cwd)
    if not multirun:
        try:
            validate(cfg)
        except HexsweepError as e:
            fail(str(e))
    if multirun and cfg.resume and (done := completed_result(job_dir, list(hc.overrides.task))):
        log.info("resume: job %s already completed, skipped", hc.job.num)
        return done.value
    record = train_job_recorded(cfg, job_dir, link_trial=trial_hook)
    status = record.status
    if not record.ok:
        error = record.error
        message = f"job {status}: {error.type}: {error.message}" if error else f"job {status}"
        if multirun:
            log.error("%s (%s)", message, job_dir)
            if status == INTERRUPTED:
                raise KeyboardInterrupt
            return float("nan")
        print(f"hexsweep: {message}\n  full traceback: {job_dir / 'error.txt'}", file=sys.stderr)
        raise SystemExit(130 if status == INTERRUPTED else 1)
    log.info("%s: %s = %.4f (best epoch %s of %d) -> %s", record.experiment,
             record.objective.metric if record.objective else "objective", record.value, record.best_epoch,
             record.epochs_run or 0, job_dir)
    return record.value


def precheck_argv(argv: list[str]) -> None:
    """Fail fast, in one line, on what Hydra would otherwise meet with a traceback before any
    hexsweep code runs: a bad override of a single run, a job name that would put Hydra's log
    file outside the outputs root, an outputs root that cannot be written, the report's plots
    setting (Hydra instantiates the report's callback before any hexsweep check)."""
    for arg in argv:
        key, _, value = arg.partition("=")
        try:
            if key.lstrip("+") == "hydra.job.name":
                check_name("hydra.job.name", value)
            elif key.lstrip("+") == PLOTS_KEY and "${" not in value:  # an interpolation: the callback checks it
                check_plots(value[1:-1] if value[:1] == value[-1:] and value[:1] in "'\"" and len(value) > 1
                            else value)
        except HexsweepError as e:
            fail(str(e))
    outputs = next((a.partition("=")[2] for a in reversed(argv) if a.lstrip("+").startswith("paths.outputs=")),
                   "outputs")
    informational = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--version", "--shell-completion"}
    # a sweep over outputs roots is checked job by job; --help and --cfg write nothing
    if "," not in outputs and "(" not in outputs and not informational & set(argv):
        check_writable(outputs)
    if any(a in ("-m", "--multirun") for a in argv):
        check_sweep_options(argv)
    if any(a.startswith("-") for a in argv):
        return  # multirun and Hydra's own flags: the sweep launcher validates every job
    overrides = [a for a in argv if "=" in a and not a.startswith(("hydra", "+hydra", "~hydra"))]
    try:
        compose(overrides)
    except HexsweepError as e:
        fail(str(e))


def check_sweep_options(argv: list[str]) -> None:
    """Under -m, Hydra's sweeper composes every job before the launcher sees any, and a misspelled
    option of a config group (``experiment=polcy_heavy,policy_heavy``) ends there in its own
    multi-line error, exit 1. The options of hexsweep's own groups are files of its config
    folder: checked here in one line. Skipped where other config folders may add options
    (``hydra.searchpath``, ``--config-dir``, another primary config) and for values Hydra's
    grammar expands (``glob()``, ``choice()``, lists, interpolations)."""
    if any(a.startswith(("hydra.searchpath", "+hydra.searchpath", "--config", "-cp", "-cn", "-cd")) for a in argv):
        return
    for arg in argv:
        key, sep, value = arg.partition("=")
        group = key.lstrip("+")
        if not sep or key.startswith("~") or group.startswith("hydra") or not (CONF_DIR / group).is_dir():
            continue
        allowed = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        if value.startswith("glob(") and not _glob_matches(arg, allowed):  # Hydra runs no job, and says nothing
            fail(f"{group}={value} matches no option of the {group} group: allowed {', '.join(allowed)}")
        if any(c in value for c in "()[]{}'\"$*\\ "):
            continue
        for option in value.split(","):
            if option not in ("", "null") and option not in allowed:
                fail(f"{group}={option} is not an option of the {group} group: allowed {', '.join(allowed)}")


def _glob_matches(override: str, options: list[str]) -> bool:
    """Whether a ``glob()`` sweep override matches one of ``options`` (True if Hydra's parser
    refuses it: Hydra then says why itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return bool(OverridesParser.create().parse_override(override).value().filter(options))
    except Exception:  # Hydra's grammar errors, reported by Hydra's own parse of the command line
        return True


def check_writable(folder: str) -> None:
    """The outputs root must take a file: one line naming it, instead of Hydra's traceback."""
    import tempfile

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hexsweep-write-check-"):
            pass
    except OSError as e:
        fail(f"paths.outputs={folder} cannot be written ({e.strerror or e}): allowed a folder you can write to")


def cli_main() -> None:
    precheck_argv(sys.argv[1:])
    if HELP & set(sys.argv[1:]):
        with shared_config_store():  # Hydra's help copies the ConfigStore once per config group
            main()
    else:
        main()


if __name__ == "__main__":
    cli_main()
