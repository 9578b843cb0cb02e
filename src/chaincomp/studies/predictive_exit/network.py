"""The network of the study: a backbone and an exit after every block but the last, trained (frozen
backbone or jointly), saved with the digest of what made it so a resumed run reuses it."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from ... import progress
from ...errors import UserError
from .schema import ExitRecipe


class _ExitsOnFrozenBackbone(nn.Module):
    """Trains exit heads on a fixed backbone: blocks run without gradient and stay in eval mode (their
    BN statistics are those of the trained backbone); outputs are the exits only (sum of exit CEs)."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.blocks.eval()
        self.net.head.eval()
        return self

    def forward(self, x):
        outs = []
        for i, b in enumerate(self.net.blocks[:-1]):
            with torch.no_grad():
                x = b(x)
            if str(i) in self.net.exits:
                outs.append(self.net.exits[str(i)](x))
        return outs


def train_network(cfg: ExitRecipe, data):
    """Backbone first, then an exit after every block but the last. ``model.weights`` skips what it
    holds: a backbone's weights skip the baseline; an exit network's (``DIR/exit_model.safetensors``
    of an earlier run) skip all training, to re-measure on another platform or latency limit."""
    from ...data import model_kwargs
    from ...io import load_weights
    from ...models import build_model
    from ...baselines import identity, load_cached
    from ...train import FitConfig, fit

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.name, width=cfg.model.width, **model_kwargs(data))
    state = load_weights(cfg.model.weights) if cfg.model.weights else None
    whole = state is not None and any(k.startswith(("exits.", "shared.")) for k in state)
    if state is not None and not whole:
        _load(model, state, cfg)        # a backbone's weights, before its blocks are split into layers
    # a baseline `chaincomp train` made with the same settings is loaded, also before the split
    cached = state is None and load_cached(model, identity(cfg.data, cfg.model, cfg.baseline, cfg.seed, cfg.amp),
                                           progress.log)
    net = build_exit_network(cfg, model, data)
    if whole:
        _load(net, state, cfg)
        return net.eval()
    if state is None and not cached:
        fit(model, data, cfg.baseline.fit_config(), stage="baseline", seed=cfg.seed)
    e = cfg.exits
    fc = FitConfig.of(e)
    if cfg.train_mode == "frozen":
        fit(_ExitsOnFrozenBackbone(net), data, fc, stage="exits (frozen backbone)", seed=cfg.seed + 1,
            params=[p for n, p in net.named_parameters() if n.startswith(("exits.", "shared."))])
    else:
        fit(net, data, fc, stage="exits and backbone (joint)", seed=cfg.seed + 1)
    return net.eval()


def build_exit_network(cfg: ExitRecipe, model, data):
    """The untrained exit network of the recipe's style over `model` (whose blocks it reuses)."""
    from ...exits.fine import authors_network
    from ...stages import replay

    if cfg.exits.style == "authors":
        return authors_network(model, data.num_classes, data.sample_input(), cfg.exits.codewords, cfg.exits.share)
    options = {"codewords": cfg.exits.codewords} if cfg.exits.head == "bof" else {}
    return replay(model, {"type": "exits", "points": "all", "head": cfg.exits.head,
                          "num_classes": data.num_classes, "options": options}, data.sample_input())


def _load(module, state, cfg: ExitRecipe) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"model.weights: do not fit {cfg.model.name} with these exits "
                        f"({str(e).strip().splitlines()[0][:120]})") from None


def authors_thresholds(net, data, batch_size: int, seed: int, limit: int = 5000) -> list[float]:
    """T_k as the authors' script computes it: the signed mean of exit k's logits over (at most
    `limit`, they use ~5k) augmented training inputs with the network in train mode (batch-norm batch
    statistics), the absolute value taken after averaging. On a copy: the running statistics of the
    network itself are left as trained."""
    import copy

    probe = copy.deepcopy(net).train()
    gen = torch.Generator().manual_seed(seed)
    sums, n = None, 0
    with torch.no_grad():
        for x, y in data.train.batches(batch_size, shuffle=True, generator=gen):
            if data.augment is not None:
                x, y = data.augment(x, y, gen)
            outs = probe(x)[:-1]
            s = [o.double().sum() for o in outs]
            sums = s if sums is None else [a + b for a, b in zip(sums, s)]
            n += x.shape[0] * outs[0].shape[-1]
            if n >= limit * outs[0].shape[-1]:
                break
    return [abs(float(v) / n) for v in sums]


def outputs(net, split) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every output (exits, final last) for a whole split, and its labels."""
    from ...train import outputs_and_targets

    outs, ys = outputs_and_targets(net, split)
    return [torch.cat([o[k] for o in outs]) for k in range(len(outs[0]))], torch.cat(ys)


# ------------------------------------------------------------------------------- calibration


def train_digest(cfg: ExitRecipe) -> str:
    """Identity of the training settings: the trained network depends on these and nothing else."""
    part = cfg.model_dump(mode="json", include={"seed", "data", "model", "baseline", "exits"})
    return hashlib.sha256(json.dumps(part, sort_keys=True).encode()).hexdigest()[:16]


def trained_network(cfg: ExitRecipe, data, out: Path, resume: bool):
    """Train, or with --resume reuse DIR/exit_model.safetensors when it was trained with the same
    settings: training is most of the run, and everything after it is recomputed from the network,
    so a resumed run ends with the uninterrupted run's figures (wall latencies aside).

    Without --resume the folder's earlier results are dropped first (exit.json before anything else),
    so a run killed midway never leaves a new network beside an old exit.json."""
    from ...io import save_weights, weights_metadata

    path, digest = out / "exit_model.safetensors", train_digest(cfg)
    reuse = resume and path.exists()
    if reuse and weights_metadata(path).get("train_digest") != digest:
        raise UserError(f"{path}: was trained with other settings (seed, data, model, baseline or exits); "
                        "drop --resume to train again, or use another --out")
    (out / "exit.json").unlink(missing_ok=True)
    if reuse:
        with_weights = cfg.model_copy(update={"model": cfg.model.model_copy(update={"weights": str(path)})})
        progress.log(f"network: reused from {path}")
        return train_network(with_weights, data)
    net = train_network(cfg, data)
    save_weights(path, net.state_dict(), metadata={"train_digest": digest})
    return net


def preflight(cfg: ExitRecipe, data, profile) -> None:
    """Mistakes that depend on the model or the profile fail here, before minutes of training."""
    from ...data import model_kwargs
    from ...models import build_model

    from ...exits.fine import n_fine_layers

    model = build_model(cfg.model.name, width=cfg.model.width, **model_kwargs(data))
    n_blocks = n_fine_layers(model) if cfg.exits.style == "authors" else len(model.blocks)
    unit = "layer" if cfg.exits.style == "authors" else "block"
    if cfg.predictive.start_block >= n_blocks - 1:
        raise UserError(f"predictive.start_block: {cfg.predictive.start_block} leaves no exit; the last exit is "
                        f"after {unit} {n_blocks - 2} of {cfg.model.name}")
    profile.cycles({(32, 32): 1.0})      # the FP32 throughput the cost model needs (UserError if absent)
