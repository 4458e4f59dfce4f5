"""Slots, admission and GPU paths (NVML mocked where no GPU exists)."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hexsweep.jobfolder import sibling_results
from hexsweep.resources import admission, assign, gpus
from hexsweep.resources import job as jobres
from hexsweep.resources.cluster import Assignment, jobs_per_node
from hexsweep.resources.gpus import GpuStatus
from hexsweep.resources.slots import SlotPool, SlotTimeout, read_holders


def _hold(lock_dir, log_path, worker, hold_s):
    pool = SlotPool(Path(lock_dir), [], 1, 2, 4)
    slot = pool.acquire(timeout_s=60, poll_s=0.02)
    start = time.time()
    time.sleep(hold_s)
    end = time.time()
    slot.release()
    with open(log_path, "a") as f:
        f.write(json.dumps({"worker": worker, "slot": slot.name, "start": start, "end": end}) + "\n")


def test_slots_are_exclusive_across_processes(tmp_path):
    log_path = tmp_path / "log.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hold, args=(tmp_path / "locks", log_path, i, 0.3)) for i in range(6)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
    finally:  # a worker stuck on a lock must not outlive the test
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(rows) == 6 and {r["slot"] for r in rows} <= {"cpu-0", "cpu-1"}
    for a in rows:
        for b in rows:
            if a is not b and a["slot"] == b["slot"]:
                assert a["end"] <= b["start"] or b["end"] <= a["start"], "two holders on one slot"
    # never more than two at once
    events = sorted([(r["start"], 1) for r in rows] + [(r["end"], -1) for r in rows])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    assert peak <= 2


def test_a_killed_holder_frees_its_slot(tmp_path, spawn):
    code = ("import sys,time; from pathlib import Path; from hexsweep.resources.slots import SlotPool; "
            "s=SlotPool(Path(sys.argv[1]),[],1,1,2).acquire(); s.describe({'experiment':'x'}); "
            "print('held', flush=True); time.sleep(60)")
    holder = spawn([sys.executable, "-c", code, str(tmp_path)], stderr=None)
    assert holder.stdout.readline().strip() == "held"
    pool = SlotPool(tmp_path, [], 1, 1, 2)
    assert pool.try_acquire() is None
    holders = read_holders(tmp_path)
    assert holders[0]["pid"] == holder.pid and holders[0]["slot"] == "cpu-0"
    with pytest.raises(SlotTimeout, match="no free slot"):
        pool.acquire(timeout_s=0.3)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    slot = pool.acquire(timeout_s=5)
    assert slot.name == "cpu-0"
    slot.release()
    assert read_holders(tmp_path) == []


def test_cpu_threads_are_divided_between_parallel_jobs():
    assert SlotPool(Path("/tmp/x"), [], 1, 2, 16).threads_per_slot() == 8
    assert SlotPool(Path("/tmp/x"), [], 1, 3, 2).threads_per_slot() == 1
    assert SlotPool(Path("/tmp/x"), [0, 1], 2, 1, 16).threads_per_slot() == 4


@pytest.fixture
def two_gpus(monkeypatch):
    """NVML mocked: two GPUs, GPU 1 nearly full."""
    status = {0: GpuStatus(0, "Fake H100", 80_000, 1_000, 79_000, 5.0),
              1: GpuStatus(1, "Fake H100", 80_000, 78_000, 2_000, 99.0)}
    monkeypatch.setattr(gpus, "gpu_count", lambda: 2)
    monkeypatch.setattr(assign, "gpu_count", lambda: 2)
    monkeypatch.setattr(admission, "gpu_status", lambda i: status.get(i))
    return status


def _cfg(**kw):
    base = dict(device="auto", slots_per_gpu=2, resources=SimpleNamespace(lock_dir="/tmp/unused", cpu_slots=None))
    base.update(kw)
    return SimpleNamespace(**base)


def test_gpu_slots_give_each_job_its_own_device(two_gpus, tmp_path):
    pool = jobres.make_pool(_cfg(resources=SimpleNamespace(lock_dir=str(tmp_path), cpu_slots=None)), 4)
    assert pool.candidates() == [("gpu", 0, 0), ("gpu", 1, 0), ("gpu", 0, 1), ("gpu", 1, 1)]
    held = [pool.try_acquire() for _ in range(4)]
    assert [s.device() for s in held] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert pool.try_acquire() is None
    for s in held:
        s.release()
    cpu_pool = jobres.make_pool(_cfg(device="cpu", resources=SimpleNamespace(lock_dir=str(tmp_path),
                                                                            cpu_slots=None)), 3)
    assert cpu_pool.size == 3 and cpu_pool.gpus == []


def test_gpu_slots_are_named_by_the_gpu_itself(monkeypatch, tmp_path):
    """Ray and Slurm show each job only its own GPU, as cuda:0: the lock names must still tell
    GPU 3 from GPU 5 (by UUID), or two jobs on different GPUs would wait for each other."""
    uuids = [f"GPU-{i}a{i}b{i}c{i}d-0000-0000-0000-00000000000{i}" for i in range(8)]
    fake = SimpleNamespace(nvmlDeviceGetCount=lambda: 8, NVMLError=RuntimeError,
                           nvmlDeviceGetHandleByIndex=lambda i: i, nvmlDeviceGetUUID=lambda h: uuids[h])
    monkeypatch.setattr(gpus, "_init", lambda: True)
    monkeypatch.setattr(gpus, "pynvml", fake)
    monkeypatch.setattr(assign, "gpu_count", lambda: 1)
    cfg = _cfg(slots_per_gpu=1, resources=SimpleNamespace(lock_dir=str(tmp_path), cpu_slots=None))
    held = []
    for visible in ("3", "GPU-5a5b"):  # an index, and a UUID prefix as CUDA accepts
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
        held.append(jobres.make_pool(cfg, 1).try_acquire())
    assert [(s.name, s.device()) for s in held] == [("gpu-3a3b3c3d-0", "cuda:0"), ("gpu-5a5b5c5d-0", "cuda:0")]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", uuids[3])
    assert gpus.visible_indices(8) == [3]
    assert jobres.make_pool(cfg, 1).try_acquire() is None  # GPU 3's one slot is taken
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-")  # ambiguous prefix: CUDA stops there
    assert gpus.visible_indices(8) == []
    for s in held:
        s.release()


def test_ray_tasks_size_the_pool_from_their_assigned_cpus():
    assert jobs_per_node(16, Assignment(cpus=4, gpus=1)) == 4
    assert jobs_per_node(2, Assignment(cpus=1, gpus=0)) == 2
    assert jobs_per_node(2, Assignment(cpus=3, gpus=0)) == 1
    assert jobs_per_node(8, Assignment(cpus=0, gpus=0.5)) == 8


def test_memory_admission_waits_and_explains(two_gpus):
    need = admission.Need(ram_mb=None, gpu_mem_mb=10_000, source="configured")
    assert admission.shortfall(need, 0) is None
    assert admission.shortfall(need, 1) == "needs 10000 MB on GPU 1, 2000 MB free"
    with pytest.raises(admission.AdmissionTimeout, match="needs 10000 MB on GPU 1"):
        admission.wait_for_memory(need, 1, timeout_s=0.3, poll_s=0.05)
    huge_ram = admission.Need(ram_mb=1e12, gpu_mem_mb=None, source="configured")
    assert "MB RAM" in admission.shortfall(huge_ram, None)


def test_memory_need_is_learned_from_finished_jobs(tmp_path):
    sig = {"model": [32, 1, 4, False, "conv"], "board_size": 7, "batch_size": 512}
    for i, (status, rss, s) in enumerate([("completed", 900.0, sig), ("completed", 1000.0, sig),
                                          ("failed", 5000.0, sig),
                                          ("completed", 9999.0, {**sig, "batch_size": 1024})]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "result.json").write_text(json.dumps(
            {"status": status, "peak_rss_mb": rss, "peak_gpu_mem_mb": rss / 2, "signature": s}))
    need = admission.learned_need(sibling_results(tmp_path), sig)
    assert need.ram_mb == pytest.approx(1000 * admission.MARGIN)
    assert need.gpu_mem_mb == pytest.approx(500 * admission.MARGIN)
    assert "2 finished job" in need.source
    assert admission.learned_need(sibling_results(tmp_path), {**sig, "batch_size": 64}) is None


def test_default_parallelism_follows_the_gpus(two_gpus, monkeypatch):
    from hexsweep.sweep import train_app

    app = train_app.TRAIN_APP
    cfg = SimpleNamespace(device="auto", slots_per_gpu=3)
    assert app.default_n_jobs(cfg, 100) == 6
    assert app.default_n_jobs(cfg, 4) == 4
    cpu_cfg = SimpleNamespace(device="cpu", slots_per_gpu=3)
    assert app.default_n_jobs(cpu_cfg, 100) == len(os.sched_getaffinity(0))


def test_a_plain_apps_default_parallelism_is_the_pool_its_jobs_draw_from(two_gpus, monkeypatch):
    """A plain app's jobs each hold a slot of hexsweep's pool (device auto: 2 GPUs here); so many
    jobs start at once, not one per core that would wait for a slot with its timeout running."""
    from omegaconf import OmegaConf

    from hexsweep.sweep.apps import PLAIN

    monkeypatch.setattr(assign, "usable_cores", lambda: 16)
    assert PLAIN.default_n_jobs(OmegaConf.create({"hydra": {"launcher": {"slots_per_gpu": None}}}), 100) == 2
    assert PLAIN.default_n_jobs(OmegaConf.create({"hydra": {"launcher": {"slots_per_gpu": 3}}}), 100) == 6
    monkeypatch.setattr(assign, "gpu_count", lambda: 0)
    assert PLAIN.default_n_jobs(OmegaConf.create({}), 100) == 16


def test_scheduled_jobs_size_their_share_from_the_scheduler(monkeypatch, tmp_path):
    """submitit's cpus_per_task sets the node's pool; a Slurm job (its cores are its own) takes
    no CPU slot, unless the hexsweep launcher forked it inside an allocation."""
    for key in (assign.PARALLEL_ENV, "SLURM_JOB_ID", "SLURM_CPUS_PER_TASK", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)  # the test may itself run inside a Slurm job
    monkeypatch.setattr(assign, "usable_cores", lambda: 8)
    assert jobres.parallel_jobs(SimpleNamespace(cpus_per_task=2)) == 4
    assert jobres.parallel_jobs(SimpleNamespace(n_jobs=3)) == 3
    monkeypatch.setattr(assign, "gpu_count", lambda: 0)
    cfg = _cfg(device="cpu", resources=SimpleNamespace(slots="auto", lock_dir=str(tmp_path), cpu_slots=None,
                                                       wait_timeout_s=1, sample_interval_s=60))
    monkeypatch.setattr(jobres.admission, "job_signature", lambda cfg: {})
    monkeypatch.setattr(jobres.admission, "required", lambda *a, **k: admission.Need(None, None, "none"))

    (tmp_path / "job").mkdir()

    def held(parallel: int):
        with jobres.job_resources(cfg, tmp_path / "job", True, parallel, {}) as res:
            return (res.slot.name if res.slot else None), res.threads

    assert held(4) == ("cpu-0", 2)
    monkeypatch.setenv("SLURM_JOB_ID", "123")
    assert held(4) == ("cpu-0", 2)  # inside an allocation, but not a job submitit sent to Slurm
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    assert held(4) == (None, 2)  # Slurm's job: no slot; its cores (8 here) shared as for 4 jobs
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert held(4) == (None, 3)
    monkeypatch.setenv(assign.PARALLEL_ENV, "4")  # forked by the hexsweep launcher in an allocation
    assert held(4) == ("cpu-0", 2)


def test_monitor_lists_machine_and_slot_holders(tmp_path):
    pool = SlotPool(tmp_path, [], 1, 1, 2)
    slot = pool.acquire()
    slot.describe({"experiment": "policy_heavy", "job_dir": "/x/3"})
    out = subprocess.run([sys.executable, "-m", "hexsweep.monitor", "--duration", "0", "--interval", "1",
                          "--lock-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    slot.release()
    assert out.returncode == 0, out.stderr
    assert "CPU" in out.stdout and "RAM" in out.stdout
    assert f"slot cpu-0: pid {os.getpid()} (" in out.stdout and "policy_heavy" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "hexsweep.monitor", "--interval", "0"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 2 and "--interval 0.0 is invalid" in bad.stderr


def test_a_slot_wait_names_the_holder_and_flags_a_stopped_one(tmp_path):
    """"waiting for a free slot" says who holds it: pid, state, job, sweep folder, since when."""
    from hexsweep.resources.slots import describe_holder, holder_state

    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        assert holder_state(sleeper.pid) == "alive but idle (stalled?)"
        os.kill(sleeper.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not holder_state(sleeper.pid).startswith("STOPPED") and time.monotonic() < deadline:
            time.sleep(0.05)  # the kernel marks it stopped a moment after the signal
        assert holder_state(sleeper.pid).startswith("STOPPED")
        line = describe_holder({"slot": "cpu-0", "pid": sleeper.pid, "since": 0, "job_dir": "/runs/sweep-a/3"})
        assert line.startswith(f"cpu-0 held by pid {sleeper.pid} (STOPPED") and "job 3 of /runs/sweep-a" in line
    finally:
        sleeper.kill()
        sleeper.wait()
    assert holder_state(sleeper.pid) == "gone"


def test_a_plain_apps_job_sees_only_its_slots_gpu(two_gpus, tmp_path, monkeypatch):
    """The runner's job process for a plain app (it picks its own cuda device): the slot's GPU
    becomes its only visible one, before the app can touch CUDA."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # what a scheduler gave the sweep
    want = assign.Want(lock_dir=tmp_path, parallel=None, cpu_slots=4, pin_visible=True)
    with assign.assign(want) as first:
        assert (first.slot.name, os.environ["CUDA_VISIBLE_DEVICES"]) == ("gpu0-0", "4")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # the next job's own process, with the sweep's env
        with assign.assign(want) as second:
            assert (second.slot.name, os.environ["CUDA_VISIBLE_DEVICES"]) == ("gpu1-0", "5")


