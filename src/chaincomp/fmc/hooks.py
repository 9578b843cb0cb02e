"""Forward hooks that pass chosen layer outputs through encode -> decode.

Why hooks: the codec's effect on the task (accuracy, mIoU, PSNR) is measured by running the real
model with decoded maps in place of the originals, and the bytes that would cross to DRAM are
counted from the actual streams, per layer. Outputs that are not 4-D tensors (e.g. after a
flatten) pass through untouched and are counted as `skipped`. With `straight_through=True` the
replacement is x + (decoded - x).detach(), so training through the codec still gets gradients.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Iterable

import torch
from torch import nn

from chaincomp.errors import UserError

from .codec import check, decode, encode_with_stats

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish,
               nn.Mish, nn.Hardtanh)


def default_points(model: nn.Module) -> list[str]:
    """Names of activation modules (their outputs are the maps that go to memory), else top-level children."""
    names = [name for name, mod in model.named_modules() if name and isinstance(mod, ACTIVATIONS)]
    return names or [name for name, _ in model.named_children()]


def _merge(into: dict, add: dict) -> None:
    for key, value in add.items():
        if isinstance(value, dict):
            _merge(into.setdefault(key, {}), value)
        else:
            into[key] = into.get(key, 0) + value


class CodecHandle:
    """Owns the hooks; `stats()` per layer, `total()` over layers, `remove()` (also on `with` exit)."""

    def __init__(self) -> None:
        self._hooks: list = []
        self._stats: dict[str, dict] = {}

    def stats(self) -> dict[str, dict]:
        out = copy.deepcopy(self._stats)
        for s in out.values():
            s["ratio"] = s["raw_bytes"] / s["encoded_bytes"] if s["encoded_bytes"] else float("nan")
            s["payload_ratio"] = s["raw_bytes"] / s["payload_bytes"] if s["payload_bytes"] else float("nan")
            s["snr_db"] = 10 * math.log10(s["signal"] / s["sse"]) if s["sse"] > 0 else float("inf")
        return out

    def total(self) -> dict:
        raw = sum(s["raw_bytes"] for s in self._stats.values())
        enc = sum(s["encoded_bytes"] for s in self._stats.values())
        pay = sum(s["payload_bytes"] for s in self._stats.values())
        return {"raw_bytes": raw, "encoded_bytes": enc, "ratio": raw / enc if enc else float("nan"),
                "payload_bytes": pay, "payload_ratio": raw / pay if pay else float("nan")}

    def reset(self) -> None:
        for name in self._stats:
            self._stats[name] = _empty()

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def __enter__(self) -> "CodecHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _empty() -> dict:
    return {"calls": 0, "skipped": 0, "raw_bytes": 0, "encoded_bytes": 0, "payload_bytes": 0, "signal": 0.0,
            "sse": 0.0, "mode_histogram": {}}


def _select(model: nn.Module, layers) -> list[tuple[str, nn.Module]]:
    modules = dict(model.named_modules())
    if layers is None:
        layers = default_points(model)
    if callable(layers):
        chosen = [(n, m) for n, m in modules.items() if n and layers(n, m)]
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        missing = [n for n in names if n not in modules]
        if missing:
            raise UserError(f"attach_codec: no module named {missing}; known: {sorted(n for n in modules if n)[:20]}")
        chosen = [(n, modules[n]) for n in names]
    if not chosen:
        raise UserError("attach_codec: no layer selected; pass layer names or a predicate(name, module)")
    return chosen


def attach_codec(model: nn.Module, layers: Iterable[str] | str | Callable[[str, nn.Module], bool] | None = None,
                 *, straight_through: bool = True, **codec_kwargs) -> CodecHandle:
    """Hook encode -> decode onto the outputs of `layers` (names, a predicate, or default_points)."""
    check(**{k: v for k, v in codec_kwargs.items() if k != "bits_in"})  # fail at attach time, not mid-forward
    handle = CodecHandle()
    for name, module in _select(model, layers):
        handle._stats[name] = _empty()

        def hook(mod, inputs, output, name=name):
            st = handle._stats[name]
            if not isinstance(output, torch.Tensor) or output.dim() != 4 or output.numel() == 0:
                st["skipped"] += 1
                return None
            x = output.detach()
            x = x.float() if x.dtype == torch.float64 else x
            data, s = encode_with_stats(x, **codec_kwargs)
            dec = decode(data, device=output.device).to(dtype=output.dtype)
            ref = x.double()
            st["calls"] += 1
            st["raw_bytes"] += s["raw_bytes"]
            st["encoded_bytes"] += s["encoded_bytes"]
            st["payload_bytes"] += s["encoded_bytes"] - s["header_bytes"]  # the container header is software
            st["signal"] += float(ref.square().sum())
            st["sse"] += float((ref - dec.double()).square().sum())
            _merge(st["mode_histogram"], s["mode_histogram"])
            if straight_through and output.requires_grad:
                return output + (dec - output).detach()
            return dec

        handle._hooks.append(module.register_forward_hook(hook))
    return handle
