"""Fixed costs of hexsweep against their baselines, as ratios measured in one run (issue 24).

    python bench/cold_path.py [--repeats 3] [--small 8] [--large 24] [--only help,import,first,jobs,report,gain]
                              [--before DIR]

Every figure is the best of ``--repeats`` runs, with its baseline timed in the same loop
(alternating), so a busy machine slows both sides alike. ``--before DIR``: another checkout of
hexsweep (``git worktree add --detach DIR <commit>``) whose commands run in the same loop too
(``PYTHONPATH=DIR``), each figure then printed for both ("before" lines). Prints one line per figure:

- help:   ``python -m hexsweep.train --help`` / ``python -c "import torch"`` (target <= 1.3)
- import: ``python -c "import hexsweep.train"`` / ``import torch``
- first:  a one-job sweep's time to its job's first training step (the step's checkpoint,
          ``trainer.checkpoint_every_steps=1``) / the same job run alone (no ``-m``)
- jobs:   per-job start (the slope between --small and --large jobs, n_jobs=2): the hexsweep
          launcher with a bare app, and hexsweep.train's no-op jobs, against bare Hydra's joblib
          launcher (targets <= 1.2 and <= 2); the whole sweep of --small jobs against joblib's
          (target <= 2.0), to its exit, and to the end of its plots (drawn after the sweep's last
          line, in the background); the next command starts only once they are drawn
- report: ``python -m hexsweep.analyze`` of 4, 20 and 200 synthetic finished jobs, and of the
          --small no-op sweep, / ``python -c "import pandas, matplotlib.pyplot"`` (target <= 2
          for 8 to 20 jobs)
- gain:   4 jobs of 12 tiny epochs, sequential / n_jobs=2, against its ceiling from one job's
          thread scaling: two one-thread jobs side by side at best take one one-thread job's
          time, so the ceiling is 2 x (a job with 2 threads) / (a job with 1 thread), each the
          median job of 4-job sweeps that run one job at a time (target >= 0.9).
          Then what keeps the gain below it, measured in the same loop: two one-thread jobs side by
          side against one alone, for hexsweep's jobs and for bare torch loops of the same network
          (bench/torch_loop.py: the machine's own share); the gain of the time inside the jobs
          alone; the time both sweeps spend outside their jobs, against what any sweep pays once
          (``import torch`` and building an optimizer), and the gain with only that outside the jobs
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aggregate_scale import make_jobs
from common import hexsweep_cmd, run_timed

from hexsweep.jobfolder import RESULT_FILE, read_result

PY = sys.executable
# plots=background: the sweeps run as a person at a terminal runs them (auto picks wait in a pipe)
TINY = ("debug=tiny", "strength.games=0", "hydra.launcher.progress=off",
        "hydra.callbacks.sweep_report.plots=background")


Cmd = list[str] | tuple[list[str], dict[str, str]]  # a command, or a command and its environment
BEFORE = " before"  # the suffix of a figure's name for the --before checkout's command


def before_env(checkout: str | None) -> dict[str, str] | None:
    """The environment that runs the --before checkout's code (it comes first on the path)."""
    return None if checkout is None else {**os.environ, "PYTHONPATH": str(Path(checkout).resolve())}


def sides(name: str, cmd: list[str], before: dict[str, str] | None) -> dict[str, Cmd]:
    """A hexsweep command, and with --before the same command on the other checkout's code."""
    return {name: cmd, **({name + BEFORE: (cmd, before)} if before is not None else {})}


def timed(cmd: Cmd, cwd: str | None = None) -> float:
    """The command's wall time; then, untimed, the end of its sweep's background plots, which
    would otherwise run into the next timed command."""
    argv, env = cmd if isinstance(cmd, tuple) else (cmd, None)
    start = time.perf_counter()
    seconds = run_timed(argv, cwd=cwd, env=env)[0]
    for sweep in (a.partition("=")[2] for a in argv if a.startswith("hydra.sweep.dir=")):
        if plots_drawn(Path(cwd or ".") / sweep):
            WITH_PLOTS[" ".join(argv)] = time.perf_counter() - start
    return seconds


WITH_PLOTS: dict[str, float] = {}  # a command's time until its sweep's background plots were drawn


