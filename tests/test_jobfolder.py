"""result.json as a typed, versioned ``JobResult``: hexsweep/jobfolder.py is the only module that
knows its keys; a file of the wrong shape is a corrupt result naming the key, never a crash."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest

from hexsweep.jobfolder import (
    RESULT_VERSION,
    JobError,
    JobFolder,
    JobResult,
    Objective,
    read_result,
    record_death,
)
from hexsweep.report.aggregate import aggregate


def finished(**more) -> JobResult:
    return JobResult("completed", pid=os.getpid(), host=socket.gethostname(), experiment="default",
                     overrides=["seed=1"], job={"name": "train", "num": 0, "override_dirname": "seed=1"},
                     objective=Objective("val_objective", "minimize", 1.25), best={"val_objective": 1.25},
                     epochs_run=2, peak_rss_mb=300.0, **more)


def test_a_result_survives_the_round_trip_and_keeps_keys_it_does_not_know(tmp_path):
    folder = JobFolder(tmp_path / "0")
    result = finished()
    folder.finish(result)
    on_disk = json.loads(folder.result_path.read_text())
    assert on_disk["format_version"] == RESULT_VERSION and on_disk["objective"]["value"] == 1.25
    assert "oom_batch_size" not in on_disk and on_disk["error"] is None  # unset keys are left out, as before
    assert read_result(folder.path) == result
    # a key from another hexsweep version is kept, and written back when the driver records a death
    folder.result_path.write_text(json.dumps({**on_disk, "status": "running", "pid": 2**22 + 7,
                                              "from_the_future": {"x": 1}}))
    assert read_result(folder.path).extra == {"from_the_future": {"x": 1}}
    death = record_death(folder.path, "was killed by SIGKILL", "Crashed", {"overrides": ["seed=1"]})
    assert death.status == "crashed" and death.error == JobError("Crashed", "the job's process was killed by SIGKILL")
    again = json.loads(folder.result_path.read_text())
    assert again["from_the_future"] == {"x": 1} and again["objective"]["value"] == 1.25


@pytest.mark.parametrize(("change", "reason"), [
    ({"objective": "low"}, "objective is not an object with value"),
    ({"objective": {"metric": "m"}}, "objective is not an object with value"),
    ({"objective": {"metric": "m", "direction": "minimize", "value": "x"}}, "objective.value is a str, not a number"),
    ({"best": [1, 2]}, "best is a list, not an object"),
    ({"epochs_run": 2.5}, "epochs_run is a float, not an integer"),
    ({"peak_rss_mb": True}, "peak_rss_mb is a bool, not a number"),
    ({"overrides": "seed=1"}, "overrides is a str, not a list of strings"),
    ({"error": {"type": "X"}}, "error is not an object with type, message"),
    ({"format_version": RESULT_VERSION + 1}, "written by a newer hexsweep"),
    ({"status": "exploded"}, "no known status ('exploded')"),
])
def test_a_value_of_the_wrong_type_is_a_corrupt_result_naming_the_key(tmp_path, change, reason):
    job = tmp_path / "3"
    job.mkdir()
    (job / "result.json").write_text(json.dumps({**finished().to_dict(), **change}))
    result = read_result(job)
    assert result.status == "corrupt" and reason in result.error.message
    row = aggregate([tmp_path]).iloc[0]  # the report shows it as that job's problem only
    assert row["status"] == "corrupt" and reason in row["error"]


def test_an_old_file_without_a_version_and_a_nan_objective_read_as_before(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    data = {k: v for k, v in finished().to_dict().items() if k != "format_version"}
    data["objective"]["value"] = None  # NaN as a JSON writer without NaN would store it
    (job / "result.json").write_text(json.dumps(data))
    result = read_result(job)
    assert result.format_version == RESULT_VERSION and math.isnan(result.value) and result.ok


def test_an_unknown_key_is_a_typo_not_a_new_field():
    with pytest.raises(AttributeError, match="no key 'objectve'"):
        finished().update(objectve=1.0)


def test_a_sweep_where_no_job_recorded_a_host_says_unknown_not_this_machine(tmp_path):
    job = tmp_path / "0"
    job.mkdir()
    (job / "result.json").write_text("[]")
    assert aggregate([tmp_path])["host"].isna().all()
