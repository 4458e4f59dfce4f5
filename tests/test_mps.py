"""Apple's MPS GPU, faked: no Mac is at hand. torch.backends.mps.is_available, the torch.mps
memory calls and psutil's available memory are monkeypatched; an MPS out-of-memory error is
injected as torch raises it (a plain RuntimeError). What runs for real: hexsweep's slots, the
job's resource assignment, admission, the sampler, the failure records, the sweeper's blocking
and the monitor."""

import json
import time
from types import SimpleNamespace

import optuna
import psutil
import pytest
import torch
from optuna.distributions import CategoricalDistribution

from hexsweep import faults
from hexsweep.devices import is_oom
from hexsweep.resources import admission, assign, mps
from hexsweep.resources.job import job_resources

SHORT = ("trainer.epochs=1", "trainer.max_steps_per_epoch=2", "strength.games=0")  # a job in about a second
MPS_OOM = ("MPS backend out of memory (MPS allocated: 1.02 GiB, other allocations: 2.31 MiB, max allowed: "
           "9.07 GiB). Tried to allocate 256.00 MiB on private pool. Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 "
           "to disable upper limit for memory allocations (may cause system failure).")


@pytest.fixture
def fake_mps(monkeypatch):
    """A Mac: no NVML GPU, an MPS GPU whose recommended maximum is 20000 MiB, RAM as set here."""
    state = SimpleNamespace(recommended_mb=20_000, driver_mb=0.0, tensors_mb=0.0, fractions=[],
                            available_mb=[64_000.0], ram_reads=0)

    def virtual_memory():
        state.ram_reads += 1
        avail = state.available_mb[min(state.ram_reads, len(state.available_mb)) - 1]
        return SimpleNamespace(available=avail * 2**20, total=32 * 2**30, used=8 * 2**30, percent=25.0)

    def set_fraction(fraction):
        assert isinstance(fraction, float)  # torch refuses anything else
        state.fractions.append(fraction)

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: int(state.recommended_mb * 2**20))
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: int(state.driver_mb * 2**20))
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: int(state.tensors_mb * 2**20))
    monkeypatch.setattr(torch.mps, "set_per_process_memory_fraction", set_fraction)
    monkeypatch.setattr(torch.mps, "empty_cache", lambda: None)
    monkeypatch.setattr(psutil, "virtual_memory", virtual_memory)
    monkeypatch.setattr(assign, "gpu_count", lambda: 0)
    return state


def _mps_oom_above(limit):
    def check(cfg):
        if cfg.batch_size > limit:
            raise RuntimeError(MPS_OOM)
    return check


def test_mps_slots_and_default_n_jobs(fake_mps, tmp_path, monkeypatch):
    from hexsweep.sweep.train_app import TRAIN_APP

    monkeypatch.setattr(assign, "usable_cores", lambda: 10)  # the seed's 10-core Mac
    assert assign.gpu_backend("auto") == ("mps", [0]) and assign.gpu_backend("mps") == ("mps", [0])
    assert assign.gpu_backend("cpu") == ("cpu", [])
    with monkeypatch.context() as driver:  # the driver sizes the sweep without reading MPS memory
        for name in ("recommended_max_memory", "driver_allocated_memory", "set_per_process_memory_fraction"):
            driver.setattr(torch.mps, name, lambda *a, name=name: pytest.fail(f"torch.mps.{name} in the driver"))
        # six experiments at once would put six processes on one GPU: n_jobs defaults to its slots
        assert TRAIN_APP.default_n_jobs(SimpleNamespace(device="auto", slots_per_gpu=None), 6) == mps.DEFAULT_SLOTS
        assert mps.DEFAULT_SLOTS == 2
        assert TRAIN_APP.default_n_jobs(SimpleNamespace(device="auto", slots_per_gpu=3), 6) == 3  # Option B
        assert TRAIN_APP.default_n_jobs(SimpleNamespace(device="cpu", slots_per_gpu=None), 6) == 6
    pool = assign.make_pool("auto", tmp_path, None, None, 6)
    held = [pool.try_acquire() for _ in range(2)]
    assert [(s.name, s.device(), s.threads) for s in held] == [("mps-0", "mps", 5), ("mps-1", "mps", 5)]
    assert pool.try_acquire() is None  # a third job waits
    for s in held:
        s.release()
    plain = assign.Want(lock_dir=tmp_path, parallel=None, cpu_slots=6, pin_visible=True)  # a plain app's job
    with assign.assign(plain) as res:
        assert (res.slot.name, res.device, fake_mps.fractions) == ("mps-0", "mps", [0.5])


