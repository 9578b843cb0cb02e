"""Exit rules: where each input leaves, given every exit's logits (batched simulation).

The simulation is exact for accuracy and cost because exit heads and blocks are deterministic;
the runtime that really skips layers at batch size 1 lives with the exporter and Predictive Exit.
"""
from __future__ import annotations

import torch


def score(logits: torch.Tensor, criterion: str) -> torch.Tensor:
    """Higher means more confident, for every criterion."""
    if criterion == "confidence":
        return logits.softmax(-1).amax(-1)
    if criterion == "entropy":  # negative entropy so that 'higher is more confident' holds
        p = logits.softmax(-1)
        return (p * p.clamp_min(1e-12).log()).sum(-1)
    if criterion == "maxlogit":
        return logits.abs().amax(-1)
    raise ValueError(f"unknown exit criterion '{criterion}'")


def fires(logits: torch.Tensor, criterion: str, threshold: float | list[float], k: int) -> torch.Tensor:
    """Whether exit k's rule fires for each row (for 'entropy', the threshold is a maximum entropy)."""
    t = threshold[k] if isinstance(threshold, (list, tuple)) else threshold
    s = score(logits, criterion)
    return (-s <= t) if criterion == "entropy" else (s >= t)


def choose_exits(outs: list[torch.Tensor], criterion: str, threshold: float | list[float]) -> torch.Tensor:
    """Index of the output each sample leaves at: the first exit whose score reaches the threshold
    (for 'entropy', the threshold is a maximum entropy), else the final head (len(outs)-1)."""
    n_exits = len(outs) - 1
    n = outs[-1].shape[0]
    chosen = torch.full((n,), n_exits, dtype=torch.long)
    pending = torch.ones(n, dtype=torch.bool)
    for k in range(n_exits):
        take = pending & fires(outs[k], criterion, threshold, k)
        chosen[take] = k
        pending &= ~take
    return chosen


def gather_outputs(outs: list[torch.Tensor], chosen: torch.Tensor) -> torch.Tensor:
    stacked = torch.stack(outs, 0)  # (E+1, N, ...)
    return stacked[chosen, torch.arange(chosen.shape[0])]


def separability(outs: list[torch.Tensor], y: torch.Tensor,
                 criteria: tuple[str, ...] = ("confidence", "entropy", "maxlogit")) -> dict[str, list[float | None]]:
    """Per criterion and exit, the AUROC of the criterion's score for "this exit's answer is right".

    Why: a threshold on a score can only let an input leave early without losing accuracy when the score
    ranks the inputs the exit gets right above those it gets wrong; 0.5 is chance, 1.0 a perfect ranking.
    It is the ceiling on what any beta or threshold can save at equal accuracy, so it tells a poor exit
    criterion apart from a poor prediction engine. Scaling a score per exit (max|z| / T_k) does not change
    its AUROC. None where an exit is right on every input or on none.
    """
    from sklearn.metrics import roc_auc_score  # the reference implementation, ties handled

    out: dict[str, list[float | None]] = {c: [] for c in criteria}
    for z in outs:
        right = (z.argmax(-1) == y).numpy()
        one_class = right.all() or not right.any()
        for c in criteria:
            out[c].append(None if one_class else float(roc_auc_score(right, score(z.double(), c).numpy())))
    return out
