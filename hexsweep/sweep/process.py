"""One process per job, never forked from a threaded process.

Jobs start from multiprocessing's ``forkserver``: a fresh interpreter (fork + exec, safe from
any parent) that imports torch and the task's module once, stays single-threaded, and forks
one child per job. The driver itself may run threads (progress line, Optuna heartbeats,
SQLite, logging): a child forked straight from it could inherit a lock that one of those
threads held at that moment and hang for ever (this happened: a job stuck in
``sqlite3Malloc``). A forked child of the server starts in milliseconds, never shares CUDA
state with the driver (neither the driver nor the server initialises CUDA), and runs
Hydra's own ``run_job``, so the job's folder, logging, ``JobReturn`` and chdir are Hydra's.

The payload (task function, Hydra context, config) goes to the child cloudpickled: the task
function of ``python -m pkg.app`` or of a script is defined in ``__main__`` and wrapped by
``@hydra.main``, which plain pickle cannot reference. As with any forkserver or spawn
start, the app's script is imported again in the job (as ``__mp_main__``): its
``@hydra.main`` call must sit under ``if __name__ == "__main__":``, as Hydra's examples do.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from types import ModuleType
from typing import Any

import cloudpickle

PR_SET_PDEATHSIG = 1
FROZEN = "hexsweep.sweep.frozen"
JOB_PROCESS_ENV = "HEXSWEEP_JOB_PROCESS"

_context: Any = None


class JobRaised(Exception):
    """A job's exception that could not travel back to the driver as itself."""


def server_preload(task_function: Any, extra: tuple[str, ...]) -> list[str]:
    """What the job server imports once: what the app's module imports, and what its app declares.

    Not the app's main module itself: multiprocessing runs it again in every job (as
    ``__mp_main__``), and runpy warns when that module is already imported under its name."""
    main = sys.modules.get("__main__")
    mods = list(extra)
    module = getattr(task_function, "__module__", None)
    sources = [main] if module == "__main__" else [main, sys.modules.get(module or "")]
    for source in sources:
        if source is None or getattr(getattr(source, "__spec__", None), "name", "").endswith("__main__"):
            continue  # python -m pytest, python -m pkg: the runner's own main, not the app's
        for value in vars(source).values():
            name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str) and name in sys.modules and not name.startswith(("__main__", "__mp_main__")):
                mods.append(name)
    if module and module in sys.modules and module not in ("__main__", "__mp_main__"):
        mods.append(module)
    return [*dict.fromkeys(mods)]


def context(preload: list[str]) -> Any:
    """The forkserver context, started once per driver with ``preload``.

    multiprocessing keeps one server per process; a later call (a second sweep in the same
    interpreter, as in tests) reuses it, and its jobs import what the server lacks."""
    global _context
    if _context is None:
        ctx = multiprocessing.get_context("forkserver")
        # last: freeze the server's heap once everything is imported (sweep/frozen.py)
        ctx.set_forkserver_preload([*(m for m in preload if m != FROZEN), FROZEN])
        from multiprocessing import forkserver

        # OpenBLAS (numpy's, scipy's) starts its worker threads when it loads: in the server it
        # must not, since the server forks. Jobs do their heavy work in torch, whose threads are
        # set per job; numpy's own BLAS calls in a job then run on one thread.
        saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS")}
        os.environ.update({k: "1" for k in saved})
        # A closed terminal sends SIGHUP to its whole process group: the server and the resource
        # tracker it starts would die of it (multiprocessing makes them ignore only SIGINT and
        # SIGTERM), and the jobs' trackers then print KeyError tracebacks. An ignored signal stays
        # ignored across exec, so they start with it ignored; the driver handles SIGHUP itself.
        hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            forkserver.ensure_running()  # fork+exec now, while the driver composes the jobs
        finally:
            signal.signal(signal.SIGHUP, hup)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        _context = ctx
        atexit.register(_stop_server)
    return _context