def _admitted_cfg(tmp_path, ram_mb, wait_timeout_s):
    """A CPU job's config that asks for ``ram_mb`` of RAM (resources.ram_mb)."""
    return _cfg(device="cpu", num_threads=None, resources=SimpleNamespace(
        slots="auto", lock_dir=str(tmp_path / "locks"), cpu_slots=None, wait_timeout_s=wait_timeout_s,
        sample_interval_s=60, ram_mb=ram_mb, gpu_mem_mb=None), paths=SimpleNamespace(outputs=str(tmp_path)))


def _fake_available_ram(monkeypatch, readings_mb):
    """psutil's available RAM, one reading per call from ``readings_mb`` (the last one repeats);
    returns the list of readings taken."""
    taken = []

    def virtual_memory():
        taken.append(readings_mb[min(len(taken), len(readings_mb) - 1)])
        return SimpleNamespace(available=taken[-1] * 2**20)

    monkeypatch.setattr(admission.psutil, "virtual_memory", virtual_memory)
    return taken


def test_a_job_whose_memory_cannot_fit_times_out_in_admission(monkeypatch, tmp_path):
    """job_resources waits for the RAM the job needs; it never frees: AdmissionTimeout, and the
    slot it held is free again."""
    monkeypatch.setattr(jobres.admission, "job_signature", lambda cfg: {})
    monkeypatch.setattr(assign, "gpu_count", lambda: 0)
    taken = _fake_available_ram(monkeypatch, [1_000])
    (tmp_path / "job").mkdir()
    with pytest.raises(admission.AdmissionTimeout, match=r"needs 5000 MB RAM, 1000 MB available \(configured\)"), \
            jobres.job_resources(_admitted_cfg(tmp_path, 5_000, 0.1), tmp_path / "job", True, 1, {}):
        pytest.fail("the job started without the memory it needs")
    assert taken and read_holders(tmp_path / "locks") == []