def _cfg(tmp_path, **kw):
    res = dict(slots="auto", lock_dir=str(tmp_path / "locks"), cpu_slots=None, gpu_mem_mb=None, ram_mb=None,
               wait_timeout_s=30.0, sample_interval_s=60.0)
    res.update(kw)
    return SimpleNamespace(device="auto", slots_per_gpu=None, num_threads=None, resources=SimpleNamespace(**res),
                           paths=SimpleNamespace(outputs=str(tmp_path)))


def test_each_job_caps_its_share_and_samples_its_mps_memory(fake_mps, tmp_path, monkeypatch):
    monkeypatch.setattr(admission, "job_signature", lambda cfg: {})
    (tmp_path / "job").mkdir()
    fake_mps.driver_mb, fake_mps.tensors_mb = 1234.0, 1000.0
    with job_resources(_cfg(tmp_path), tmp_path / "job", True, 2, {"experiment": "x"}) as res:
        assert (res.slot.name, res.device, res.mps_fraction) == ("mps-0", "mps", 0.5)
        assert fake_mps.fractions == [0.5]  # set in the job, before it allocates anything
        fake_mps.driver_mb = 2345.0
        res.sampler.sample()
        fake_mps.driver_mb = 1500.0
    rows = [json.loads(line) for line in (tmp_path / "job" / "resources.jsonl").read_text().splitlines()]
    assert rows[-1]["mps_allocated_mb"] == 1500.0 and rows[-1]["mps_tensors_mb"] == 1000.0
    assert res.sampler.peak_gpu_mem_mb == 2345.0
    with job_resources(_cfg(tmp_path, slots="off"), tmp_path / "job", False, 1, {}) as single:
        assert single.slot is None and single.mps_fraction is None  # a single run keeps the whole GPU


def test_admission_on_mps_waits_for_unified_memory_then_goes_on(fake_mps, tmp_path, monkeypatch):
    monkeypatch.setattr(admission, "time", SimpleNamespace(monotonic=time.monotonic, sleep=lambda s: None))
    need = admission.Need(ram_mb=None, gpu_mem_mb=6000.0, source="configured")
    seen = []
    fake_mps.available_mb = [4000.0] * 4 + [30_000.0]  # two reads a poll: another job ends after two polls
    want = assign.Want(device="auto", lock_dir=tmp_path, parallel=2, wait_timeout_s=60,
                       need=lambda device_type: seen.append(device_type) or need)
    with assign.assign(want) as res:
        assert seen == ["mps"] and res.slot.name == "mps-0"
    assert fake_mps.ram_reads == 6  # it waited two polls, and started at the third
    fake_mps.available_mb, fake_mps.ram_reads = [4000.0], 0
    assert admission.shortfall(need, None, 0.5) == "needs 6000 MB on the MPS GPU, 4000 MB free for this job"
    fake_mps.available_mb, fake_mps.driver_mb = [64_000.0], 5000.0  # its own cap: 10000 - 5000 held
    assert admission.shortfall(need, None, 0.5) == "needs 6000 MB on the MPS GPU, 5000 MB free for this job"
    fake_mps.available_mb, fake_mps.driver_mb = [9000.0], 0.0
    both = admission.Need(ram_mb=4000.0, gpu_mem_mb=6000.0, source="configured")
    assert admission.shortfall(both, None, 0.5) == "needs 10000 MB of unified memory (RAM + MPS), 9000 MB available"
    with pytest.raises(admission.AdmissionTimeout, match="on the MPS GPU"):
        admission.wait_for_memory(need, None, timeout_s=0.1, poll_s=0.02, mps_fraction=0.1)


