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

import numpy as np
import torch


GiveUp = Literal["jump", "final"]
Criterion = Literal["maxlogit", "confidence"]


def smoothing(classes: int, rounds: int) -> np.ndarray:
    """(C, R*C) float64: z @ it gives the engine's vector after every round at once. One round is
    the 1-D convolution with [1, 1, 1] and zero padding, a tridiagonal matrix M; round i is M^i
    (integer entries, exact). Precomputed per rule, so the engine is one matmul, not R passes."""
    m = np.eye(classes) + np.eye(classes, k=1) + np.eye(classes, k=-1)
    powers, p = [], np.eye(classes)
    for _ in range(rounds):
        p = p @ m
        powers.append(p)
    return np.concatenate(powers, 1)


def engine_score(v: np.ndarray, criterion: str) -> np.ndarray:
    """The score the exit test and the engine compare with a limit, over the last axis (classes):
    max softmax (= 1 / sum exp(v - max v)) or max |v|. NumPy float64 in the batched simulation and
    the batch-1 runtime alike, so both take the same decision on the same logits; per input it is
    a handful of microseconds where torch's per-operator dispatch costs tens."""
    if criterion == "confidence":
        return 1.0 / np.exp(v - v.max(-1, keepdims=True)).sum(-1)
    return np.abs(v).max(-1)


def as_f64(z) -> np.ndarray:
    """Logits (torch, any device, or a sequence) as a float64 NumPy array on the host."""
    if isinstance(z, torch.Tensor):
        return z.numpy(force=True).astype(np.float64)
    return np.asarray(z, dtype=np.float64)


@dataclass(frozen=True)
class PredictiveRule:
    """Everything the engine needs: thresholds T_k, beta, rounds R, start block L0, give-up policy,
    and the criterion. ``maxlogit`` (the paper): fire when max|z_k| >= beta*T_k, predict exit j when
    max|v| > beta*T_j. ``confidence`` (the same group's later code): fire when max softmax(z_k) >=
    beta, predict j when max softmax(v) > beta; T is not used."""

    points: tuple[int, ...]          # block index of each exit
    thresholds: tuple[float, ...]    # T_k
    beta: float
    rounds: int = 8
    start_block: int = 0
    give_up: GiveUp = "jump"
    criterion: Criterion = "maxlogit"

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0 (got {self.beta})")
        if len(self.points) != len(self.thresholds):
            raise ValueError("one threshold per exit point")
        e, r = len(self.points), self.rounds
        b2e = {b: j for j, b in enumerate(self.points)}
        # per exit k and round i: the exit at block points[k] + i (or -1) and its limit (inf: none);
        # a last column holds the give-up target, reached when no round hits
        targets = np.full((e, r + 1), -1, dtype=np.int64)
        limits = np.full((e, r), np.inf)
        for k, b in enumerate(self.points):
            for i in range(1, r + 1):
                j = b2e.get(b + i)
                if j is not None:
                    targets[k, i - 1], limits[k, i - 1] = j, self.limit(j)
            targets[k, r] = e if self.give_up == "final" else self.exit_at_or_after(b + r)
        own = np.array([self.limit(k) for k in range(e)], dtype=np.float64)
        object.__setattr__(self, "_targets", targets)
        object.__setattr__(self, "_limits", limits)
        object.__setattr__(self, "_own", own)
        object.__setattr__(self, "_mats", {})

    @property
    def n_exits(self) -> int:
        return len(self.points)

    def limit(self, k: int) -> float:
        return self.beta if self.criterion == "confidence" else self.beta * self.thresholds[k]

    def first_exit(self) -> int:
        """Index of the first exit checked (>= L0), or n_exits when there is none."""
        return next((k for k, b in enumerate(self.points) if b >= self.start_block), self.n_exits)

    def exit_at_or_after(self, block: int) -> int:
        return next((k for k, b in enumerate(self.points) if b >= block), self.n_exits)

    def rounds_of(self, z: np.ndarray) -> np.ndarray:
        """(..., R, C): the engine's vector after every round, for float64 logits (..., C)."""
        c = z.shape[-1]
        m = self._mats.get(c)
        if m is None:
            m = self._mats[c] = smoothing(c, self.rounds)
        return (z @ m).reshape(*z.shape[:-1], self.rounds, c)

    def decide(self, k: int, z) -> int:
        """The runtime's whole decision at exit k for one input's logits (C,): -1 if exit k fires,
        else the next exit to evaluate (n_exits: none, run to the final classifier). One copy to the
        host, the exit test (as cheap as early exit's), and only if it fails one matmul giving every
        round's vector, one score and one compare: no Python loop over rounds or classes."""
        z = as_f64(z)
        if engine_score(z, self.criterion) >= self._own[k]:
            return -1
        hit = engine_score(self.rounds_of(z), self.criterion) > self._limits[k]
        return int(self._targets[k, hit.argmax() if hit.any() else self.rounds])

    def fires(self, k: int, logits) -> bool:
        return bool(engine_score(as_f64(logits), self.criterion) >= self.limit(k))

    def predict(self, k: int, logits) -> tuple[int, bool]:
        """(index of the next exit to evaluate, gave_up) from exit k's logits; n_exits = none (final)."""
        hit = engine_score(self.rounds_of(as_f64(logits)), self.criterion) > self._limits[k]
        if hit.any():
            return int(self._targets[k, hit.argmax()]), False
        return int(self._targets[k, -1]), True


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


