"""Hostile input to the sweep machinery: malformed job files are that one job's problem."""

from __future__ import annotations

import json
import subprocess
import sys

from hexsweep.jobfolder import completed_result, read_result
from hexsweep.resources.admission import learned_need
from hexsweep.sweep.aggregate import aggregate, load_curves
from hexsweep.sweep.report import write_report


def good(root, name, value):
    d = root / name
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps({
        "status": "completed", "overrides": [f"seed={name}"], "objective": {"metric": "val_objective", "value": value},
        "signature": {"model": "small"}, "peak_rss_mb": 100.0}))
    return d


def test_malformed_job_files_become_corrupt_rows_and_the_rest_goes_on(tmp_path):
    sweep = tmp_path / "sweep"
    good(sweep, "0", 1.0)
    for name, content in {"1": b"[]", "2": b"\xff\xfe not utf-8", "3": b'{"status": "sideways"}'}.items():
        (sweep / name).mkdir()
        (sweep / name / "result.json").write_bytes(content)
        (sweep / name / ".hydra").mkdir()
        (sweep / name / ".hydra" / "overrides.yaml").write_text(f"- seed={name}\n")
    curves = good(sweep, "4", 0.5)
    (curves / "metrics.jsonl").write_bytes(b'5\n\xff\xfe\n{"loss": 1}\n{"epoch": 1, "val_objective": 0.5}\n')
    (sweep / "sweep.json").write_text(json.dumps({"jobs": {"7": "nonsense", "x": {}, "8": {"dir": "8"}}}))

    df = aggregate([sweep]).set_index("job_num")
    assert df.loc[1, "status"] == df.loc[2, "status"] == df.loc[3, "status"] == "corrupt"
    assert "holds a list" in df.loc[1, "error"] and "UnicodeDecodeError" in df.loc[2, "error"]
    assert df.loc[3, "ov.seed"] == "3"  # the overrides still come from Hydra's .hydra/ files
    assert df.loc[8, "status"] == "not_started"
    assert list(load_curves(df.reset_index()).values())[0] == [{"epoch": 1, "val_objective": 0.5}]
    summary = write_report(df.reset_index(), sweep, [sweep])
    assert summary["best"]["job_num"] == 4 and summary["by_status"]["corrupt"] == 3
    out = subprocess.run([sys.executable, "-m", "hexsweep.analyze", str(sweep)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # a new job's memory admission reads its siblings' results: the bad ones are skipped
    assert learned_need(sweep, {"model": "small"}).ram_mb > 100
    # resume reruns a corrupt job: it is not completed
    assert completed_result(sweep / "1", ["seed=1"]) is None
    assert read_result(sweep / "1")["status"] == "corrupt"
