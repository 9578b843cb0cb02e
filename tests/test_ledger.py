"""The ledger against hand-computed figures for a small network."""
import torch
from torch import nn

from chaincomp.energy.cost import count_params, profile_model, size_bytes
from chaincomp.exits.model import ExitNetwork
from chaincomp.ledger import exit_costs
from chaincomp.qmodules import QuantPlan, apply_quant


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


def test_macs_bitops_params_fp32():
    m = small_net()
    prof = profile_model(m, torch.zeros(1, 1, 8, 8))
    conv_macs = 8 * 8 * 4 * (1 * 3 * 3)          # output positions x channels x (cin x k x k)
    fc_macs = 256 * 10
    t = prof.total()
    assert t["macs"] == conv_macs + fc_macs == 2304 + 2560
    assert t["bitops"] == (conv_macs + fc_macs) * 32 * 32
    assert count_params(m) == 36 + 2560 + 10
    assert size_bytes(m) == (36 + 2560 + 10) * 4


def test_bitops_and_size_follow_bits():
    m = small_net()
    apply_quant(m, QuantPlan(weight_bits=4, act_bits=2, first_last_bits=None))
    t = profile_model(m, torch.zeros(1, 1, 8, 8)).total()
    assert t["bitops"] == (2304 + 2560) * 4 * 2
    # 4-bit weights + one fp32 scale per output channel; the fp32 bias stays 32-bit
    assert size_bytes(m) == 36 * 4 / 8 + 4 * 4 + 2560 * 4 / 8 + 10 * 4 + 10 * 4


def test_first_last_policy_counts_8_bits():
    m = small_net()
    apply_quant(m, QuantPlan(weight_bits=2, act_bits=2, first_last_bits=8))
    t = profile_model(m, torch.zeros(1, 1, 8, 8)).total()
    assert t["bitops"] == (2304 + 2560) * 8 * 8


def test_exit_costs_include_heads_passed():
    blocks = nn.ModuleList([nn.Conv2d(1, 2, 1, bias=False), nn.Conv2d(2, 2, 1, bias=False)])
    head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    exit0 = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    net = ExitNetwork(blocks, head, {0: exit0})
    costs = exit_costs(net, torch.zeros(1, 1, 4, 4))
    b0, b1, h = 16 * 2 * 1, 16 * 2 * 2, 32 * 3
    assert [c["macs"] for c in costs] == [b0 + h, b0 + h + b1 + h]