def test_mps_out_of_memory_is_oom_retried_and_blocked_by_the_sweeper(tiny_cfg, tmp_path, monkeypatch):
    from hexsweep.lifecycle import train_job_recorded
    from hexsweep.search.trials import Trials
    from hexsweep.sweep.train_app import TRAIN_APP
    from hexsweep.tracking import End

    assert is_oom(RuntimeError(MPS_OOM)) and is_oom(torch.OutOfMemoryError("CUDA out of memory"))
    assert not is_oom(RuntimeError("MPS backend failed to compile a shader")) and not is_oom(MemoryError())
    assert End(None, RuntimeError(MPS_OOM)).status == "oom"
    monkeypatch.setattr(faults, "check_batch_size", _mps_oom_above(128))
    r = train_job_recorded(tiny_cfg("batch_size=256", "trainer.epochs=1"), tmp_path / "oom")
    assert r.status == "oom" and r.batch_size == 256 and "MPS backend out of memory" in r.error.message
    retried = train_job_recorded(tiny_cfg("batch_size=256", "retry_on_oom=true", *SHORT), tmp_path / "retry")
    assert (retried.status, retried.batch_size, retried.oom_batch_size) == ("completed", 128, 256)

    study = optuna.create_study()
    study.enqueue_trial({"batch_size": 256})
    space = {"batch_size": CategoricalDistribution([128, 256, 512])}
    trial = study.ask(space)
    trials = Trials(study, TRAIN_APP, None, {}, "s", space, [], ["minimize"], tmp_path, None)
    assert trials.finish(trial, tmp_path / "oom") == "failed"
    assert study.trials[0].user_attrs["oom_batch_size"] == 256
    assert trials.oom_blocked({"batch_size": 512}) == trial.number  # not proposed again
    assert trials.oom_blocked({"batch_size": 128}) is None


def test_the_probe_takes_an_mps_out_of_memory_error_as_the_limit(tiny_cfg, monkeypatch):
    import pandas as pd

    from hexsweep.data.dataset import HexDataset
    from hexsweep.data.generate import ensure_dataset
    from hexsweep.probe import measure, recommend

    cfg = tiny_cfg("probe.steps=1", "probe.warmup_steps=0")
    folder, _ = ensure_dataset(cfg.data, cfg.paths.data)
    monkeypatch.setattr(faults, "check_batch_size", _mps_oom_above(64))
    row = measure(cfg, HexDataset(folder, "train", cfg.data.board_size), torch.device("cpu"), 128)
    assert row["status"] == "oom" and row["error"].startswith("MPS backend out of memory")
    batches = pd.DataFrame([{"batch_size": 64, "status": "ok", "samples_per_s": 100.0}])
    packs = pd.DataFrame([{"k": 1, "status": "ok", "total_samples_per_s": 100.0},
                          {"k": 2, "status": "ok", "total_samples_per_s": 160.0}])
    assert recommend(batches, packs, torch.device("mps")) == "batch_size=64 slots_per_gpu=2"


def test_monitor_shows_the_mps_gpu_and_each_jobs_share(fake_mps, tmp_path):
    from hexsweep.monitor import snapshot
    from hexsweep.resources.slots import SlotPool

    job = tmp_path / "sweep" / "3"
    job.mkdir(parents=True)
    (job / "resources.jsonl").write_text('{"rss_mb": 900}\n{"rss_mb": 950, "mps_allocated_mb": 2048.4}\n')
    slot = SlotPool(tmp_path / "locks", [0], 2, 2, 10, kind="mps").acquire()
    slot.describe({"experiment": "policy_heavy", "job_dir": str(job)})
    try:
        out = snapshot(tmp_path / "locks")
    finally:
        slot.release()
    assert "GPU mps " in out and "at most 20000 MiB per process (Metal), 64000 MiB RAM available" in out
    assert "slot mps-0: pid" in out and "policy_heavy" in out and ", MPS 2048 MiB" in out


def test_a_sweeps_job_on_mps_records_its_gpu_peak_in_the_table(fake_mps, tiny_cfg, tmp_path, monkeypatch):
    """train_job in a sweep: the MPS slot, its share, and peak_gpu_mem_mb from the sampler (torch
    has no peak counter on MPS). The training itself runs on the CPU: there is no MPS GPU here."""
    from hexsweep import lifecycle as train
    from hexsweep.report.aggregate import aggregate

    monkeypatch.setattr(train, "resolve_device", lambda spec: torch.device("cpu"))
    fake_mps.driver_mb = 777.0
    record = train.train_job(tiny_cfg(*SHORT), tmp_path / "sweep" / "0", info={"multirun": True})
    assert (record.slot, record.status, fake_mps.fractions) == ("mps-0", "completed", [0.5])
    assert record.peak_gpu_mem_mb == 777.0
    assert aggregate([tmp_path / "sweep"]).iloc[0]["peak_gpu_mem_mb"] == 777.0
