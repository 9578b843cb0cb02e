"""Predictive Exit (Li et al., AAAI 2023): thresholds, the parameter-free prediction engine, and an
exact batched simulation of every way of exiting (what runs, which heads are evaluated).

Definitions used everywhere (docs/predictive_exit.md):
- A *layer* is a backbone block (the zoo's VGGs have one conv per block); exit k sits after block
  ``points[k]``; output index E (= number of exits) is the final classifier after the last block.
- ``T_k`` = mean over training inputs AND classes of |z_k| (the mean absolute logit of exit k).
  The paper says "mean |logit|"; the authors' script averages signed logits, which can be ~0.
- Exit rule: leave at exit k when max|z_k| >= beta * T_k. No exit before block L0 is ever checked.
- Engine: v <- z_k; round i = 1..R: v <- v * [1, 1, 1] (1-D, zero padding, over classes); if block
  points[k] + i carries exit j and max|v| > beta * T_j, the next exit evaluated is j. No hit in R
  rounds ("give up"): ``give_up="jump"`` (the authors' code) checks next at the first exit at or
  after block points[k] + R; ``give_up="final"`` checks no more exits. Only predicted exits are
  evaluated; if the predicted one does not fire, predict again from there; past the last exit the
  network runs to its final classifier.
- Prediction accuracy: a prediction made at exit k is right when its next check is the exit the
  classic rule (same beta, every exit after k checked) would leave at; a give-up is right when that
  exit lies at or beyond the give-up target. The headline figure counts the first prediction of
  every input (made at the first exit >= L0, if the input did not leave there), as the authors do.
  A "prediction" from the last exit (only the final classifier can follow) is recorded, since it tells
  the DVFS policy the exact remaining work, but it is not counted.

Arithmetic is in float64 in both this simulation and the batch-1 runtime so that both take the same
decision on the same logits.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch

from .rules import score

GiveUp = Literal["jump", "final"]


@dataclass(frozen=True)
class PredictiveRule:
    """Everything the engine needs: thresholds T_k, beta, rounds R, start block L0, give-up policy."""

    points: tuple[int, ...]          # block index of each exit
    thresholds: tuple[float, ...]    # T_k
    beta: float
    rounds: int = 8
    start_block: int = 0
    give_up: GiveUp = "jump"

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (got {self.beta})")
        if len(self.points) != len(self.thresholds):
            raise ValueError("one threshold per exit point")
        # per round i: (exit at block + i, its limit) for every exit; the runtime calls predict per input
        b2e = {b: j for j, b in enumerate(self.points)}
        plan = tuple(tuple((b2e[b + i], self.beta * self.thresholds[b2e[b + i]]) if b + i in b2e else None
                           for i in range(1, self.rounds + 1)) for b in self.points)
        object.__setattr__(self, "_plan", plan)

    @property
    def n_exits(self) -> int:
        return len(self.points)

    def limit(self, k: int) -> float:
        return self.beta * self.thresholds[k]

    def first_exit(self) -> int:
        """Index of the first exit checked (>= L0), or n_exits when there is none."""
        return next((k for k, b in enumerate(self.points) if b >= self.start_block), self.n_exits)

    def exit_at_or_after(self, block: int) -> int:
        return next((k for k, b in enumerate(self.points) if b >= block), self.n_exits)

    def fires(self, k: int, logits: Sequence[float]) -> bool:
        return max(map(abs, logits)) >= self.limit(k)

    def predict(self, k: int, logits: Sequence[float]) -> tuple[int, bool]:
        """(index of the next exit to evaluate, gave_up) from exit k's logits; n_exits = none (final)."""
        v = [float(x) for x in logits]
        for step in self._plan[k]:
            v = smooth3(v)
            if step is not None and max(map(abs, v)) > step[1]:
                return step[0], False
        if self.give_up == "final":
            return self.n_exits, True
        return self.exit_at_or_after(self.points[k] + self.rounds), True


def smooth3(v: Sequence[float]) -> list[float]:
    """One round of the engine: 1-D convolution with kernel [1, 1, 1] and zero padding."""
    v = list(v)
    return [a + b + c for a, b, c in zip([0.0] + v[:-1], v, v[1:] + [0.0])]


def exit_thresholds(exit_logits: Sequence[torch.Tensor]) -> list[float]:
    """T_k = mean |z_k| over every training input and class (one float per exit, final excluded)."""
    return [float(z.double().abs().mean()) for z in exit_logits]


def max_abs_ratio(exit_logits: Sequence[torch.Tensor], thresholds: Sequence[float]) -> torch.Tensor:
    """max|z_k| / T_k per input and exit (N, E): the beta at which exit k would just fire."""
    return torch.stack([z.double().abs().amax(-1) / t for z, t in zip(exit_logits, thresholds)], 1)


# --------------------------------------------------------------------------- batched simulation

@dataclass
class Paths:
    """Where each input of a batch leaves and which heads it evaluated (one row per input)."""

    exit: torch.Tensor                     # (N,) output index, E = final classifier
    heads: torch.Tensor                    # (N, E) bool: head k evaluated
    predictions: list[list[tuple[int, int]]] = field(default_factory=list)  # per input: (at exit, next exit)

    def head_order(self, i: int) -> list[int]:
        return torch.nonzero(self.heads[i]).flatten().tolist()


