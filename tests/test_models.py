"""The zoo's CIFAR ResNets follow He et al.'s 6n+2 rule and the blocks/head contract."""
import pytest
import torch

from chaincomp.errors import UserError
from chaincomp.models import ZOO, build_model
from chaincomp.models.classification import BasicBlock, cifar_resnet


@pytest.mark.parametrize("depth", [8, 14, 20, 32, 44, 56, 110])
def test_cifar_resnet_depth_counts_layers(depth):
    m = build_model(f"resnet{depth}")
    blocks = [b for b in m.blocks if isinstance(b, BasicBlock)]
    assert len(blocks) == 3 * ((depth - 2) // 6)
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size == (3, 3)]
    assert len(convs) + 1 == depth            # 3x3 convs plus the final linear layer
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_depth_outside_the_rule_is_refused():
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)
    with pytest.raises(UserError, match="model.name"):
        build_model("resnet21")
    assert "resnet21" not in ZOO
