"""Batch-size-1 exit runtime that really skips work, and the cost and energy of what it ran.

A batched simulation (`exits.predictive`) is exact for accuracy and MACs but runs every block and
every head; latency and energy savings only exist when blocks after the exit and heads nobody
asked for are never executed. `ExitRuntime` runs the blocks one by one and evaluates only the heads
a way needs: ``classic`` (no exit), ``early_exit`` (every exit passed, confidence / entropy /
maxlogit) and ``predictive`` (only the exits the engine predicts). Every input yields a `Trace`:
exit, heads evaluated, predictions, blocks run and wall latency (perf_counter).

Costs come from `energy.cost.profile_model` split by module prefix (``blocks.i.``, ``exits.k.``,
``head.``), so MACs, bytes and bit widths are those of the real (possibly pruned/quantized) model.
Energy is modelled two ways (both labelled "modelled"): per operation (`energy.ops`: MACs by bit
width + DRAM bytes) and on a platform profile under the DVFS policy (`energy.dvfs`).
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from ..energy.cost import profile_model
from ..energy.dvfs import choose_point, simulate_inference
from ..energy.ops import modelled_energy_j
from ..energy.profiles import Profile
from .heads import unfolded
from .model import ExitNetwork
from .predictive import Paths, PredictiveRule, as_f64, strategy_fires


@dataclass
class Trace:
    """What one input ran. ``exit``: output index (n_exits = final); ``heads``: exits evaluated, in order;
    ``predictions``: (exit where predicted, next exit predicted)."""

    exit: int
    last_block: int
    heads: list[int] = field(default_factory=list)
    predictions: list[tuple[int, int]] = field(default_factory=list)
    latency_s: float = 0.0
    engine_s: float = 0.0        # wall time of the engine's decisions (predictive): the runtime's own overhead


def traces_from_paths(paths: Paths, points: Sequence[int], n_blocks: int) -> list[Trace]:
    """The traces a batched simulation implies (latency unknown: 0)."""
    e = len(points)
    out = []
    for i, ex in enumerate(paths.exit.tolist()):
        out.append(Trace(ex, points[ex] if ex < e else n_blocks - 1, paths.head_order(i), list(paths.predictions[i])))
    return out


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        dst[k] += v


@dataclass
class Part:
    macs: int = 0
    bitops: int = 0
    dram_bytes: float = 0.0
    macs_by_bits: dict = field(default_factory=lambda: defaultdict(int))


class _head_owners:
    """Which exit head (index) was running at each conv/linear call of the next forward pass, None
    outside heads: shared parts (`fine.authors_network`) are named once but run in many exits."""

    def __init__(self, net: ExitNetwork):
        self.cur: list = [None]
        self.calls: list = []
        self.handles = []
        for k, p in enumerate(net.exit_points):
            h = net.exits[str(p)]
            self.handles.append(h.register_forward_pre_hook(lambda m, a, k=k: self.cur.__setitem__(0, k)))
            self.handles.append(h.register_forward_hook(lambda m, a, o: self.cur.__setitem__(0, None)))
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                self.handles.append(m.register_forward_hook(lambda m, a, o: self.calls.append(self.cur[0])))

    def finish(self) -> list:
        for h in self.handles:
            h.remove()
        return self.calls


class CostTable:
    """Per-block, per-exit-head and final-head costs of one input, from one profiled forward pass."""

    def __init__(self, net: ExitNetwork, sample: torch.Tensor):
        owners = _head_owners(net)
        with unfolded(net):
            prof = profile_model(net, sample[:1])
        owner = owners.finish()
        self.points = net.exit_points
        self.n_blocks = len(net.blocks)
        self.blocks = [Part() for _ in range(self.n_blocks)]
        self.exits = [Part() for _ in self.points]
        self.final = Part()
        for l, k in zip(prof.layers, owner):
            root, _, rest = l.name.partition(".")
            if k is not None:           # run by exit head k, its own layer or one exits share
                part = self.exits[k]
            elif root == "blocks":
                part = self.blocks[int(rest.split(".")[0])]
            else:
                part = self.final
            part.macs += l.macs
            part.bitops += l.bitops
            part.dram_bytes += l.weight_bytes + l.in_bytes + l.out_bytes
            part.macs_by_bits[(l.weight_bits, l.act_bits)] += l.macs

    def parts(self, t: Trace) -> list[list[Part]]:
        """The parts run, grouped by block (a block with the head evaluated after it)."""
        at = {self.points[k]: k for k in t.heads}
        segs = []
        for b in range(t.last_block + 1):
            seg = [self.blocks[b]]
            if b in at:
                seg.append(self.exits[at[b]])
            if b == self.n_blocks - 1 and t.exit == len(self.points):
                seg.append(self.final)
            segs.append(seg)
        return segs

    def cost(self, t: Trace) -> dict:
        c = {"macs": 0, "bitops": 0, "dram_bytes": 0.0}
        mbb: dict = defaultdict(int)
        for seg in self.parts(t):
            for p in seg:
                c["macs"] += p.macs
                c["bitops"] += p.bitops
                c["dram_bytes"] += p.dram_bytes
                _merge(mbb, p.macs_by_bits)
        c["macs_by_bits"] = dict(mbb)
        return c

    def ops_energy_j(self, t: Trace) -> float:
        """Modelled energy per operation (Horowitz 45 nm): MACs by bit width plus DRAM bytes."""
        c = self.cost(t)
        return modelled_energy_j(c["macs_by_bits"], c["dram_bytes"])["total_j"]

    def _value(self, p: Part, kind: str) -> float:
        if kind == "ops_j":
            return modelled_energy_j(dict(p.macs_by_bits), p.dram_bytes)["total_j"] if p.macs else 0.0
        return float(getattr(p, kind))

    def paths_total(self, paths: Paths, kind: str = "macs") -> torch.Tensor:
        """Per-input total of ``kind`` (macs, bitops, dram_bytes, ops_j) for a batched simulation,
        vectorised: blocks up to the exit, the heads evaluated, the final head if reached."""
        e = len(self.points)
        cum = torch.tensor([self._value(p, kind) for p in self.blocks], dtype=torch.float64).cumsum(0)
        heads = torch.tensor([self._value(p, kind) for p in self.exits], dtype=torch.float64)
        last = torch.tensor([self.points[k] if k < e else self.n_blocks - 1 for k in range(e + 1)])[paths.exit]
        total = cum[last] + paths.heads.double() @ heads
        return total + (paths.exit == e).double() * self._value(self.final, kind)


class PlatformModel:
    """The cost table on a platform profile: cycles per part, and the DVFS schedule of a trace."""

    def __init__(self, costs: CostTable, profile: Profile, guarded: bool = False):
        self.costs, self.profile, self.guarded = costs, profile, guarded
        cyc = lambda p: profile.cycles(dict(p.macs_by_bits)) if p.macs else 0.0
        self.block_cycles = [cyc(p) for p in costs.blocks]
        self.exit_cycles = [cyc(p) for p in costs.exits]
        self.final_cycles = cyc(costs.final)
        self.classic_cycles = sum(self.block_cycles) + self.final_cycles
        self.top = profile.top()
        self._memo: dict = {}

    def remaining_cycles(self, after_block: int, next_exit: int) -> float:
        """Cycles from block ``after_block + 1`` to the predicted next exit's head (or the final head)."""
        e = len(self.costs.points)
        end = self.costs.points[next_exit] if next_exit < e else self.costs.n_blocks - 1
        tail = self.exit_cycles[next_exit] if next_exit < e else self.final_cycles
        return sum(self.block_cycles[after_block + 1:end + 1]) + tail

    def guard_s(self, next_exit: int, first: bool = False) -> float:
        """Guarded policy: seconds at the top point for the worst case beyond what the policy plans for:
        after a prediction, the rest of the network and every later head, should the predicted exit
        not fire; before the first one (planned: whole network + first head), every later head.
        0 for the guide's policy."""
        e = len(self.costs.points)
        if not self.guarded or next_exit >= e:
            return 0.0
        heads = sum(self.exit_cycles[next_exit + 1:])
        if first:
            return heads / self.top.freq_hz
        b = self.costs.points[next_exit]
        return (sum(self.block_cycles[b + 1:]) + self.final_cycles + heads) / self.top.freq_hz

    def segments(self, t: Trace) -> tuple[list[float], list[float | None]]:
        """Cycles of each block-segment run, and the predicted remaining cycles known before each."""
        at = {self.costs.points[k]: k for k in t.heads}
        cycles = []
        for b in range(t.last_block + 1):
            c = self.block_cycles[b] + (self.exit_cycles[at[b]] if b in at else 0.0)
            if b == self.costs.n_blocks - 1 and t.exit == len(self.costs.points):
                c += self.final_cycles
            cycles.append(c)
        pred: list[float | None] = [None] * len(cycles)
        # before any prediction: assume the whole network plus the first check (as Governor.begin)
        pred[0] = self.classic_cycles + (self.exit_cycles[t.heads[0]] if t.heads else 0.0)
        for k, nxt in t.predictions:
            b = self.costs.points[k]
            if b + 1 < len(pred):
                pred[b + 1] = self.remaining_cycles(b, nxt)
        return cycles, pred

    def simulate(self, t: Trace, schedule: str, deadline_s: float):
        """`energy.dvfs.simulate_inference` of the trace (modelled), memoised by execution path."""
        cycles, pred = self.segments(t)
        key = (schedule, tuple(cycles), tuple(pred), deadline_s)
        if key not in self._memo:
            if schedule == "predictive" and self.guarded:
                self._memo[key] = self._guarded(t, cycles, pred, deadline_s)
            else:
                kw = {"predicted_remaining": pred} if schedule == "predictive" else {}
                self._memo[key] = simulate_inference(self.profile, cycles, schedule, deadline_s, **kw)
        return self._memo[key]

    def _guarded(self, t: Trace, cycles: list[float], pred: list, deadline_s: float):
        """The predictive schedule of `simulate_inference`, with the guard time counted as spent."""
        guard = [0.0] * len(cycles)
        guard[0] = self.guard_s(t.heads[0] if t.heads else len(self.costs.points), first=True)
        for k, nxt in t.predictions:
            if self.costs.points[k] + 1 < len(guard):
                guard[self.costs.points[k] + 1] = self.guard_s(nxt)
        return simulate_inference(self.profile, cycles, "predictive", deadline_s, predicted_remaining=pred,
                                  reserve_s=guard)


