"""Segmentation and super-resolution models: shapes, width factor, and the blocks/head contract."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from chaincomp.models.segnet import SegNet
from chaincomp.models.sr import EDSR, ESPCN, FSRCNN


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _by_blocks(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    for b in m.blocks:
        x = b(x)
    return m.head(x)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("hw", [(180, 240), (37, 53)])
def test_segnet_shapes_and_contract(hw):
    m = SegNet(num_classes=11).eval()
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (1, 11, *hw)
        assert torch.allclose(_by_blocks(m, x), out)
    assert isinstance(m.blocks, nn.ModuleList) and len(m.blocks) >= 3 and isinstance(m.head, nn.Module)


def test_segnet_width_channels_and_copy():
    assert _params(SegNet(width=0.5)) < _params(SegNet()) < _params(SegNet(width=2.0))
    m = SegNet(num_classes=5, in_channels=1, width=0.5).eval()
    x = torch.randn(1, 1, 32, 48)
    with torch.no_grad():
        assert m(x).shape == (1, 5, 32, 48)
        twin = copy.deepcopy(m)
        assert torch.allclose(twin(x), m(x)) and twin.blocks[1].skips is not m.blocks[1].skips
    with pytest.raises(RuntimeError, match="blocks in order"):
        m.blocks[-1](torch.randn(1, 4, 4, 6))


def test_segnet_prunes_with_torch_pruning():
    tp = pytest.importorskip("torch_pruning")
    m = SegNet(width=0.5).eval()
    x = torch.randn(1, 3, 32, 48)
    before = _params(m)
    tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                              ignored_layers=[m.head]).step()
    with torch.no_grad():
        assert m(x).shape == (1, 11, 32, 48) and torch.allclose(_by_blocks(m, x), m(x))
    assert _params(m) < 0.5 * before


@pytest.mark.parametrize("cls", [ESPCN, FSRCNN, EDSR])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_sr_shapes_and_contract(cls, scale):
    m = cls(scale=scale).eval()
    x = torch.rand(2, 3, 10, 13)
    with torch.no_grad():
        out = m(x)
        assert out.shape == (2, 3, 10 * scale, 13 * scale)
        assert torch.allclose(_by_blocks(m, x), out)
    assert isinstance(m.blocks, nn.ModuleList) and len(m.blocks) >= 2


@pytest.mark.parametrize("cls", [ESPCN, FSRCNN, EDSR])
def test_sr_width_and_channels(cls):
    assert _params(cls(width=0.5)) < _params(cls()) < _params(cls(width=2.0))
    assert cls(scale=2, in_channels=1)(torch.rand(1, 1, 8, 8)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError):
        cls(scale=1)


def test_edsr_prunes_with_head_kept():
    tp = pytest.importorskip("torch_pruning")
    m = EDSR(scale=2).eval()
    x = torch.rand(1, 3, 12, 12)
    tp.pruner.MagnitudePruner(m, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                              ignored_layers=[m.head]).step()
    assert m(x).shape == (1, 3, 24, 24)
