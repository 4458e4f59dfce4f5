"""Beyond one machine: the Slurm preset's submission, and a real sweep through submitit_local."""

import subprocess

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sweep_helpers import sweep_cmd, sweep_dirs

from hexsweep.cli import CONF_DIR
from hexsweep.config import register_schema
from hexsweep.sweep.naming import register_resolvers

submitit = pytest.importorskip("submitit", reason="pip install -e '.[slurm]'")


def slurm_script(tmp_path, monkeypatch, *overrides: str) -> str:
    """The sbatch file hydra-submitit-launcher would submit for our slurm preset (no cluster needed:
    a stand-in ``srun`` on PATH satisfies submitit's check)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{__import__('os').environ['PATH']}")
    register_schema()
    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    # the same mapping as hydra_submitit_launcher's BaseSubmititLauncher.launch
    executor = submitit.AutoExecutor(cluster="slurm", folder=str(tmp_path / "subm"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    params = {k if k in base else f"slurm_{k}": v for k, v in params.items()
              if k not in ("submitit_folder", "max_num_timeout", "_target_")}
    params["name"] = "train"
    executor.update_parameters(**params)
    assert executor._executor.parameters["array_parallelism"] == 16
    return executor._executor._make_submission_file_text("python -m hexsweep.train", "uid")


def test_slurm_preset_asks_for_one_gpu_per_job(tmp_path, monkeypatch):
    text = slurm_script(tmp_path, monkeypatch, "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                        "hydra.launcher.setup=[module load cuda]")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --time=30",
                 "#SBATCH --mem=32GB", "#SBATCH --cpus-per-task=8", "#SBATCH --ntasks-per-node=1"):
        assert line in text, line
    assert "\nmodule load cuda\n" in text


@pytest.mark.slow
def test_submitit_local_sweep_with_a_failing_job(tmp_path, data_root, tiny_dataset):
    """Real processes through real submitit: the raising job is recorded, the report is written,
    and the exit status says so (submitit alone would call the failed job 'completed')."""
    cmd = [c for c in sweep_cmd(tmp_path, data_root, "hydra/launcher=local", "fault.raise_at_epoch=1,99",
                                "resources.cpu_slots=2") if c != "hydra.launcher.progress=off"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "hexsweep: 1 of 2 jobs failed: 0 (fault.raise_at_epoch=1): failed: InjectedFault" in out.stderr
    sweep = sweep_dirs(tmp_path)[0]
    df = pd.read_csv(sweep / "results.csv").set_index("job_num")
    assert df.loc[0, "status"] == "failed" and df.loc[1, "status"] == "completed"
    assert "InjectedFault" in (sweep / "0" / "error.txt").read_text()
    assert (sweep / ".submitit").is_dir()