class Governor:
    """Drives a frequency controller during a predictive inference with the same policy (and the
    same modelled clock) as `PlatformModel.simulate`, so what is applied is what is reported."""

    def __init__(self, platform: PlatformModel, deadline_s: float, controller=None):
        self.pm, self.deadline, self.ctl = platform, deadline_s, controller
        self.points = platform.profile.points()
        self.t, self.point, self.chosen = 0.0, self.points[-1], []

    def begin(self, first_exit: int) -> None:
        self.t = 0.0
        e = len(self.pm.exit_cycles)
        self._set(self.pm.classic_cycles + (self.pm.exit_cycles[first_exit] if first_exit < e else 0.0),
                  self.pm.guard_s(first_exit, first=True))

    def ran(self, cycles: float) -> None:
        self.t += cycles / self.point.freq_hz

    def predicted(self, after_block: int, next_exit: int) -> None:
        if after_block + 1 < self.pm.costs.n_blocks:
            self._set(self.pm.remaining_cycles(after_block, next_exit), self.pm.guard_s(next_exit))

    def _set(self, remaining: float, guard_s: float = 0.0) -> None:
        self.point, _ = choose_point(self.points, remaining, self.t + guard_s, self.deadline)
        self.chosen.append(self.point.freq_mhz)
        if self.ctl is not None:
            self.ctl.set_point(self.point)


