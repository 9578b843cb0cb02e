"""The paper's operating point as a named configuration of the chain's fmc stage: `preset: paper` codes
16-value blocks with 2-bit indices and no scale flag, so a 16-bit map costs exactly 4 bits per value in
its payload; keys the preset fixes are refused beside it."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from chaincomp.errors import UserError
from chaincomp.fmc.bitstream import HEADER_BYTES
from chaincomp.fmc.maps import FmcHooks, resolve_points
from chaincomp.recipe import parse_recipe
from chaincomp.stages.fmc import FmcConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


def test_paper_preset_codes_sixteen_value_blocks_at_four_bits():
    net, x = _net(), torch.randn(4, 3, 8, 8)
    c = FmcConfig(preset="paper", points=["1", "3"])
    points = resolve_points(net, x, c.points, c.block, c.fit_block, c.preset)
    assert all(b[0] * b[1] * b[2] == 16 for b in points.values())
    codec = c.codec()
    assert codec["preset"] == "paper" and codec["mode"] == "cbr" and "index_bits" not in codec
    hooks = FmcHooks(net, points, codec)
    ref = _net()(x)
    y = net(x)
    tot = hooks.total()
    stats = hooks.stats()
    hooks.remove()
    for s in stats.values():                 # one stream per coded map: header + payload
        payload = s["encoded_bytes"] - s["calls"] * HEADER_BYTES
        assert payload * 4 == s["raw_bytes"]  # 16-bit maps at exactly 4 bits per value (4.00x)
    assert tot["ratio"] > 3.0                 # the container headers are the only overhead
    assert torch.allclose(y, ref, atol=0.5)   # near lossless on these maps


def test_keys_the_preset_fixes_are_refused_beside_it():
    with pytest.raises(UserError, match="preset paper fixes index_bits"):
        parse_recipe({"chain": [{"technique": "fmc", "preset": "paper", "index_bits": 3}]})
    r = parse_recipe({"chain": [{"technique": "fmc", "preset": "paper"}]})
    assert r.chain[0].preset == "paper"