def test_admission_lets_the_job_start_once_memory_frees(monkeypatch, tmp_path):
    """The first reading is short of the need, the next one fits: the job starts then, not before."""
    monkeypatch.setattr(jobres.admission, "job_signature", lambda cfg: {})
    monkeypatch.setattr(assign, "gpu_count", lambda: 0)
    taken = _fake_available_ram(monkeypatch, [1_000, 8_000])
    (tmp_path / "job").mkdir()
    with jobres.job_resources(_admitted_cfg(tmp_path, 5_000, 60), tmp_path / "job", True, 1, {}) as res:
        assert taken[:2] == [1_000, 8_000] and res.slot is not None
    need = admission.Need(ram_mb=5_000, gpu_mem_mb=None, source="configured")
    taken = _fake_available_ram(monkeypatch, [1_000, 1_000, 6_000])
    admission.wait_for_memory(need, None, timeout_s=60, poll_s=0.01)
    assert taken == [1_000, 1_000, 6_000]  # returned at the first reading that fits


def test_the_sampler_keeps_its_peaks_when_its_file_cannot_be_written(tmp_path, caplog):
    """A full disk or a removed job folder: resources.jsonl is not written, but the sampler's
    thread goes on and the job still gets its peaks (its last sample does not raise)."""
    from hexsweep.resources.sampler import ResourceSampler

    blocked = tmp_path / "resources.jsonl"
    blocked.mkdir()  # opening it for appending fails, as on a full disk
    with ResourceSampler(blocked, 0.01, None) as sampler:
        deadline = time.monotonic() + 30
        while sampler.samples < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sampler._thread.is_alive()
    assert sampler.samples >= 4 and sampler.peak_rss_mb > 0 and isinstance(sampler.write_error, OSError)
    assert sum("resource samples not written" in r.message for r in caplog.records) == 1


def test_a_hand_edited_probe_file_is_skipped_row_by_row(tmp_path):
    """probe/latest.json is read by every job's admission: rows that are not probe rows are skipped,
    never a traceback at the job's start."""
    sig = {"model": [32, 1, 4, False, "conv"], "board_size": 7, "batch_size": 512}
    shape = {k: v for k, v in sig.items() if k != "batch_size"}
    (tmp_path / "probe").mkdir()
    good = {"batch_size": 512, "status": "ok", "peak_mem_mb": 100.0}
    for rows, expected in [(["x", 3, None, {"batch_size": 512, "status": "ok", "peak_mem_mb": "big"}, good], 100.0),
                           ("not a list", None)]:
        (tmp_path / "probe" / "latest.json").write_text(json.dumps(
            {"signature": shape, "device": "cpu", "batch_sizes": rows}))
        need = admission.probed_need(tmp_path, sig, "cpu")
        assert (need.ram_mb / admission.MARGIN if need else None) == expected
