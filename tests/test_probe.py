"""The batch-size probe on CPU with tiny presets; OOM via a fake limit (fault.oom_above_batch_size)."""

import json
import subprocess
import sys

import matplotlib.image as mpimg
import pandas as pd
import pytest

from hexsweep.errors import ConfigError
from hexsweep.probe import check, run
from hexsweep.resources import admission


def test_probe_finds_the_limit_packs_jobs_and_recommends(tiny_cfg, tmp_path, capsys):
    cfg = tiny_cfg("probe.batch_sizes=[256,64,128]", "probe.parallel=[1,2]", "fault.oom_above_batch_size=128",
                   "probe.steps=4", "probe.warmup_steps=1", f"probe.out={tmp_path / 'p'}")
    run(cfg)
    table = pd.read_csv(tmp_path / "p" / "probe.csv")
    sizes = table[table["kind"] == "batch_size"].set_index("batch_size")
    assert list(sizes.index) == [64, 128, 256]  # sorted, stops at the first OOM
    assert list(sizes["status"]) == ["ok", "ok", "oom"]
    assert (sizes.loc[[64, 128], "samples_per_s"] > 0).all() and (sizes.loc[[64, 128], "peak_mem_mb"] > 50).all()
    packs = table[table["kind"] == "parallel"].set_index("k")
    assert list(packs.index) == [1, 2] and packs.loc[2, "slots"] == "cpu-0,cpu-1"
    assert packs.loc[1, "speedup"] == 1.0 and packs.loc[2, "total_samples_per_s"] > 0
    probe = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert probe["recommendation"].startswith("batch_size=")
    out = capsys.readouterr().out
    assert "batch    256: out of memory" in out and f"recommended overrides: {probe['recommendation']}" in out
    assert mpimg.imread(tmp_path / "p" / "probe.png").std() > 0
    # memory admission reads the probe for the same model and batch size
    sig = admission.job_signature(tiny_cfg("batch_size=64"))
    need = admission.required(tiny_cfg("batch_size=64"), None, sig)
    assert need is not None and need.source == "from the probe"
    assert need.ram_mb == pytest.approx(sizes.loc[64, "peak_mem_mb"] * admission.MARGIN)


@pytest.mark.parametrize("override, message", [
    ("probe.batch_sizes=[]", "probe.batch_sizes=[] is invalid: allowed a non-empty list of integers > 0"),
    ("probe.batch_sizes=[0,64]", "probe.batch_sizes=[0, 64] is invalid: 0 is not an integer > 0"),
    ("probe.parallel=[-1]", "probe.parallel=[-1] is invalid"),
])
def test_bad_probe_input_is_one_clear_line(tiny_cfg, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check(tiny_cfg(override))


def test_probe_cli_error_exits_2(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hexsweep.probe", "probe.batch_sizes=[]", f"paths.outputs={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    expected = "hexsweep: error: probe.batch_sizes=[] is invalid: allowed a non-empty list of integers > 0"
    assert out.stderr.strip() == expected