def plots_drawn(sweep: Path, timeout_s: float = 300) -> bool:
    """Wait until the sweep's background plots are drawn (plots.json); whether it drew any."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads((sweep / "plots.json").read_text()).get("state") != "drawing":
                return True
        except FileNotFoundError:
            return False
        except ValueError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"the plots of {sweep} were not drawn in {timeout_s} s")


def best(cmds: dict[str, Cmd], repeats: int, cwd: str | None = None) -> dict[str, float]:
    """Each command's best wall time over ``repeats`` rounds, the commands alternating in each round."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(repeats):
        for name, cmd in cmds.items():
            times[name].append(timed(cmd, cwd=cwd))
    return {k: min(v) for k, v in times.items()}


def ratio(name: str, ours: float, base: float, what: str, target: str = "") -> None:
    mark = ""
    if target:
        op, value = target.split()
        ok = ours / base <= float(value) if op == "<=" else ours / base >= float(value)
        mark = f"  target {target}: {'met' if ok else 'MISSED'}"
    print(f"{name:32s} {ours:7.2f} s / {base:6.2f} s = {ours / base:5.2f}x  ({what}){mark}", flush=True)


def time_to_file(cmd: list[str], path_glob: str, root: Path, timeout_s: float = 300,
                 env: dict[str, str] | None = None) -> float:
    """Seconds from the command's start until a file matching ``path_glob`` exists under ``root``;
    the command is then left to finish."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while time.perf_counter() - start < timeout_s:
            if next(root.glob(path_glob), None) is not None:
                return time.perf_counter() - start
            if proc.poll() is not None and next(root.glob(path_glob), None) is None:
                raise SystemExit(f"command ended ({proc.returncode}) before {path_glob}: {' '.join(cmd)}\n"
                                 f"{proc.stderr.read()[-2000:]}")
            time.sleep(0.01)
        raise SystemExit(f"no {path_glob} after {timeout_s} s: {' '.join(cmd)}")
    finally:
        proc.wait()


def job_seconds(sweep: Path) -> list[float]:
    return [r.wall_time_s for p in sorted(sweep.rglob(RESULT_FILE))
            if (r := read_result(p.parent)) is not None and r.wall_time_s is not None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=8)
    parser.add_argument("--large", type=int, default=24)
    parser.add_argument("--only", default="help,import,first,jobs,report,gain")
    parser.add_argument("--before", help="another hexsweep checkout, timed in the same loops")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    before = before_env(args.before)
    versions = ("", BEFORE) if before is not None else ("",)
    noop_app = str(Path(__file__).with_name("noop_app.py"))
    torch_cmd = [PY, "-c", "import torch"]
    print(f"start: load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = f"paths.outputs={tmp}"
        run_timed(hexsweep_cmd("debug=tiny", "trainer.epochs=0", "strength.games=0", out))  # the dataset, once
        if "help" in parts or "import" in parts:
            t = best({"torch": torch_cmd, **sides("help", hexsweep_cmd("--help"), before),
                      **sides("import", [PY, "-c", "import hexsweep.train"], before)}, args.repeats)
            for v in versions:
                ratio("--help / import torch" + v, t["help" + v], t["torch"], "start-up", "<= 1.3")
                ratio("import hexsweep.train / torch" + v, t["import" + v], t["torch"], "start-up")
        if "first" in parts:
            firsts: dict[str, list[float]] = {f"{k}{v}": [] for k in ("sweep", "single") for v in versions}
            for i in range(args.repeats):
                for v in versions:
                    env = before if v else None
                    first = ("trainer.epochs=1", "trainer.checkpoint_every_steps=1", out)
                    sweep_dir = Path(tmp) / f"first{v.strip()}-{i}"
                    sweep = hexsweep_cmd("-m", "seed=0", *TINY, *first, f"hydra.sweep.dir={sweep_dir}")
                    firsts["sweep" + v].append(time_to_file(sweep, "*/last.pt", sweep_dir, env=env))
                    run_dir = Path(tmp) / f"single{v.strip()}-{i}"
                    firsts["single" + v].append(time_to_file(
                        hexsweep_cmd("debug=tiny", "strength.games=0", *first, f"hydra.run.dir={run_dir}"), "last.pt",
                        run_dir, env=env))
            for v in versions:
                ratio("first step: sweep / single run" + v, min(firsts["sweep" + v]), min(firsts["single" + v]),
                      "a one-job sweep's first training step against the same job alone")
        if "jobs" in parts or "report" in parts:
            results: dict[str, dict[int, float]] = {}
            sizes = (args.small, args.large) if "jobs" in parts else (args.small,)
            for n in sizes:
                seeds = ",".join(str(i) for i in range(n))
                cmds: dict[str, Cmd] = {"bare": [PY, noop_app, "-m", f"+seed={seeds}", "hydra/launcher=joblib",
                                                 "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp}/bare-{n}"]}
                for v in versions:  # each side its own folders: a sweep folder is not run twice
                    tag, env = v.strip(), before if v else None
                    hexsweep = hexsweep_cmd("-m", f"seed={seeds}", "trainer.epochs=0", *TINY, out,
                                            "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp}/noop{tag}-{n}")
                    launcher = [PY, noop_app, "-m", f"+seed={seeds}", "hydra/launcher=hexsweep",
                                "hydra.launcher.n_jobs=2", "hydra.launcher.progress=off",
                                f"hydra.sweep.dir={tmp}/launcher{tag}-{n}"]
                    cmds["hexsweep" + v] = (hexsweep, env) if env else hexsweep
                    cmds["launcher" + v] = (launcher, env) if env else launcher
                # a second round must not find the first's sweep folders (resume, owner): fresh ones per round
                t = best_fresh(cmds, args.repeats, tmp)
                for k, v in t.items():
                    results.setdefault(k, {})[n] = v
            if "jobs" in parts:
                slope = {k: (v[args.large] - v[args.small]) / (args.large - args.small) for k, v in results.items()}
                for v in versions:
                    ratio("per job: launcher / joblib" + v, slope["launcher" + v], slope["bare"], "a bare app",
                          "<= 1.2")
                    ratio("per job: hexsweep.train / joblib" + v, slope["hexsweep" + v], slope["bare"], "no-op jobs",
                          "<= 2")
                    for k in ("hexsweep" + v, "launcher" + v):
                        fixed = results[k][args.small] - slope[k] * args.small
                        print(f"{'':32s} {k}: fixed start-up {fixed:.2f} s (joblib's "
                              f"{results['bare'][args.small] - slope['bare'] * args.small:.2f} s)")
                    ratio(f"whole sweep of {args.large}: hexsweep / joblib" + v, results["hexsweep" + v][args.large],
                          results["bare"][args.large], "no-op jobs")
            for v in versions:
                ratio(f"whole sweep of {args.small}: hexsweep / joblib" + v, results["hexsweep" + v][args.small],
                      results["bare"][args.small], "no-op jobs, to the last line", "<= 2.0")
                if (plotted := results.get("hexsweep" + v + PLOTTED, {}).get(args.small)) is not None:
                    ratio("  ... and its plots drawn" + v, plotted, results["bare"][args.small],
                          "the background plots' end")
        if "report" in parts:
            for n in (4, 20, 200):
                make_jobs(Path(tmp) / f"jobs-{n}", n)
            cmds = {"base": [PY, "-c", "import pandas, matplotlib.pyplot"]}
            for n in (4, 20, 200):
                cmds.update(sides(f"{n} jobs", [PY, "-m", "hexsweep.analyze", f"{tmp}/jobs-{n}"], before))
            cmds.update(sides(f"{args.small} no-op jobs", [PY, "-m", "hexsweep.analyze", f"{tmp}/noop-{args.small}-r0"],
                              before))
            t = best(cmds, args.repeats, cwd=tmp)
            for name in cmds:
                if name != "base":
                    target = "<= 2" if not name.startswith("200 jobs") else ""
                    ratio(f"analyze {name} / pandas+pyplot", t[name], t["base"], "report", target)
        if "gain" in parts:
            for v in versions:
                gain_figure(tmp, out, args.repeats, v, before if v else None)
    print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")


def best_fresh(cmds: dict[str, Cmd], repeats: int, tmp: str) -> dict[str, float]:
    """``best`` for sweeps: each round in its own sweep folders (``hydra.sweep.dir=...-r<round>``)."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for r in range(repeats):
        for name, cmd in cmds.items():
            argv, env = cmd if isinstance(cmd, tuple) else (cmd, None)
            argv = [f"{a}-r{r}" if a.startswith("hydra.sweep.dir=") else a for a in argv]
            times[name].append(timed((argv, env), cwd=tmp))
            if (drawn := WITH_PLOTS.pop(" ".join(argv), None)) is not None:
                times.setdefault(name + PLOTTED, []).append(drawn)
    return {k: min(v) for k, v in times.items()}


