"""The device: named once at the edge (flag or recipe field), one line when CUDA is asked for and absent,
recorded in results; and on the CPU nothing changed (the same seed gives the same ledger as before)."""
import hashlib
import json

import pytest
import torch
import yaml

from chaincomp import device as devices
from chaincomp.errors import UserError
from chaincomp.qmodules import QuantConv2d, QuantSpec, act_range, quantize_act
from chaincomp.recipe import parse_recipe
from conftest import fails_with_one_line, tiny_recipe, tiny_study_recipe


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert devices.resolve("auto") == torch.device("cpu")
    assert devices.resolve(None) == torch.device("cpu")
    assert devices.resolve("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_cuda_is_one_user_error_naming_the_option(no_cuda, spec):
    with pytest.raises(UserError, match="--device: .* no CUDA device"):
        devices.resolve(spec, "--device")


def test_a_cuda_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match="cuda:3.*1 CUDA device"):
        devices.resolve("cuda:3", "--device")
    with pytest.raises(UserError, match="not a device"):
        devices.resolve("tpu", "--device")


def test_recipe_field_is_checked_and_outside_the_digest():
    a = parse_recipe(tiny_recipe([]))
    b = parse_recipe(tiny_recipe([], device="cuda:1"))
    assert a.device == "auto" and b.device == "cuda:1"
    assert a.digest() == b.digest() and a.stage_digest(0) == b.stage_digest(0)  # a run resumes on another device
    assert parse_recipe(tiny_recipe([], amp=True)).digest() != a.digest()        # amp changes the numbers
    with pytest.raises(UserError, match="device"):
        parse_recipe(tiny_recipe([], device="gpu"))