def _stack(exit_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([z.double() for z in exit_logits], 1)  # (N, E, C)


def next_exits(exit_logits: Sequence[torch.Tensor], rule: PredictiveRule) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine for every input and exit at once: (next exit index (N, E), gave_up (N, E))."""
    z = _stack(exit_logits)
    n, e = z.shape[:2]
    nxt = torch.full((n, e), -1, dtype=torch.long)
    block_to_exit = {b: j for j, b in enumerate(rule.points)}
    v = z
    for i in range(1, rule.rounds + 1):
        p = torch.nn.functional.pad(v, (1, 1))
        v = p[..., :-2] + p[..., 1:-1] + p[..., 2:]
        m = v.abs().amax(-1)
        for k, b in enumerate(rule.points):
            j = block_to_exit.get(b + i)
            if j is None:
                continue
            hit = (nxt[:, k] < 0) & (m[:, k] > rule.limit(j))
            nxt[hit, k] = j
    gave_up = nxt < 0
    for k, b in enumerate(rule.points):
        nxt[gave_up[:, k], k] = rule.n_exits if rule.give_up == "final" else rule.exit_at_or_after(b + rule.rounds)
    return nxt, gave_up


def fires_maxlogit(exit_logits: Sequence[torch.Tensor], rule: PredictiveRule) -> torch.Tensor:
    """(N, E) bool: exit k fires for the input (max|z_k| >= beta*T_k) and lies at or after L0."""
    cols = []
    for k, z in enumerate(exit_logits):
        ok = rule.points[k] >= rule.start_block
        cols.append((z.double().abs().amax(-1) >= rule.limit(k)) & ok)
    return torch.stack(cols, 1)


def fires_rule(exit_logits: Sequence[torch.Tensor], points: Sequence[int], criterion: str,
               threshold: float | Sequence[float], start_block: int = 0) -> torch.Tensor:
    """(N, E) bool for the early-exit strategies: confidence (max softmax >= t), entropy (<= t),
    maxlogit (max|z| >= t_k, thresholds per exit)."""
    cols = []
    for k, z in enumerate(exit_logits):
        t = threshold[k] if isinstance(threshold, (list, tuple)) else threshold
        if criterion == "maxlogit":
            f = z.double().abs().amax(-1) >= t
        else:
            s = score(z, criterion)
            f = (-s <= t) if criterion == "entropy" else (s >= t)
        cols.append(f & (points[k] >= start_block))
    return torch.stack(cols, 1)


def first_true(mask: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Index of the first True at or after column `start` in each row, else the number of columns."""
    n, e = mask.shape
    idx = torch.arange(e).expand(n, e)
    m = mask & (idx >= start)
    return torch.where(m.any(1), m.float().argmax(1), torch.full((n,), e))


def simulate_early_exit(fires: torch.Tensor, points: Sequence[int], start_block: int = 0) -> Paths:
    """Classic early exit: every exit from L0 on is evaluated until one fires."""
    n, e = fires.shape
    first = next((k for k, b in enumerate(points) if b >= start_block), e)
    ex = first_true(fires, first)
    k = torch.arange(e).expand(n, e)
    heads = (k >= first) & (k <= ex[:, None])
    return Paths(ex, heads, [[] for _ in range(n)])


def simulate_classic(n: int, n_exits: int) -> Paths:
    return Paths(torch.full((n,), n_exits), torch.zeros(n, n_exits, dtype=torch.bool), [[] for _ in range(n)])


def simulate_predictive(exit_logits: Sequence[torch.Tensor], rule: PredictiveRule) -> Paths:
    """Predictive exit: only the exits the engine points to are evaluated."""
    fires = fires_maxlogit(exit_logits, rule)
    nxt, _ = next_exits(exit_logits, rule)
    n, e = fires.shape
    cur = torch.full((n,), rule.first_exit(), dtype=torch.long)
    heads = torch.zeros(n, e, dtype=torch.bool)
    ex = torch.full((n,), e, dtype=torch.long)
    done = torch.zeros(n, dtype=torch.bool)
    preds: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    rows = torch.arange(n)
    for _ in range(e + 1):
        act = ~done & (cur < e)
        if not act.any():
            break
        r, c = rows[act], cur[act]
        heads[r, c] = True
        f = fires[r, c]
        ex[r[f]] = c[f]
        done[r[f]] = True
        go = r[~f]
        new = nxt[go, cur[go]]
        for i, a, b in zip(go.tolist(), cur[go].tolist(), new.tolist()):
            preds[i].append((a, b))
        cur[go] = new
    return Paths(ex, heads, preds)


def prediction_accuracy(exit_logits: Sequence[torch.Tensor], rule: PredictiveRule, paths: Paths) -> dict:
    """Share of predictions whose next check was the input's actual exit (see the module docstring)."""
    fires = fires_maxlogit(exit_logits, rule)
    _, gave_up_all = next_exits(exit_logits, rule)
    e = fires.shape[1]
    actual_after = {k: first_true(fires, k + 1) for k in range(e)}
    first_ok, first_n, all_ok, all_n = 0, 0, 0, 0
    for i, plist in enumerate(paths.predictions):
        for h, (k, p) in enumerate(plist):
            if k == e - 1:          # from the last exit only 'final' is possible: not a prediction
                continue
            a = int(actual_after[k][i])
            ok = a == p or (bool(gave_up_all[i, k]) and a > p)
            all_ok += ok
            all_n += 1
            if h == 0:
                first_ok += ok
                first_n += 1
    return {"prediction_accuracy": 100.0 * first_ok / first_n if first_n else None, "n_first_predictions": first_n,
            "prediction_accuracy_all": 100.0 * all_ok / all_n if all_n else None, "n_predictions": all_n}
