"""The authors' exit network: exits after every conv and pool (inside residual blocks too), their BoF
head, parts shared as they share them, the folded inference form, costs per exit, their T_k."""
import pytest
import torch

from chaincomp.exits.fine import authors_network, fine_layers
from chaincomp.exits.heads import AuthorsHead, LogisticBoF, unfolded
from chaincomp.exits.runtime import CostTable
from chaincomp.io import load_weights, save_weights
from chaincomp.models import build_model


def _net(name, x, **kw):
    torch.manual_seed(0)
    m = build_model(name, num_classes=10, **kw).eval()
    return m, authors_network(m, 10, x).eval()


@pytest.mark.parametrize("name,width,exits", [("vgg19", 0.125, 20), ("resnet34", 0.0625, 32), ("resnet20", 0.25, 18)])
def test_exit_after_every_conv_and_pool_and_same_function(name, width, exits):
    x = torch.rand(2, 3, 32, 32)
    m, net = _net(name, x, width=width)
    assert len(net.exit_points) == exits == len(net.blocks) - 1      # the paper: VGG-19 20 exits, ResNet-34 32
    with torch.no_grad():
        assert torch.allclose(net(x)[-1], m(x), atol=1e-5)          # splitting the blocks changes nothing
    if name.startswith("resnet"):                                   # halves of residual blocks alternate
        kinds = [type(l).__name__ for l in net.blocks[1:]]
        assert kinds[:4] == ["ResidualIn", "ResidualOut", "ResidualIn", "ResidualOut"]


def test_sharing_as_the_authors_share():
    x = torch.rand(1, 3, 32, 32)
    _, vgg = _net("vgg19", x, width=0.125)
    assert len(vgg.shared.fc2) == 1 and len(vgg.shared.fc1) == 1    # one 256->64 and one 64->classes for all
    assert len(vgg.shared.bof) < len(vgg.exit_points)               # a codebook per (channels, resolution)
    pools = [k for k, layer in enumerate(vgg.blocks[:-1]) if isinstance(layer, torch.nn.MaxPool2d)]
    assert pools and all(vgg.exits[str(k)].keys[1] is None and vgg.exits[str(k)].pool == 1 for k in pools)
    _, res = _net("resnet34", x, width=0.0625)
    assert len(res.shared.fc2) == 4 and len(res.shared.bof) == 32   # FC per stage, a codebook per exit
    keys = list(res.state_dict())
    assert not any(k.startswith("exits.") for k in keys) and len(keys) == len(set(keys))


def test_bof_is_non_negative_normalised_and_the_fc_layers_are_affine():
    torch.manual_seed(0)
    bof = LogisticBoF(8, 64, kernel=2.0)
    with torch.no_grad():
        bof.a.fill_(3.0), bof.c.fill_(-0.5)
        f = bof(torch.randn(2, 8, 4, 4), 1)                          # global pool: per input, sums to n1 * n2
        assert (f >= 0).all() and torch.allclose(f.sum(1), bof.n1 * bof.n2 * torch.ones(2))
    _, net = _net("vgg19", torch.rand(1, 3, 32, 32), width=0.125)
    head = next(h for h in net.exits.values() if h.keys[1] is not None)
    fc1, fc2 = net.shared.fc1[head.keys[1]], net.shared.fc2[head.keys[2]]
    u, v = torch.randn(3, 256), torch.randn(3, 256)
    g = lambda t: fc2(fc1(t))
    with torch.no_grad():                                            # no non-linearity between: affine
        assert torch.allclose(g(u) + g(v) - g(torch.zeros(3, 256)), g(u + v), atol=1e-5)


def test_folded_inference_form_equals_the_trained_form_and_follows_new_weights():
    x = torch.rand(4, 3, 32, 32)
    _, net = _net("vgg19", x, width=0.125)
    with torch.no_grad():
        folded = net(x)
        with unfolded(net):
            plain = net(x)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(folded, plain))
        bof = next(iter(net.shared.bof.values()))
        bof.a.mul_(2.0)                                              # an in-place change refolds
        with unfolded(net):
            plain = net(x)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(net(x), plain))


def test_costs_count_shared_parts_in_every_exit_that_runs_them(tmp_path):
    x = torch.rand(1, 1, 8, 8)
    torch.manual_seed(0)
    m = build_model("digits_vgg", in_channels=1, num_classes=10, width=0.5)
    net = authors_network(m, 10, x).eval()
    ct = CostTable(net, x)
    assert all(p.macs > 0 for p in ct.exits)                          # pool exits too (no conv of their own)
    # the exit after conv 0 of 16 channels at 8x8: codebook 16*64*64 + FC 256*64 + 64*10
    assert ct.exits[0].macs == 16 * 64 * 64 + 256 * 64 + 64 * 10
    # pool exit (layer 4): codebook on 4x4, global pool, only the 64 -> classes layer
    assert ct.exits[4].macs == 16 * 64 * 16 + 64 * 10
    save_weights(tmp_path / "n.safetensors", net.state_dict())       # shared parts stored once
    again = authors_network(build_model("digits_vgg", in_channels=1, num_classes=10, width=0.5), 10, x)
    again.load_state_dict(load_weights(tmp_path / "n.safetensors"))
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(net(x), again.eval()(x)))


def test_fine_layers_reuse_the_weights():
    m = build_model("resnet20", num_classes=10, width=0.25)
    layers, residual = fine_layers(m.blocks)
    assert residual.count(True) == 9 and layers[1].conv1 is m.blocks[1].conv1


def test_authors_thresholds_signed_mean_in_train_mode_on_a_copy():
    from chaincomp.data import load_data
    from chaincomp.recipe import DataConfig
    from chaincomp.studies.predictive_exit.network import authors_thresholds

    data = load_data(DataConfig(name="digits", limit_train=128, limit_test=32), seed=0)
    torch.manual_seed(0)
    m = build_model("digits_vgg", in_channels=1, num_classes=10, width=0.25)
    net = authors_network(m, 10, data.sample_input()).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    T = authors_thresholds(net, data, batch_size=len(data.train), seed=0)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())   # BN statistics untouched
    with torch.no_grad():
        outs = net.train()(data.train.x)[:-1]                                   # one batch = the whole split
    net.eval()
    assert T == pytest.approx([abs(float(o.double().mean())) for o in outs], rel=1e-6)


@pytest.mark.parametrize("style,train,moves", [("authors", None, True), ("project", None, False),
                                               ("authors", "frozen", False)])
def test_joint_training_moves_the_backbone_and_frozen_does_not(style, train, moves):
    from chaincomp.data import load_data
    from chaincomp.studies.predictive_exit import ExitRecipe
    from chaincomp.studies.predictive_exit.network import train_network

    cfg = ExitRecipe.model_validate({"data": {"name": "digits", "limit_train": 64, "limit_test": 16},
                                     "model": {"name": "digits_vgg", "width": 0.25}, "baseline": {"epochs": 0},
                                     "exits": {"style": style, "train": train, "epochs": 1, "batch_size": 32}})
    data = load_data(cfg.data, seed=0)
    torch.manual_seed(cfg.seed)
    ref = build_model("digits_vgg", in_channels=1, num_classes=10, width=0.25).state_dict()   # same seed: same init
    net = train_network(cfg, data)
    conv0 = net.blocks[0][0].weight
    assert torch.equal(conv0, ref["blocks.0.0.weight"]) is not moves
    assert len(net.exit_points) == (9 if style == "authors" else 7)