def _stop_server() -> None:
    """At the driver's exit, SIGTERM to the job server. A server still importing its preload (a
    sweep refused before its first job: a bad value, a busy folder) notices its driver gone only
    once the imports end, and burnt seconds of CPU after the command had exited. The driver has
    waited for its jobs by then; a job still running dies with the server (its parent-death
    signal), as when the driver is killed."""
    from multiprocessing import forkserver

    # multiprocessing keeps the server's pid in a private attribute: no public accessor
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def start_server_early(argv: list[str], preload: tuple[str, ...]) -> None:
    """For an app that knows what its jobs import: start the job server before the app's own
    imports when the command line is a sweep through the hexsweep launcher, so that the two
    interpreters import in parallel (a sweep's first job starts seconds sooner)."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    other = [a.partition("=")[2] for a in argv if a.lstrip("+").startswith("hydra/launcher=")]
    if multirun and (not other or other[-1] == "hexsweep") and not any(a.startswith("--") and a != "--multirun"
                                                                         for a in argv):
        context(list(preload))


# What every job of a driver shares (the task function, Hydra's context and singletons): pickled once
# per driver, not once per job. Hydra's ConfigStore and plugin registry are thousands of objects, and
# cloudpickle walks each of them (~0.05-0.1 s a job). The objects are kept, not their ids, so that a
# later driver in the same process (tests) cannot be handed another driver's blob.
SHARED = ("task_function", "hydra_context", "singleton_state")
_shared: tuple[tuple[Any, ...], bytes] | None = None


def _shared_blob(payload: dict[str, Any]) -> bytes:
    global _shared
    objects = tuple(payload[k] for k in SHARED)
    if _shared is None or any(a is not b for a, b in zip(_shared[0], objects, strict=True)):
        shared = {k: payload[k] for k in SHARED}
        shared["task_function"] = task_payload(shared["task_function"])
        _shared = (objects, cloudpickle.dumps(shared))
    return _shared[1]


def start_job(ctx: Any, name: str, payload: dict[str, Any]) -> tuple[Any, Connection, Any]:
    """Start one job; returns (process, the driver's end of its result pipe, its beat counter)."""
    beat = ctx.RawValue("Q", 0)
    parent_end, child_end = ctx.Pipe(duplex=False)
    own = _dumps({k: v for k, v in payload.items() if k not in SHARED})  # the job's config, env, cwd
    blob = (_shared_blob(payload), own)
    proc = ctx.Process(target=_job_main, name=name, args=(blob, child_end, beat), daemon=False)
    proc.start()
    child_end.close()
    return proc, parent_end, beat


def receive(conn: Connection) -> dict[str, Any] | None:
    """The job's answer (status, value, working_dir, task_name), or None if it sent none."""
    try:
        if conn.poll():
            return pickle.loads(conn.recv_bytes())
    except (EOFError, OSError, pickle.UnpicklingError, AttributeError, ImportError):
        return None
    return None


def signal_job(proc: Any, sig: int) -> None:
    """Signal the job's whole process group (its DataLoader or generation workers too)."""
    if proc.pid is None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):  # not yet its own group leader
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, sig)


# ---- in the job process ---------------------------------------------------------------
def _die_with_parent() -> None:
    """Linux: SIGTERM if the job server dies (it dies with the driver): no orphaned jobs."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _let_the_server_die_with_the_driver() -> None:
    """Close this job's copy of the job server's "alive" pipe.

    multiprocessing hands every child of the forkserver the write end of the pipe whose EOF
    tells the server that its driver is gone, so that the child could start processes of its
    own through the server. The server then outlives a killed driver for as long as any job
    runs, and so do the jobs (their parent-death signal waits for the server). Jobs never
    start processes through the server (data generation uses spawn), so they let it go: a
    driver killed by SIGKILL takes the server, and with it every job, down."""
    from multiprocessing import forkserver

    server = forkserver._forkserver  # multiprocessing's module-level server handle (private)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None


def _take_resources(spec: dict[str, Any] | None, cfg: Any, threads: int | None) -> None:
    """What the runner takes for a job that does not take its own (a plain app's), decided by
    resources/assign.py: a slot of hexsweep's pool (a GPU share, else a share of the cores), its
    threads, its device; a CUDA slot's GPU becomes the job's only visible GPU, before the app can
    touch CUDA. Held for the job's whole life: the kernel releases the slot when the process ends."""
    from pathlib import Path

    from hexsweep.resources.assign import Want, hold

    job_dir = Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir)
    spec = spec or {}
    hold(Want(lock_dir=spec.get("lock_dir"), slots_per_gpu=spec.get("slots_per_gpu"), cpu_slots=spec.get("cpu_slots"),
              parallel=None, num_threads=threads, pin_visible=True,
              describe={"overrides": list(cfg.hydra.overrides.task), "job_dir": str(job_dir)}))


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def _dumps(obj: Any) -> bytes:
    """Plain pickle when it can (fast: a JobReturn is configs and a value); cloudpickle for what only
    it can pickle (a lambda, a class defined in a script). cloudpickle's lookup of functions by
    module walks every loaded module, which costs ~0.3 s in a process that imported torch."""
    try:
        return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        return cloudpickle.dumps(obj)


