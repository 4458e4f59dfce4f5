"""The logger group: TensorBoard event files read back with TensorBoard's own reader, MLflow runs
queried through MLflow's API from a local SQLite store, a CSV file; and trackers that fail."""

from __future__ import annotations

import importlib.util
import json
import logging
import socket

import pytest
from omegaconf import OmegaConf
from sweep_helpers import read_result, run_sweep, sweep_dirs

from hexsweep.atomic import read_jsonl
from hexsweep.cli import compose
from hexsweep.errors import ConfigError
from hexsweep.jobfolder import JobFolder, JobResult, record_death
from hexsweep.lifecycle import train_job
from hexsweep.sweep.callbacks import finish_tracking
from hexsweep.tracking import PARENT_FILE, enabled, open_trackers, start_sweep

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason="MLflow is not installed: pip install -e '.[mlflow]'")


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_of(acc):
    from tensorboard.plugins.hparams import metadata

    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    return (metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG]),
            metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG]),
            metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG]))


def client_for(outputs):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{outputs}/mlflow.db")


def test_logger_group_selects_one_several_or_none():
    assert enabled(compose([])) == ["tensorboard"]
    assert enabled(compose(["logger=none"])) == []
    assert enabled(compose(["logger=mlflow"])) == ["mlflow"]
    assert enabled(compose(["logger=[tensorboard,mlflow,csv]"])) == ["tensorboard", "mlflow", "csv"]
    cfg = compose(["paths.outputs=/somewhere"])
    assert cfg.logger.mlflow.tracking_uri == "sqlite:////somewhere/mlflow.db"
    with pytest.raises(ConfigError) as err:
        compose(["logger.tensorboard.log_every_n_steps=-1"])
    assert str(err.value) == "logger.tensorboard.log_every_n_steps=-1 is invalid: allowed an integer >= 0"


def test_tensorboard_event_files_hold_the_scalars_and_the_hparams(tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger=[tensorboard,csv]", "logger.tensorboard.log_every_n_steps=2", "optim.lr=0.002")
    job = tmp_path / "job"
    record = train_job(cfg, job, info={"job": {"num": 3}, "overrides": ["optim.lr=0.002", "experiment=policy_heavy"]})
    rows = read_jsonl(job / "metrics.jsonl")
    acc = events(job)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "val/objective", "val/policy_acc", "run/lr", "run/samples_per_s", "run/rss_mb",
            "step/loss", "step/lr", "step/samples_per_s", "step/rss_mb", "hparams/objective"} <= scalars
    val = acc.Scalars("val/objective")
    assert [e.step for e in val] == [r["epoch"] for r in rows]
    assert [e.value for e in val] == pytest.approx([r["val_objective"] for r in rows])
    steps = [e.step for e in acc.Scalars("step/loss")]
    assert steps and all(s % 2 == 0 for s in steps)
    assert acc.Scalars("hparams/objective")[-1].value == pytest.approx(record.value)
    experiment, start, end = hparams_of(acc)
    assert "hparams/objective" in {m.name.tag for m in experiment.metric_infos}
    assert {"optim.lr", "batch_size", "model.dropout", "status", "job"} <= {h.name for h in experiment.hparam_infos}
    hp = start.hparams
    assert hp["optim.lr"].number_value == pytest.approx(0.002) and hp["batch_size"].number_value == 256
    assert hp["experiment"].string_value == "policy_heavy" and hp["job"].number_value == 3
    assert hp["status"].string_value == "completed" and hp["sweep"].string_value == "run"
    from tensorboard.plugins.hparams import api_pb2

    assert end.status == api_pb2.Status.Value("STATUS_SUCCESS")
    with open(job / "metrics.csv") as f:
        header, *lines = f.read().splitlines()
    assert header.startswith("epoch,") and len(lines) == len(rows)


@needs_mlflow
def test_a_failing_job_ends_its_mlflow_run_failed_and_its_hparams_session_failed(tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger=[tensorboard,mlflow]", "fault.raise_at_epoch=1")
    job = tmp_path / "job"
    with pytest.raises(RuntimeError, match="injected failure"):
        train_job(cfg, job, info={"overrides": ["fault.raise_at_epoch=1"]})
    run_id = read_result(job)["tracking"]["mlflow"]["run_id"]  # recorded while running
    client = client_for(tmp_path)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.params["fault.raise_at_epoch"] == "1" and "val_objective" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run_id)} == {"result.json", "error.txt"}
    from tensorboard.plugins.hparams import api_pb2

    assert hparams_of(events(job))[2].status == api_pb2.Status.Value("STATUS_FAILURE")


