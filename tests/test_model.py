import pytest
import torch

from hexsweep.cli import compose
from hexsweep.model import HexNet, NetConfig, count_parameters


def test_resnet18_preset_is_the_seeds_shape():
    cfg = compose(["model=resnet18", "data=hex13"])
    model = HexNet(NetConfig.from_config(cfg.model, cfg.data.board_size))
    assert 10.5e6 < count_parameters(model) < 12e6
    logits, value = model(torch.zeros(2, 3, 13, 13))
    assert logits.shape == (2, 169) and value.shape == (2,)


@pytest.mark.parametrize("head", ["conv", "pooled"])
def test_heads_mask_illegal_cells_and_bound_the_value(head):
    torch.manual_seed(0)
    model = HexNet(NetConfig(board_size=5, channels=8, blocks_per_stage=1, head=head)).eval()
    planes = torch.randn(4, 3, 5, 5) * 10
    legal = torch.rand(4, 25) > 0.5
    logits, value = model(planes, legal)
    assert logits.shape == (4, 25)
    probs = torch.softmax(logits, 1)
    assert probs[~legal].max() == 0
    assert torch.allclose(probs.sum(1), torch.ones(4))
    assert value.abs().max() <= 1
    # a full board (no legal cell) still gives finite numbers
    full_logits, _ = model(planes, torch.zeros(4, 25, dtype=torch.bool))
    assert torch.isfinite(torch.log_softmax(full_logits, 1)).all()