def _stack(exit_logits: Sequence[torch.Tensor]) -> np.ndarray:
    return np.stack([as_f64(z) for z in exit_logits], 1)  # (N, E, C)


def next_exits(exit_logits: Sequence[torch.Tensor], rule: PredictiveRule) -> tuple[torch.Tensor, torch.Tensor]:
    """The engine for every input and exit at once: (next exit index (N, E), gave_up (N, E))."""
    z = _stack(exit_logits)                                    # (N, E, C)
    n, e = z.shape[:2]
    hit = engine_score(rule.rounds_of(z), rule.criterion) > rule._limits     # (N, E, R)
    hit = np.concatenate([hit, np.ones((n, e, 1), dtype=bool)], -1)
    first = hit.argmax(-1)                                     # (N, E): round index, R = give up
    nxt = np.take_along_axis(np.broadcast_to(rule._targets, (n, e, rule.rounds + 1)), first[..., None], -1)[..., 0]
    return torch.from_numpy(nxt.copy()), torch.from_numpy(first == rule.rounds)


def fires_of(exit_logits: Sequence[torch.Tensor], rule: PredictiveRule) -> torch.Tensor:
    """(N, E) bool: exit k fires for the input under the rule's criterion and lies at or after L0."""
    ok = np.array([b >= rule.start_block for b in rule.points])
    return torch.from_numpy((engine_score(_stack(exit_logits), rule.criterion) >= rule._own) & ok)


fires_maxlogit = fires_of


def strategy_score(v: np.ndarray, criterion: str) -> np.ndarray:
    """Early exit's score, higher = more confident (entropy negated), NumPy float64 over the last axis:
    the same arithmetic in the simulation and the runtime, and cheap per input."""
    if criterion == "entropy":
        e = np.exp(v - v.max(-1, keepdims=True))
        p = e / e.sum(-1, keepdims=True)
        return (p * np.log(np.maximum(p, 1e-12))).sum(-1)
    return engine_score(v, criterion)


def strategy_fires(v: np.ndarray, criterion: str, t) -> np.ndarray:
    s = strategy_score(v, criterion)
    return (-s <= t) if criterion == "entropy" else (s >= t)


def fires_rule(exit_logits: Sequence[torch.Tensor], points: Sequence[int], criterion: str,
               threshold: float | Sequence[float], start_block: int = 0) -> torch.Tensor:
    """(N, E) bool for the early-exit strategies: confidence (max softmax >= t), entropy (<= t),
    maxlogit (max|z| >= t_k, thresholds per exit)."""
    z = _stack(exit_logits)
    t = np.asarray(threshold, dtype=np.float64) if isinstance(threshold, (list, tuple)) else threshold
    ok = np.array([b >= start_block for b in points])
    return torch.from_numpy(strategy_fires(z, criterion, t) & ok)


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
    fires = fires_of(exit_logits, rule)
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
    fires = fires_of(exit_logits, rule)
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