@needs_mlflow
def test_a_completed_job_ends_its_run_finished_with_its_best_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg("logger=mlflow", "logger.mlflow.log_model=true", "logger.mlflow.experiment_name=mine")
    record = train_job(cfg, tmp_path / "job", info={"overrides": ["seed=0"]})
    client = client_for(tmp_path)
    run = client.get_run(record.tracking["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert client.get_experiment(run.info.experiment_id).name == "mine"
    assert run.data.metrics["final_objective"] == pytest.approx(record.value)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"result.json", "checkpoints"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]
    assert (tmp_path / "mlartifacts").is_dir()  # beside the store, not in the working directory


@needs_mlflow
def test_the_driver_ends_the_run_of_a_job_that_died(tiny_cfg, tmp_path):
    """A job killed hard (SIGKILL, the stall watchdog) leaves its run RUNNING: the post-sweep
    callback ends it from the job folder's status, then the parent run."""
    cfg = tiny_cfg("logger=mlflow")
    sweep = tmp_path / "sweep"
    driver_cfg = OmegaConf.create({**OmegaConf.to_container(cfg, resolve=True),
                                   "hydra": {"overrides": {"task": ["seed=0,1"]}}})
    parent = start_sweep(driver_cfg, sweep)
    assert json.loads((sweep / PARENT_FILE).read_text()) == parent
    job_dir = sweep / "0"
    record = JobFolder(job_dir).start(JobResult("running", job={"num": 0}, multirun=True, overrides=["seed=0"]))
    trackers = open_trackers(cfg, job_dir, record, slot="cpu-0")
    JobFolder(job_dir).update(record)  # what the job records once it runs
    trackers.on_epoch(1, {"epoch": 1, "val_objective": 1.5})
    record_death(job_dir, "was killed by the stall watchdog", "Stalled", {"overrides": ["seed=0"]})
    client = client_for(tmp_path)
    run_id = record.tracking["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "RUNNING"
    finish_tracking(driver_cfg, sweep)
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["status"] == "stalled"
    assert run.data.tags["mlflow.parentRunId"] == parent["run_id"] and run.data.tags["slot"] == "cpu-0"
    assert client.get_run(parent["run_id"]).info.status == "FINISHED"
    assert client.get_experiment(parent["experiment_id"]).name == "hexsweep.train -m seed=0,1"


@needs_mlflow
def test_an_unreachable_mlflow_server_warns_once_and_the_job_goes_on(tiny_cfg, tmp_path, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tiny_cfg("logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}",
                   "logger.mlflow.max_retries=0", "logger.mlflow.request_timeout_s=2")
    with caplog.at_level(logging.WARNING, logger="hexsweep.tracking"):
        record = train_job(cfg, tmp_path / "job")
    assert record.status == "completed" and record.tracking is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "hexsweep.tracking"]
    assert len(warnings) == 1 and warnings[0].startswith("logger mlflow is off for this job")
    assert "hparams/objective" in events(tmp_path / "job").Tags()["scalars"]  # the other logger still ran


@needs_mlflow
def test_a_slow_store_beats_the_heartbeat_while_the_tracker_starts(tiny_cfg, tmp_path, caplog):
    """A tracker's start (its imports, a store that answers slowly) beats no step, but it is no
    stall: under load it outlasted a short stall_timeout_s, and the watchdog killed a healthy
    job before its MLflow run existed. Here a server that accepts and never answers holds the
    start for request_timeout_s, and the heartbeat keeps moving."""
    import multiprocessing

    from hexsweep import heartbeat

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        cfg = tiny_cfg("logger=mlflow", f"logger.mlflow.tracking_uri=http://127.0.0.1:{silent.getsockname()[1]}",
                       "logger.mlflow.max_retries=0", "logger.mlflow.request_timeout_s=1")
        counter = multiprocessing.RawValue("Q", 0)
        heartbeat.attach(counter)
        try:
            with caplog.at_level(logging.WARNING, logger="hexsweep.tracking"):
                trackers = open_trackers(cfg, tmp_path / "job")
        finally:
            heartbeat.attach(None)
    assert trackers.names == [] and "logger mlflow is off" in caplog.text  # the store never answered
    assert counter.value >= 3  # one beat before the start, and the helper's while it waited


@needs_mlflow
@pytest.mark.slow
def test_a_parallel_sweep_logs_every_job_to_one_sqlite_store(tmp_path, data_root, tiny_dataset):
    """Two jobs at once write to one SQLite store; one hangs after epoch 1 and is killed by the stall
    watchdog (SIGKILL), so only the driver can end its run."""
    out = run_sweep(tmp_path, data_root, "logger=mlflow", "fault.hang_at_epoch=1,null", "hydra.launcher.n_jobs=2",
                    "hydra.launcher.stall_timeout_s=10", "hydra.launcher.kill_grace_s=1")
    assert out.returncode == 1, out.stderr
    sweep = sweep_dirs(tmp_path)[0]
    parent = json.loads((sweep / PARENT_FILE).read_text())
    client = client_for(tmp_path)
    assert client.get_run(parent["run_id"]).info.status == "FINISHED"
    runs = client.search_runs([parent["experiment_id"]], f"tags.mlflow.parentRunId = '{parent['run_id']}'")
    by_job = {r.data.tags["job"]: r for r in runs}
    assert sorted(by_job) == ["0", "1"]
    for num, run in by_job.items():
        assert run.info.run_id == read_result(sweep / num)["tracking"]["mlflow"]["run_id"]
        assert run.data.params["optim.lr"] == "0.001" and run.data.params["debug"] == "tiny"
        assert run.data.tags["slot"].startswith("cpu-") and run.data.tags["host"] == socket.gethostname()
    stalled, done = by_job["0"], by_job["1"]
    assert stalled.data.params["fault.hang_at_epoch"] == "1" and done.data.params["fault.hang_at_epoch"] == "null"
    assert stalled.info.status == "FAILED" and stalled.data.tags["status"] == "stalled"
    assert done.info.status == "FINISHED" and done.data.tags["status"] == "completed"
    history = client.get_metric_history(done.info.run_id, "val_objective")
    rows = read_jsonl(sweep / "1" / "metrics.jsonl")
    assert [(m.step, m.value) for m in history] == [(r["epoch"], pytest.approx(r["val_objective"])) for r in rows]
    assert [m.step for m in client.get_metric_history(stalled.info.run_id, "val_objective")] == [1]
    assert {a.path for a in client.list_artifacts(done.info.run_id)} == {"result.json"}
    assert {a.path for a in client.list_artifacts(stalled.info.run_id)} == {"result.json"}
