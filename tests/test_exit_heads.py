"""Exit heads are rebuilt from the recorded architecture with their own options (BoF codewords)."""
import torch

from chaincomp.stages import rebuild, replay as apply_transform
from chaincomp.exits.heads import BagOfFeaturesHead
from chaincomp.models import build_model


def test_bof_codewords_recorded_and_rebuilt():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 8, 8)
    model = build_model("digits_vgg", in_channels=1, num_classes=10, width=0.5)
    net = apply_transform(model, {"type": "exits", "points": "all", "head": "bof", "num_classes": 10,
                                  "options": {"codewords": 5}}, x)
    heads = list(net.exits.values())
    assert heads and all(isinstance(h, BagOfFeaturesHead) and h.codebook.out_channels == 5 for h in heads)
    assert net.chaincomp_arch["transforms"][-1]["options"] == {"codewords": 5}
    again = rebuild(net.chaincomp_arch, net.state_dict(), x)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net.eval()(x), again.eval()(x)))