class ExitRuntime:
    """Runs an ExitNetwork one input at a time, block by block, evaluating only the heads needed."""

    def __init__(self, net: ExitNetwork):
        self.net = net.eval()
        self.blocks: list[nn.Module] = list(net.blocks)
        self.points = net.exit_points
        self.heads = [net.exits[str(p)] for p in self.points]
        self.final = net.head
        self.n_exits = len(self.points)
        self.exit_after = {p: k for k, p in enumerate(self.points)}

    @torch.inference_mode()
    def classic(self, x: torch.Tensor) -> tuple[torch.Tensor, Trace]:
        t0 = time.perf_counter()
        for b in self.blocks:
            x = b(x)
        out = self.final(x)
        return out, Trace(self.n_exits, len(self.blocks) - 1, latency_s=time.perf_counter() - t0)

    @torch.inference_mode()
    def early_exit(self, x: torch.Tensor, criterion: str, threshold: float | Sequence[float],
                   start_block: int = 0) -> tuple[torch.Tensor, Trace]:
        """Evaluate every exit from L0 on; leave at the first that fires."""
        t0 = time.perf_counter()
        heads = []
        for i, b in enumerate(self.blocks):
            x = b(x)
            k = self.exit_after.get(i)
            if k is None or i < start_block:
                continue
            z = self.heads[k](x)
            heads.append(k)
            t = threshold[k] if isinstance(threshold, (list, tuple)) else threshold
            if strategy_fires(as_f64(z[0]), criterion, t):
                return z, Trace(k, i, heads, latency_s=time.perf_counter() - t0)
        out = self.final(x)
        return out, Trace(self.n_exits, len(self.blocks) - 1, heads, latency_s=time.perf_counter() - t0)

    @torch.inference_mode()
    def predictive(self, x: torch.Tensor, rule: PredictiveRule,
                   governor: Governor | None = None) -> tuple[torch.Tensor, Trace]:
        """Evaluate only predicted exits; re-predict where one does not fire; else the final head.
        Blocks run in slices up to the next predicted exit; the engine's work at an exit is
        `PredictiveRule.decide` (one matmul over the precomputed rounds, a compare, one read)."""
        t0 = time.perf_counter()
        target = rule.first_exit()
        heads, preds, engine = [], [], 0.0
        if governor is not None:
            governor.begin(target)
        i = 0
        while target < self.n_exits:
            tb = self.points[target]
            for j in range(i, tb + 1):
                x = self.blocks[j](x)
                if governor is not None:
                    governor.ran(governor.pm.block_cycles[j])
            i = tb + 1
            z = self.heads[target](x)
            heads.append(target)
            if governor is not None:
                governor.ran(governor.pm.exit_cycles[target])
            t1 = time.perf_counter()
            nxt = int(rule.decide(target, z[0]))
            engine += time.perf_counter() - t1
            if nxt < 0:
                return z, Trace(target, tb, heads, preds, time.perf_counter() - t0, engine)
            preds.append((target, nxt))
            if governor is not None:
                governor.predicted(tb, nxt)
            target = nxt
        for j in range(i, len(self.blocks)):
            x = self.blocks[j](x)
            if governor is not None:
                governor.ran(governor.pm.block_cycles[j])
        out = self.final(x)
        return out, Trace(self.n_exits, len(self.blocks) - 1, heads, preds, time.perf_counter() - t0, engine)