def test_channels_last_is_opt_in_on_the_cpu_and_outside_the_digest(digits):
    from chaincomp.chain import placed
    from chaincomp.models import build_model
    from chaincomp.train import FitConfig, fit

    a = parse_recipe(tiny_recipe([]))
    b = parse_recipe(tiny_recipe([], channels_last=True))
    assert a.channels_last is None and a.digest() == b.digest()   # how it runs, not what: a run may resume either way
    assert not placed(digits, a.model_copy(update={"device": "cpu"})).channels_last
    data = placed(digits, b.model_copy(update={"device": "cpu"}))
    assert data.channels_last
    seen = []
    torch.manual_seed(0)
    model = build_model("digits_cnn", num_classes=10, in_channels=1)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    conv.register_forward_pre_hook(lambda m, i: seen.append(
        (i[0].is_contiguous(memory_format=torch.channels_last), m.weight.is_contiguous(memory_format=torch.channels_last))))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = fit(model, data, FitConfig(epochs=1, batch_size=64, lr=0.05))["loss"]
    assert seen and all(x and w for x, w in seen)     # inputs and weights in channels_last while training
    assert conv.weight.is_contiguous()                # handed back in the usual format
    assert loss[0] == loss[0] and any(not torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    data.channels_last = False



@pytest.mark.parametrize("flags, on", [({"avx2", "avx512f"}, False), ({"avx2", "avx512f", "amx_tile", "amx_bf16"}, True)])
def test_amp_runs_on_the_cpu_only_where_amx_makes_bf16_fast(digits, monkeypatch, flags, on):
    from chaincomp.chain import placed
    from chaincomp.models import build_model
    from chaincomp.train import FitConfig, fit

    monkeypatch.setattr(devices, "cpu_flags", lambda: set(flags))
    assert devices.amp_helps(torch.device("cpu")) is on
    assert not placed(digits, parse_recipe(tiny_recipe([], device="cpu"))).amp   # asked for only
    data = placed(digits, parse_recipe(tiny_recipe([], amp=True, device="cpu")))
    try:
        assert data.amp is on
        torch.manual_seed(0)
        model = build_model("digits_cnn", num_classes=10, in_channels=1)
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        seen = []
        conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        loss = fit(model, data, FitConfig(epochs=1, batch_size=64, lr=0.05))["loss"]
        assert set(seen) == {torch.bfloat16 if on else torch.float32}   # the convolutions ran in bf16
        assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
        assert loss[0] == loss[0] and loss[0] < 2.5
    finally:
        data.amp = False

def _file(tmp_path, obj, name="r.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(obj))
    return str(p)


@pytest.mark.parametrize("command", ["run", "order", "search", "exit", "fmc"])
def test_every_command_refuses_cuda_where_there_is_none(command, no_cuda, capsys, tmp_path):
    recipe = tiny_study_recipe(tmp_path / "s.yaml") if command in ("order", "search") else \
        {"run": _file(tmp_path, tiny_recipe([])), "exit": "exit_default", "fmc": "fmc_default"}[command]
    fails_with_one_line(capsys, [command, recipe, "--out", str(tmp_path / "o"), "--device", "cuda"],
                        "--device", "no CUDA device")
    assert not (tmp_path / "o").exists()    # refused before anything ran


def test_export_check_refuses_cuda_where_there_is_none(no_cuda, capsys, tmp_path):
    fails_with_one_line(capsys, ["export", str(tmp_path), "--device", "cuda:0"], "--device", "no CUDA device")


def test_recipe_field_cuda_without_cuda_names_the_field(no_cuda, capsys, tmp_path):
    fails_with_one_line(capsys, ["run", _file(tmp_path, tiny_recipe([], device="cuda")), "--out",
                                 str(tmp_path / "o")], "recipe field device", "no CUDA device")
    assert not (tmp_path / "o").exists()


def test_results_record_the_device_and_the_flag_overrides_the_recipe(no_cuda, tmp_path):
    from chaincomp.cli import main

    r = _file(tmp_path, tiny_recipe([{"technique": "quantize", "weight_bits": 8, "epochs": 0}], device="cuda",
                                    baseline={"epochs": 1, "batch_size": 64}))
    assert main(["run", r, "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["device"] == "cpu"


# ------------------------------------------------------------------ on the CPU nothing changed

def _old_track(m, x):
    """The range tracking as it was before it moved onto the device (host reads per forward)."""
    signed = bool(m.act_signed) if bool(m.calibrated) else bool((x.detach() < 0).any())
    top = float(x.detach().abs().amax()) if signed else float(x.detach().clamp_min(0).amax())
    new = max(top, 1e-8) / act_range(m.act_bits, signed)[1]
    if not bool(m.calibrated):
        m.act_scale.fill_(new)
        m.act_signed.fill_(signed)
        m.calibrated.fill_(True)
    else:
        m.act_scale.mul_(1 - m.act_momentum).add_(m.act_momentum * new)
    return quantize_act(x, m.act_scale, m.act_bits, bool(m.act_signed))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_range_tracking_on_the_device_is_bit_identical_to_the_host_version(bits):
    g = torch.Generator().manual_seed(bits)
    old = QuantConv2d(3, 4, 3, spec=QuantSpec(4, bits))
    new = QuantConv2d(3, 4, 3, spec=QuantSpec(4, bits))
    new.load_state_dict(old.state_dict())
    for step in range(40):
        x = torch.randn(8, 3, 6, 6, generator=g) * (1 + step % 7)
        if step % 3 == 0:
            x = x.clamp_min(0)          # unsigned inputs before calibration, signed after
        x_old, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
        a = _old_track(old, x_old)
        b = new.quant_input(x_new)
        a.sum().backward()
        b.sum().backward()
        assert torch.equal(a, b) and torch.equal(x_old.grad, x_new.grad)
        assert torch.equal(old.act_scale, new.act_scale) and torch.equal(old.act_signed, new.act_signed)


# Recorded with the code before the device work (commit 461447d), 1 torch thread, this chain and seed, per
# torch CPU capability: oneDNN's and torch's kernels (and so the last float bits) differ between AVX2 and AVX-512
# machines. AVX2: the AMD EPYC of 2026-12-01; AVX512: a Xeon (Sapphire Rapids class), 2026-12-02, where 461447d
# and this code gave the same ledger and weights.
_AVX2 = {
    "baseline": {"metric": 95.8333, "bitops": 387252224.0, "macs": 378176.0, "params": 16794, "size_bytes": 67944},
    "stages": [
        {"metric": 73.3333, "bitops": 99254272.0, "macs": 96928.0, "params": 4370, "size_bytes": 17864},
        {"metric": 55.0, "bitops": 51406848.0, "macs": 50202.0, "params": 2164, "size_bytes": 8920},
        {"metric": 76.6667, "bitops": 973440.0, "macs": 50202.0, "params": 2164, "size_bytes": 1856},
        {"metric": 74.1667, "bitops": 1176192.0, "macs": 62874.0, "params": 4594, "size_bytes": 4208},
    ],
    "weights_sha": "a48fe43018ef2ca56ec0067300eb1fddedc4014ca9ca04a09874fdd98de48c44",
}
BEFORE_BY_CAPABILITY = {
    "AVX2": _AVX2,
    "AVX512": {  # the same up to quantization; then two metrics and the weights' last bits differ
        "baseline": _AVX2["baseline"],
        "stages": _AVX2["stages"][:2] + [_AVX2["stages"][2] | {"metric": 73.3333}, _AVX2["stages"][3] | {"metric": 77.5}],
        "weights_sha": "2be04629f968cf3e6b105786a4df43d56e1c16d4f022aff2a2e22826235d1982",
    },
}


def test_the_same_seed_gives_the_same_ledger_as_before(digits, tmp_path):
    from chaincomp.chain import load_run, run_chain

    capability = torch.backends.cpu.get_cpu_capability()
    if capability not in BEFORE_BY_CAPABILITY:
        pytest.skip(f"no ledger recorded with commit 461447d for torch CPU capability {capability}")
    before = BEFORE_BY_CAPABILITY[capability]

    chain = [
        {"technique": "distill", "student": {"width": 0.5}, "epochs": 3, "batch_size": 32},
        {"technique": "prune", "ratio": 0.3, "steps": 1, "epochs": 1, "batch_size": 64},
        {"technique": "quantize", "weight_bits": 4, "act_bits": 4, "epochs": 3, "batch_size": 32},
        {"technique": "early_exit", "epochs": 1, "batch_size": 64, "max_drop": 1.0},
    ]
    r = parse_recipe(tiny_recipe(chain, baseline={"epochs": 8, "lr": 0.05, "batch_size": 32}, device="cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = run_chain(r, tmp_path / "run", data=digits, write_report=False)
    finally:
        torch.set_num_threads(threads)
    keys = ("metric", "bitops", "macs", "params", "size_bytes")
    assert {k: res["baseline"][k] for k in keys} == before["baseline"]
    assert [{k: s[k] for k in keys} for s in res["stages"]] == before["stages"]
    m = load_run(tmp_path / "run", data=digits).model
    sha = hashlib.sha256(b"".join(p.detach().contiguous().numpy().tobytes() for p in m.state_dict().values()))
    assert sha.hexdigest() == before["weights_sha"]      # every weight, bit for bit