PLOTTED = " +plots"  # the suffix of a sweep's time until its background plots were drawn


def gain_figure(tmp: str, out: str, repeats: int, version: str, env: dict[str, str] | None) -> None:
    """The parallel gain (4 jobs of 12 tiny epochs, sequential / n_jobs=2) against its ceiling, and
    what keeps it below: two one-thread jobs side by side against one alone (hexsweep's jobs, and
    bare torch loops of the same network), and the time both sweeps spend outside their jobs."""
    epochs = ("trainer.epochs=12", *TINY, out)
    seeds = "seed=0,1,2,3"
    tag = version.strip()
    # seq: n_jobs=1, each job with both cores' threads; par: n_jobs=2, one thread each; one: n_jobs=1
    # with one thread (the ceiling's other side: its 4 jobs, each alone, steady a single job's noise)
    sweeps = {"seq": ("hydra.launcher.n_jobs=1",), "par": ("hydra.launcher.n_jobs=2",),
              "one": ("hydra.launcher.n_jobs=1", "num_threads=1")}
    runs: dict[str, list[float]] = {k: [] for k in sweeps}
    jobs: dict[str, list[list[float]]] = {k: [] for k in sweeps}  # each sweep's job times
    loop: dict[str, list[float]] = {"alone": [], "side": []}  # bare torch, ms a step, one thread
    imports: list[float] = []  # what any sweep pays once before its first step: torch and its optimizer
    for i in range(max(1, repeats - 1)):
        imports.append(timed([PY, "-c", OPTIMIZER_IMPORT]))
        for k, extra in sweeps.items():
            sweep = Path(tmp) / f"{k}{tag}-{i}"
            runs[k].append(timed((hexsweep_cmd("-m", seeds, *epochs, *extra, f"hydra.sweep.dir={sweep}"), env)))
            jobs[k].append(job_seconds(sweep))
        loop["alone"] += torch_loops(1, env)
        loop["side"] += torch_loops(2, env)
    seq, par = min(runs["seq"]), min(runs["par"])
    job = {k: statistics.median(t for ts in v for t in ts) for k, v in jobs.items()}  # a job's median time
    gain, ceiling = seq / par, 2 * job["seq"] / job["one"]
    print(f"{'parallel gain / ceiling' + version:32s} {gain:7.2f}x / {ceiling:5.2f}x = {gain / ceiling:5.2f}  "
          f"(sequential {seq:.1f} s, n_jobs=2 {par:.1f} s; a job, one at a time: {job['seq']:.2f} s with 2 "
          f"threads, {job['one']:.2f} s with 1)  target >= 0.9: {'met' if gain / ceiling >= 0.9 else 'MISSED'}",
          flush=True)
    # what keeps it below, from the same runs: the jobs themselves (side by side on two cores), and
    # the time outside them (start-up, the job server's imports, the report) that both sweeps pay
    side_torch = statistics.median(loop["side"]) / statistics.median(loop["alone"])
    side = job["par"] / job["one"]
    print(f"{'':32s} inside the jobs: one-thread jobs side by side run {side:.2f}x their time alone (bare torch "
          f"loops of the same network: {side_torch:.2f}x, the machine's share), so the jobs alone gain "
          f"{1 / side:.2f} of the ceiling", flush=True)
    in_seq = sum(jobs["seq"][runs["seq"].index(seq)])
    in_par = sum(jobs["par"][runs["par"].index(par)]) / 2  # n_jobs=2: two slots
    floor = min(imports)
    best_case = (floor + 4 * job["seq"]) / (floor + 2 * job["par"]) / ceiling
    print(f"{'':32s} outside the jobs: {seq - in_seq:.1f} s sequential, {par - in_par:.1f} s with n_jobs=2 "
          f"(start-up, mostly the job server's torch import, and the report). Importing torch and building "
          f"an optimizer takes {floor:.1f} s, which any sweep pays once: with only that outside its jobs, "
          f"the gain would be {best_case:.2f} of the ceiling", flush=True)


# A torch optimizer imports torch._dynamo (and sympy) when it is built: what the job server preloads
OPTIMIZER_IMPORT = "import torch; torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])"


def torch_loops(side_by_side: int, env: dict[str, str] | None) -> list[float]:
    """Milliseconds a step of ``side_by_side`` bare torch loops (bench/torch_loop.py, one thread
    each) started together."""
    script = str(Path(__file__).with_name("torch_loop.py"))
    procs = [subprocess.Popen([PY, script, "--threads", "1"], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(side_by_side)]
    return [float(p.communicate()[0]) for p in procs]


if __name__ == "__main__":
    main()