class TaskRef:
    """The task function of ``python -m pkg.app`` or ``python app.py``: ``@hydra.main`` wraps it, and
    multiprocessing imports the app's main module again in each job (as ``__mp_main__``), so the job
    finds it there by name instead of receiving it pickled by value."""

    def __init__(self, name: str) -> None:
        self.name = name

    def resolve(self) -> Any:
        main = sys.modules["__main__"]
        return getattr(main, self.name).__wrapped__


def task_payload(task_function: Any) -> Any:
    """How the task function travels to a job: by name when the main module has it, else pickled."""
    main = sys.modules.get("__main__")
    name = getattr(task_function, "__name__", None)
    if (getattr(task_function, "__module__", None) == "__main__" and name and main is not None
            and getattr(getattr(main, name, None), "__wrapped__", None) is task_function):
        return TaskRef(name)
    return task_function


def _send(conn: Connection, status: str, ret: Any) -> None:
    """What the driver needs to rebuild Hydra's JobReturn: the value, and what run_job learnt in
    the job (its working dir and name). Not the JobReturn itself: its configs carry the job's
    own copies of config classes, which only the slow cloudpickle can pickle."""
    value = ret._return_value
    if status == "failed" and isinstance(value, BaseException) and value.__traceback__ is not None:
        # a pickled exception loses its traceback: keep the job's frames as a note, which
        # Hydra prints with the error in the driver
        frames = "".join(traceback.format_tb(value.__traceback__))
        value.add_note(f"[in the job process]\nTraceback (most recent call last):\n{frames.rstrip()}")
    answer = {"status": status, "value": value, "working_dir": ret.working_dir, "task_name": ret.task_name}
    try:
        data = _dumps(answer)
    except Exception:  # an unpicklable return value or exception: send what can be sent
        text = "".join(traceback.format_exception(value)) if isinstance(value, BaseException) else repr(value)
        answer["value"] = JobRaised(text) if isinstance(value, BaseException) else text
        data = _dumps(answer)
    conn.send_bytes(data)


def _with_warm_plugins(state: dict[str, Any]) -> dict[str, Any]:
    """The driver's Hydra singletons, with the plugin registry this process inherited from the job
    server (sweep/warm_hydra.py). Hydra's ``get_state`` leaves the registry out and ``set_state``
    rebuilds it by scanning every plugin module again (~0.05 s a job); the server found the same
    plugins, on the same path, once for every job."""
    from hydra.core.plugins import Plugins
    from hydra.core.singleton import Singleton

    warm = Singleton._instances.get(Plugins)
    if warm is None or Plugins in state["instances"]:
        return state
    return {**state, "instances": {**state["instances"], Plugins: warm}}


def _job_main(blob: tuple[bytes, bytes], conn: Connection, beat: Any) -> None:
    """The job process: Hydra's run_job on the job's config; the JobReturn goes back by pipe."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # its own group: the driver can stop its workers with it
    _let_the_server_die_with_the_driver()
    _die_with_parent()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)  # ignored only by the server (context())
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobStatus, run_job, setup_globals

    from hexsweep import heartbeat

    p = {**pickle.loads(blob[0]), **pickle.loads(blob[1])}
    os.environ.clear()
    os.environ.update(p["env"])
    os.environ[JOB_PROCESS_ENV] = "1"
    with contextlib.suppress(OSError):
        os.chdir(p["cwd"])
    heartbeat.attach(beat)
    if p.get("slots") or p["threads"]:  # else the job takes its own (hexsweep.train's: resources/job.py)
        _take_resources(p.get("slots"), p["config"], None if p.get("slots") else p["threads"])
    setup_globals()
    Singleton.set_state(_with_warm_plugins(p["singleton_state"]))
    HydraConfig.instance().set_config(p["config"])
    try:
        task = p["task_function"]
        task = task.resolve() if isinstance(task, TaskRef) else task
        ret = run_job(hydra_context=p["hydra_context"], config=p["config"], task_function=task,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    except KeyboardInterrupt:
        raise SystemExit(130) from None  # multiprocessing's exit path runs the finalizers
    except BaseException as e:  # SystemExit from the task, or Hydra itself failing
        from hydra.core.utils import JobReturn

        ret = JobReturn(overrides=list(p["config"].hydra.overrides.task), status=JobStatus.FAILED)
        ret._return_value = e
    _send(conn, "completed" if ret.status == JobStatus.COMPLETED else "failed", ret)
    conn.close()