def run_split(fn: Callable[[torch.Tensor], tuple[torch.Tensor, Trace]], x: torch.Tensor, *,
              warmup: int = 5, bar=None) -> tuple[torch.Tensor, list[Trace]]:
    """Run ``fn`` on every input of ``x`` at batch size 1: (predicted class per input, traces)."""
    for i in range(min(warmup, len(x))):
        fn(x[i:i + 1])
    preds, traces = [], []
    for i in range(len(x)):
        out, t = fn(x[i:i + 1])
        preds.append(int(out.argmax(-1)))
        traces.append(t)
        if bar is not None:
            bar.advance(1)
    return torch.tensor(preds), traces


def run_interleaved(fns: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, Trace]]], x: torch.Tensor, *,
                    warmup: int = 5, bar=None) -> dict[str, tuple[torch.Tensor, list[Trace]]]:
    """Every way on every input, input by input, the order of the ways rotated per input: a drift in
    the machine's load then falls on all ways alike, which way-by-way runs cannot promise."""
    names = list(fns)
    for i in range(min(warmup, len(x))):
        for n in names:
            fns[n](x[i:i + 1])
    preds: dict[str, list[int]] = {n: [] for n in names}
    traces: dict[str, list[Trace]] = {n: [] for n in names}
    for i in range(len(x)):
        r = i % len(names)
        for n in names[r:] + names[:r]:
            out, t = fns[n](x[i:i + 1])
            preds[n].append(int(out.argmax(-1)))
            traces[n].append(t)
            if bar is not None:
                bar.advance(1)
    return {n: (torch.tensor(preds[n]), traces[n]) for n in names}
