"""Full tiny training runs through the real composed config, into tmp_path."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from hexsweep.atomic import read_jsonl
from hexsweep.cli import compose
from hexsweep.config import validate
from hexsweep.data.dataset import HexDataset
from hexsweep.errors import ConfigError, HexsweepError
from hexsweep.hex.encoding import encode_batch, legal_mask
from hexsweep.lifecycle import train_job
from hexsweep.trainer import CHECKPOINT_VERSION, load_checkpoint


def test_tiny_run_learns_and_fills_the_job_folder(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.epochs=4", "optim.lr=3e-3")
    result = train_job(cfg, tmp_path / "job")
    on_disk = json.loads((tmp_path / "job" / "result.json").read_text())
    assert on_disk["status"] == "completed" == result.status
    rows = read_jsonl(tmp_path / "job" / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4] and on_disk["epochs_run"] == 4
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_policy_loss"] < rows[0]["val_policy_loss"]
    uniform = on_disk["data"]["uniform_policy_acc"]
    assert 0 < uniform < 0.2
    assert on_disk["best"]["val_policy_acc"] > 2 * uniform
    best_row = min(rows, key=lambda r: r["val_objective"])
    assert on_disk["objective"] == {"metric": "val_objective", "direction": "minimize",
                                    "value": best_row["val_objective"]}
    assert on_disk["best_epoch"] == best_row["epoch"]
    # the objective uses the fixed reference weights, not the training weights
    assert best_row["val_objective"] == pytest.approx(
        0.5 * best_row["val_policy_loss"] + 0.5 * best_row["val_value_loss"])
    assert on_disk["config"]["batch_size"] == 256 and on_disk["peak_rss_mb"] > 50
    assert 0 <= on_disk["strength"]["win_rate_vs_random"] <= 1
    for key in ("wall_time_s", "started_at", "finished_at", "host", "device", "num_threads"):
        assert key in on_disk


def test_objective_ignores_training_loss_weights(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.epochs=1", "loss.policy_weight=0.9", "loss.value_weight=0.1")
    r = train_job(cfg, tmp_path / "j")
    best = r.best
    assert best["val_loss"] == pytest.approx(0.9 * best["val_policy_loss"] + 0.1 * best["val_value_loss"])
    assert r.value == pytest.approx(
        0.5 * best["val_policy_loss"] + 0.5 * best["val_value_loss"])


def test_other_objective_metric_and_direction(tiny_cfg, tmp_path):
    cfg = tiny_cfg("trainer.epochs=2", "objective.metric=val_policy_acc", "objective.direction=maximize")
    r = train_job(cfg, tmp_path / "j")
    rows = read_jsonl(tmp_path / "j" / "metrics.jsonl")
    assert r.value == max(row["val_policy_acc"] for row in rows)


def test_checkpoint_reload_gives_identical_outputs(tiny_cfg, tmp_path, tiny_dataset):
    cfg = tiny_cfg("trainer.epochs=1")
    train_job(cfg, tmp_path / "j")
    model, state = load_checkpoint(tmp_path / "j" / "best.pt")
    assert state["format_version"] == CHECKPOINT_VERSION and state["epoch"] == 1
    assert state["model_config"]["board_size"] == 5 and state["config"]["batch_size"] == 256
    again, _ = load_checkpoint(tmp_path / "j" / "best.pt")
    batch = next(HexDataset(tiny_dataset, "val").batches(32, shuffle=False))
    planes, legal = encode_batch(batch["boards"], batch["to_move"]), legal_mask(batch["boards"])
    with torch.no_grad():
        a, b = model(planes, legal), again(planes, legal)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    last = torch.load(tmp_path / "j" / "last.pt", weights_only=True)
    assert last["optimizer"] is not None


def test_early_stopping_restores_the_best_weights(tiny_cfg, tmp_path, tiny_dataset):
    """After epoch 1 the hook wrecks the weights; later epochs are worse, and the
    returned model must be the epoch-1 one again, as a fresh evaluation shows."""
    from hexsweep.trainer import evaluate

    cfg = tiny_cfg("trainer.epochs=4", "trainer.patience=2", "optim.lr=1e-7", "data.augment=false",
                   "model.dropout=0.0")

    def wreck(epoch, metrics, model):
        if epoch == 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 2)
        return False

    from hexsweep.data.dataset import HexDataset as DS
    from hexsweep.model import HexNet, NetConfig
    from hexsweep.trainer import train

    model = HexNet(NetConfig.from_config(cfg.model, 5))
    job = tmp_path / "j"
    job.mkdir()
    out = train(cfg, DS(tiny_dataset, "train"), DS(tiny_dataset, "val"), model, torch.device("cpu"), job,
                {}, wreck)
    assert out.best_epoch == 1 and out.stopped_early and len(out.history) == 3 and out.restored_best
    assert out.history[-1]["val_objective"] > out.history[0]["val_objective"] + 0.1
    fresh = evaluate(model, DS(tiny_dataset, "val"), 512, torch.device("cpu"), (0.5, 0.5), (0.5, 0.5),
                     lambda: torch.autocast("cpu", enabled=False))
    assert fresh["val_objective"] == pytest.approx(out.history[0]["val_objective"], rel=1e-5)


def test_final_positions_do_not_train_the_policy(tiny_dataset):
    from hexsweep.trainer import compute_losses

    ds = HexDataset(tiny_dataset, "val")
    rows = ds.gather(np.flatnonzero(ds.field("move") == -1)[:16])
    batch = {"boards": torch.from_numpy(rows["boards"]), "to_move": torch.from_numpy(rows["to_move"]),
             "move": torch.from_numpy(rows["move"].astype(np.int64)),
             "value": torch.from_numpy(rows["value"].astype(np.float32))}
    from hexsweep.model import HexNet, NetConfig

    sums = compute_losses(HexNet(NetConfig(board_size=5, channels=8, blocks_per_stage=1)), batch)
    assert sums["policy_count"] == 0 and sums["policy_sum"] == 0 and sums["count"] == 16


@pytest.mark.parametrize("override, message", [
    ("batch_size=0", "batch_size=0 is invalid: allowed an integer > 0"),
    ("batch_size=-5", "batch_size=-5 is invalid"),
    ("optim.lr=0", "optim.lr=0.0 is invalid: allowed a number > 0"),
    ("optim.lr=-1e-3", "optim.lr=-0.001 is invalid"),
    ("loss.policy_weight=-0.5", "loss.policy_weight=-0.5 is invalid: allowed a number >= 0"),
    ("model.dropout=1.0", "model.dropout=1.0 is invalid: allowed a number in [0, 1)"),
    ("model.dropout=-0.1", "model.dropout=-0.1 is invalid"),
    ("data.board_size=2", "data.board_size=2 is invalid: allowed an integer in 3..19"),
    ("data.board_size=20", "data.board_size=20 is invalid"),
    ("device=gpu", "device='gpu' is invalid: allowed auto, cpu, cuda, cuda:N or mps"),
    ("objective.metric=val_nonsense", "objective.metric='val_nonsense' is invalid: allowed one of"),
])
def test_invalid_values_are_rejected_with_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        compose([override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_both_loss_weights_zero_is_rejected():
    with pytest.raises(ConfigError, match="loss.policy_weight and loss.value_weight are both 0"):
        compose(["loss.policy_weight=0", "loss.value_weight=0"])


def test_unknown_experiment_and_wrong_type_are_errors():
    with pytest.raises(HexsweepError, match="experiment/nope"):
        compose(["experiment=nope"])
    with pytest.raises(HexsweepError, match="batch_size"):
        compose(["batch_size=abc"])


@pytest.mark.parametrize("args, expected", [
    (["batch_size=0"], "hexsweep: error: batch_size=0 is invalid: allowed an integer > 0"),
    (["experiment=nope"], "hexsweep: error: In 'train': Could not find 'experiment/nope': allowed balanced_high_lr, "
                          "balanced_high_weight_decay, balanced_no_dropout, balanced_weights, policy_heavy, "
                          "policy_intermediate"),
])
def test_cli_user_errors_are_one_line(args, expected, tmp_path):
    out = subprocess.run([sys.executable, "-m", "hexsweep.train", *args, f"paths.outputs={tmp_path}"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), out.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


def test_every_config_group_option_composes():
    from hexsweep.cli import CONF_DIR

    for group in ("model", "data", "experiment", "debug"):
        for f in sorted((CONF_DIR / group).glob("*.yaml")):
            cfg = compose([f"{group}={f.stem}"])
            validate(cfg)
            if group == "experiment":
                assert cfg.experiment_name == f.stem


def test_seed_experiments_have_the_seeds_values():
    expected = {
        "balanced_weights": (1e-3, 1e-4, 0.1, 0.5, 0.5),
        "balanced_high_weight_decay": (1e-3, 1e-3, 0.1, 0.5, 0.5),
        "policy_heavy": (1e-3, 1e-4, 0.1, 0.7, 0.3),
        "policy_intermediate": (1e-3, 1e-4, 0.1, 0.33, 0.67),
        "balanced_no_dropout": (1e-3, 1e-4, 0.0, 0.5, 0.5),
        "balanced_high_lr": (3e-3, 1e-4, 0.1, 0.5, 0.5),
    }
    for name, values in expected.items():
        c = compose([f"experiment={name}"])
        got = (c.optim.lr, c.optim.weight_decay, c.model.dropout, c.loss.policy_weight, c.loss.value_weight)
        assert got == values, name
