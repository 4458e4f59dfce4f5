"""Beyond one machine: the Slurm preset's submission, and a real sweep through submitit_local."""

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sweep_helpers import run_one_failing_sweep

from hexsweep.cli import CONF_DIR
from hexsweep.config import register_schema
from hexsweep.naming import register_resolvers

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
    assert cfg.hydra.launcher.max_num_timeout == 3  # timed-out jobs are requeued, not only preempted ones
    return executor._executor._make_submission_file_text("python -m hexsweep.train", "uid")


def test_slurm_preset_asks_for_one_gpu_per_job(tmp_path, monkeypatch):
    text = slurm_script(tmp_path, monkeypatch, "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                        "hydra.launcher.setup=[module load cuda]")
    for line in ("#SBATCH --gpus-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --time=30",
                 "#SBATCH --mem=32GB", "#SBATCH --cpus-per-task=8", "#SBATCH --ntasks-per-node=1",
                 "#SBATCH --signal=USR2@120"):  # the time a job gets to save its state and be requeued
        assert line in text, line
    assert "\nmodule load cuda\n" in text


@pytest.mark.slow
def test_submitit_local_sweep_with_a_failing_job(tmp_path, data_root, tiny_dataset):
    """Real processes through real submitit: the raising job is recorded, the report is written,
    and the exit status says so (submitit alone would call the failed job 'completed')."""
    sweep, df = run_one_failing_sweep(tmp_path, data_root, "local")
    # each job asked for cpus_per_task=1: the node holds all its cores' worth, 1 thread each
    assert df.loc[1, "num_threads"] == 1 and df.loc[1, "slot"].startswith("cpu-")
    assert (sweep / ".submitit").is_dir()
