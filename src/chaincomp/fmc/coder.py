"""Per-block choice of endpoint mode and scale (encoder) and value reconstruction (decoder).

Why both directions live here: the decoder must rebuild exactly the values the encoder measured
its error against, so both evaluate lo + (hi - lo) * f with the same tables, dtype and operation
order (endpoints are block values, hence exact in the stored dtype). The encoder scores every
allowed (mode, scale) candidate on all blocks at once and keeps, per block, the one with the
lowest squared error; ties keep the earlier candidate (mode A before B, scales in given order).

Everything is torch over (blocks, values) tensors on the map's device, with Python loops only over
the handful of candidates. Why it is fast: point indices come from one table lookup per value
(`points.cells`), constant blocks are set aside before any per-value work, and mode B is only
scored on blocks that contain a zero and at least two distinct non-zero values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from chaincomp.errors import UserError

from .dtypes import step, value_bits
from .methods import Method
from .points import cell_exponent, fraction_lut, fractions, index_lut, table, zero_bounds
from .scratch import scratch

CONST, MODE_A, MODE_B = 0, 1, 2


@dataclass
class Coded:
    """Encoder decisions for a batch of blocks."""

    e0: torch.Tensor  # (nb,) stored endpoints, work dtype
    e1: torch.Tensor
    scale: torch.Tensor  # (nb,) uint8 position in the stream's scale list
    idx: torch.Tensor  # (nb, n) uint8 point indices
    mode: torch.Tensor  # (nb,) int8 CONST / MODE_A / MODE_B

    def subset(self, sel: torch.Tensor) -> "Coded":
        return Coded(self.e0[sel], self.e1[sel], self.scale[sel], self.idx[sel], self.mode[sel])


def _rows(mask: torch.Tensor) -> torch.Tensor:
    return mask.nonzero().view(-1)


def _row_reduce(v: torch.Tensor, op, reduce) -> torch.Tensor:
    """Per-row min or max. Short rows (16 values: the paper's blocks) reduce by halving, elementwise
    over all rows at once, which is faster than the strided row reduction."""
    n = v.shape[1]
    if n > 32 or n & (n - 1) or n == 1:
        return reduce(v, 1)
    h = n // 2
    s = op(v[:, :h], v[:, h:], out=scratch("halving", (v.shape[0], h), v.dtype, v.device))
    while h > 1:
        h //= 2
        op(s[:, :h], s[:, h:2 * h], out=s[:, :h])
    return s[:, 0].clone()


def row_min(v: torch.Tensor) -> torch.Tensor:
    return _row_reduce(v, torch.minimum, torch.amin)


def row_max(v: torch.Tensor) -> torch.Tensor:
    return _row_reduce(v, torch.maximum, torch.amax)


def row_min_max(v: torch.Tensor, signed_zeros: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block min and max. Among equal values the last one counts (as numpy's reduction did):
    that decides only the sign of a zero endpoint, which the stream stores. `signed_zeros=False`
    promises there is no -0.0 in v and skips the check."""
    lo, hi = row_min(v), row_max(v)
    zl, zh = lo == 0, hi == 0
    rows = (zl | zh).nonzero().view(-1)
    if rows.numel() == 0:
        return lo, hi
    zero = lo.new_zeros(())
    if signed_zeros:
        vz = v[rows]
        is_zero = vz == 0
        neg = is_zero & torch.signbit(vz)
        if bool(neg.any()):
            order = torch.arange(1, v.shape[1] + 1, device=v.device)
            last = (is_zero * order).argmax(1, keepdim=True)
            zero = torch.where(neg.gather(1, last)[:, 0], -zero, zero)
    lo[rows] = torch.where(zl[rows], zero, lo[rows])
    hi[rows] = torch.where(zh[rows], zero, hi[rows])
    return lo, hi


def code_blocks(v: torch.Tensor, k: int, method: Method, scale_ids: tuple[int, ...],
                lohi: tuple[torch.Tensor, torch.Tensor] | None = None, storage: torch.dtype = torch.float16) -> Coded:
    """Pick, per block, the (mode, scale) with the lowest squared error and its indices.

    lohi: the blocks' `row_min_max`, when the caller has it already; storage: the stored dtype
    (implicit-scale methods set endpoint bits). For implicit-scale methods `scale` is the
    signalled bit (0 linear, 1 log), not a table position."""
    nb, n = v.shape
    lo, hi = lohi if lohi is not None else row_min_max(v)
    span = hi - lo
    const = span == 0
    n_const = int(const.sum())
    if n_const * 8 > nb:  # set constant blocks aside: their coding is fixed
        rows = _rows(~const)
        vr = torch.index_select(v, 0, rows, out=scratch("rows", (rows.numel(), n), v.dtype, v.device))
        e0r, e1r, scr, idxr, moder = _code_rows(vr, lo[rows], hi[rows], span[rows], k, method, scale_ids, storage)
        e0, e1 = lo.clone(), lo.clone()
        scale = torch.zeros(nb, dtype=torch.uint8, device=v.device)
        idx = torch.zeros((nb, n), dtype=torch.uint8, device=v.device)
        mode = torch.full((nb,), CONST, dtype=torch.int8, device=v.device)
        e0[rows], e1[rows], scale[rows], idx[rows], mode[rows] = e0r, e1r, scr, idxr, moder
        return Coded(e0, e1, scale, idx, mode)
    e0, e1, scale, idx, mode = _code_rows(v, lo, hi, span, k, method, scale_ids, storage)
    if n_const:
        e0, e1 = torch.where(const, lo, e0), torch.where(const, lo, e1)
        scale[const], idx[const], mode[const] = 0, 0, CONST
    return Coded(e0, e1, scale, idx, mode)


def _code_rows(v, lo, hi, span, k, method, sids, storage):
    """`code_blocks` on rows that are (almost all) non-constant; returns (e0, e1, scale, idx, mode).

    Indices come from q = t * 2^e (t = (v - lo) / span): dividing by span / 2^e instead of span
    gives exactly 2^e times the rounded t (scaling by a power of two commutes with rounding in the
    normal range, which q never leaves here), so cells and comparisons equal those on t. Squared
    errors are (v - (lo + span * f))^2 with the reference's operation order: they are exact on
    small integer maps, where different candidates often tie exactly, and ties must stay ties.
    A candidate is a mode with a table per row: explicit methods try every scale of the list;
    implicit-scale methods try linear and the log scale oriented towards zero, and the winner's
    endpoints are then nudged to the parity that signals its scale (`nudge`)."""
    nr = v.shape[0]
    p, n_s, dev, wdt = 1 << k, len(sids), v.device, v.dtype
    safe = span + (span == 0).to(span.dtype)
    mode_a = torch.full((nr,), MODE_A, dtype=torch.int8, device=dev)
    if method.rounding:  # min-max baseline: one uniform candidate, arithmetic index
        t = (v - lo[:, None]) / safe[:, None]
        idx = torch.round(t * (p - 1)).clamp_(0, p - 1).to(torch.uint8)
        return lo, hi, torch.zeros(nr, dtype=torch.uint8, device=dev), idx, mode_a
    fa = tuple(fractions(s, p) for s in sids)
    ea = cell_exponent(fa)
    ga = (1 << ea) + 1
    q = torch.sub(v, lo[:, None], out=scratch("q", v.shape, wdt, dev))
    q.div_((safe / (1 << ea))[:, None]).ceil_()  # t in [0, 1]: no clamp
    c = scratch("c", v.shape, torch.int32, dev).copy_(q)
    brows = _mode_b_rows(v, lo, hi, span) if method.mode_b and p - 1 >= 2 else None
    has_b = brows is not None and brows[0].numel() > 0
    a_tabs = _tables(method, n_s, lo, hi)
    if len(a_tabs) == 1 and not has_b:
        e0, e1 = _signal(method, lo, hi, 0, storage)
        return e0, e1, torch.zeros(nr, dtype=torch.uint8, device=dev), \
            _pick(index_lut(fa, ea, dev), ga, c, a_tabs[0]), mode_a
    cand = []  # squared error per candidate, (nr,) each: mode A candidates, then mode B candidates
    flut = fraction_lut(fa, ea, wdt, dev)
    for tab in a_tabs:
        d = _pick(flut, ga, c, tab, out=q).mul_(span[:, None]).add_(lo[:, None]).sub_(v)
        cand.append(d.mul_(d).sum(1))
    b_tabs = []
    if has_b:
        rb, blo, bhi = brows
        valid = None
        if nr > rb.numel() * 4 // 3:
            full = False
        else:  # (nearly) every row: compute on all of them (no copies), invalid rows score inf
            full = True
            if rb.numel() < nr:
                valid = torch.zeros(nr, dtype=torch.bool, device=dev).index_fill_(0, rb, True)
                blo = torch.ones_like(lo).index_copy_(0, rb, blo)  # placeholders [1, 2] on invalid rows
                bhi = torch.full_like(hi, 2).index_copy_(0, rb, bhi)
                rb = torch.arange(nr, device=dev)
        vb = v if full else torch.index_select(v, 0, rb, out=scratch("vb", (rb.numel(), v.shape[1]), wdt, dev))
        bspan = bhi - blo
        fb = tuple(fractions(s, p - 1) for s in sids)
        eb = cell_exponent(fb)
        g, gb = float(1 << eb), (1 << eb) + 1
        ub = bspan / g
        qb = torch.sub(vb, blo[:, None], out=scratch("qb", vb.shape, wdt, dev)).div_(ub[:, None])  # = 2^eb * tb
        tmp = torch.ceil(qb, out=scratch("q", vb.shape, wdt, dev)).clamp_(0, g)
        cb = scratch("cb", vb.shape, torch.int32, dev).copy_(tmp)
        zg = -blo / ub  # 2^eb * z, z = where the zero falls on t
        if bool((blo > 0).all()):  # bulk above zero (ReLU maps): every table's zero cell is q <= z / 2
            lower = torch.full((1, zg.numel()), -float("inf"), dtype=wdt, device=dev)
            upper = (zg / 2)[None, :]
            shared = _keep(qb, lower, upper, 0)
        else:
            bounds = [zero_bounds(zg, tuple(x * g for x in f)) for f in fb]  # 2^eb * (lower, upper) per scale
            lower, upper = torch.stack([b[0] for b in bounds]), torch.stack([b[1] for b in bounds])
            shared = None
        b_tabs = _tables(method, n_s, blo, bhi)
        flut = fraction_lut(fb, eb, wdt, dev)
        for tab in b_tabs:
            keep = shared if shared is not None else _keep(qb, lower, upper, tab)
            d = _pick(flut, gb, cb, tab, out=tmp).mul_(bspan[:, None]).add_(blo[:, None]).mul_(keep).sub_(vb)  # 0 cell: 0
            sse_b = d.mul_(d).sum(1)
            if full:
                cand.append(sse_b if valid is None else sse_b.masked_fill_(~valid, float("inf")))
            else:
                cand.append(torch.full((nr,), float("inf"), dtype=wdt, device=dev).index_copy_(0, rb, sse_b))
    best, low = torch.zeros(nr, dtype=torch.int64, device=dev), cand[0]
    for i in range(1, len(cand)):  # first minimum on ties: mode A before B, candidates in order
        better = cand[i] < low
        best = torch.where(better, i, best)
        low = torch.minimum(low, cand[i])
    n_a = len(a_tabs)
    ia = best.clamp(max=n_a - 1)  # A candidate of each row (B rows are overwritten below)
    tab_a = _rows_tables(a_tabs, nr, dev).gather(0, ia[None, :])[0]
    scale = (ia if method.implicit_scale else tab_a).to(torch.uint8)
    idx = _pick(index_lut(fa, ea, dev), ga, c, tab_a if n_a > 1 else a_tabs[0])
    e0, e1 = lo, hi
    mode = mode_a
    if has_b:
        won = (best.index_select(0, rb) >= n_a).nonzero().view(-1)
        if won.numel():
            rw = rb.index_select(0, won)
            ib = best.index_select(0, rw) - n_a
            tab_b = _rows_tables(b_tabs, rb.numel(), dev).index_select(1, won).gather(0, ib[None, :])[0]
            keep = _keep(qb.index_select(0, won), lower.index_select(1, won), upper.index_select(1, won),
                         0 if shared is not None else tab_b)
            pos = _pick(index_lut(fb, eb, dev), gb, cb.index_select(0, won), tab_b)
            idx.index_copy_(0, rw, (pos + 1).mul_(keep))
            scale.index_copy_(0, rw, (ib if method.implicit_scale else tab_b).to(torch.uint8))
            e0 = lo.index_copy(0, rw, bhi.index_select(0, won))  # mode B: e0 > e1
            e1 = hi.index_copy(0, rw, blo.index_select(0, won))
            mode = mode.index_fill(0, rw, MODE_B)
    if method.implicit_scale:
        is_b = mode == MODE_B
        a, b = torch.where(is_b, e1, e0), torch.where(is_b, e0, e1)
        a, b = nudge(a, b, scale, storage)
        e0, e1 = torch.where(is_b, b, a), torch.where(is_b, a, b)
    return e0, e1, scale, idx, mode


def _tables(method: Method, n_s: int, a: torch.Tensor, b: torch.Tensor) -> list:
    """Table per candidate for ranges [a, b]: each scale of the list (explicit methods), or linear
    and the log oriented towards zero (implicit methods; `implicit_table`)."""
    if not method.implicit_scale:
        return list(range(n_s))
    below = b <= 0
    if not bool(below.any()):
        return [0, 1]
    return [0, 2 if bool(below.all()) else implicit_table(torch.ones_like(a, dtype=torch.uint8), a, b)]


def _signal(method: Method, a: torch.Tensor, b: torch.Tensor, sigma, storage):
    """Implicit methods: the range nudged to the parity of its scale bit; others: unchanged."""
    return nudge(a, b, sigma, storage) if method.implicit_scale else (a, b)


def implicit_table(sigma: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Table position in IMPLICIT_SCALES for signalled bit sigma on range [a, b]: 0 linear; for
    sigma = 1 the log scale dense towards zero, i.e. rlog when the range lies at or below zero."""
    return sigma.to(torch.uint8) * (1 + (b <= 0).to(torch.uint8))


def nudge(a: torch.Tensor, b: torch.Tensor, sigma, storage) -> tuple[torch.Tensor, torch.Tensor]:
    """Endpoints [a, b] whose stored bit patterns have XOR parity `sigma` (an int or per-row
    tensor): unchanged where they already do, else moved by one code step at the end away from
    zero, outwards (b up for ranges above zero, a down for ranges at or below it), or at the other
    end when the range already reaches the dtype's limit. Neither the order of the endpoints (the
    mode) nor the side of zero of b (the log orientation) ever changes.

    Why: the implicit-scale method signals linear/log in the endpoints themselves (the XOR of
    their lowest bits), as BC1 signals its mode in their order; the price is one code step (one
    16-bit float ulp, or 1 on integer maps) on one endpoint of the blocks whose parity is off."""
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(torch.int32)
    off = ((value_bits(a, storage) ^ value_bits(b, storage)) & 1) != sigma
    rows = off.nonzero().view(-1)
    if rows.numel() == 0:
        return a, b
    ar, br = a.index_select(0, rows), b.index_select(0, rows)
    pos = br > 0
    # above zero: b up (b stays > 0); at or below zero: a down (b stays <= 0)
    b_up, ok_b_up = step(br, True, storage)
    a_down, ok_a_down = step(ar, False, storage)
    move_b_up = pos & ok_b_up
    move_a_down = ~pos & ok_a_down
    a2, b2 = torch.where(move_a_down, a_down, ar), torch.where(move_b_up, b_up, br)
    stuck = ~(move_b_up | move_a_down)
    if bool(stuck.any()):  # the end away from zero is the dtype's limit: use the other end
        b_down, _ = step(br, False, storage)
        a_up, _ = step(ar, True, storage)
        alt_a_down = stuck & pos & ok_a_down  # b stays > 0
        alt_b_up = stuck & ~pos & (br < 0) & ok_b_up  # b stays <= 0
        rest = stuck & ~alt_a_down & ~alt_b_up  # the range spans the dtype: one step inwards
        in_b = rest & (b_down > ar) & (pos == (b_down > 0))
        in_a = rest & ~in_b
        a2 = torch.where(alt_a_down, a_down, torch.where(in_a, a_up, a2))
        b2 = torch.where(alt_b_up, b_up, torch.where(in_b, b_down, b2))
    return a.index_copy(0, rows, a2), b.index_copy(0, rows, b2)


def _rows_tables(tabs: list, rows: int, device) -> torch.Tensor:
    """(len(tabs), rows) uint8 table positions."""
    return torch.stack([_positions(tab, rows, device) for tab in tabs])


def _positions(tab, n: int, device) -> torch.Tensor:
    """Per-row table position as uint8 (a fixed table -> that position on every row)."""
    if isinstance(tab, int):
        return torch.full((n,), tab, dtype=torch.uint8, device=device)
    return tab.to(torch.uint8)


def _pick(lut: torch.Tensor, size: int, c: torch.Tensor, tab, out: torch.Tensor | None = None) -> torch.Tensor:
    """lut is len(tables) concatenated tables of `size` entries; entry c of table `tab` (an int,
    or a per-row position tensor), as one index_select over all values (into `out` if given)."""
    if out is None:
        out = torch.empty(c.shape, dtype=lut.dtype, device=c.device)
    if isinstance(tab, int):
        torch.index_select(lut.narrow(0, tab * size, size), 0, c.view(-1), out=out.view(-1))
    else:
        at = torch.add(c, tab.to(torch.int32)[:, None] * size, out=scratch("pick", c.shape, torch.int32, c.device))
        torch.index_select(lut, 0, at.view(-1), out=out.view(-1))
    return out


def _keep(q: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, tab) -> torch.Tensor:
    """1 where a mode-B value keeps its bulk point, 0 where it falls in the zero cell (uint8);
    lower / upper are per (table, row)."""
    if isinstance(tab, int):
        lo_, up_ = lower[tab], upper[tab]
    else:
        sel = tab.long()[None, :]
        lo_, up_ = lower.gather(0, sel)[0], upper.gather(0, sel)[0]
    above = torch.gt(q, up_[:, None], out=scratch("keep", q.shape, torch.bool, q.device))
    if bool(torch.isinf(lo_).all()):  # the zero is the lowest point: one comparison
        return above.view(torch.uint8)
    return ((q <= lo_[:, None]) | above).view(torch.uint8)


def _mode_b_rows(v, lo, hi, span):
    """(rows, their non-zero min, non-zero max) where mode B is valid: the block holds a zero and at
    least two distinct non-zero values."""
    cand = _rows((lo <= 0) & (hi >= 0) & (span > 0))
    if cand.numel() == 0:
        return cand, lo[:0], hi[:0]
    if cand.numel() * 4 > v.shape[0] * 3:  # most rows: work on all of them, no copy
        rows = torch.arange(v.shape[0], device=v.device)
        blo, bhi, ok = _nonzero_range(v, lo, hi)
        ok &= torch.zeros_like(ok).index_fill_(0, cand, True)
        return rows[ok], blo[ok], bhi[ok]
    blo, bhi, ok = _nonzero_range(v.index_select(0, cand), lo.index_select(0, cand), hi.index_select(0, cand))
    if bool(ok.all()):
        return cand, blo, bhi
    return cand[ok], blo[ok], bhi[ok]


def _nonzero_range(vc, lo, hi):
    """Per row: min and max of the non-zero values, and whether the row has a zero and two
    distinct non-zero values. Rows with lo = 0 (ReLU) have a zero and their max is non-zero, so
    only rows with negative values need the max and the zero test."""
    zero = torch.eq(vc, 0, out=scratch("zero", vc.shape, torch.bool, vc.device))
    big = 2 * float(torch.maximum(hi, -lo).max()) + 1  # zeros move above every value; others get + 0
    blo = row_min(torch.add(vc, zero, alpha=big, out=scratch("nonzero", vc.shape, vc.dtype, vc.device)))
    bhi, ok = hi.clone(), lo == 0
    neg = (lo < 0).nonzero().view(-1)
    if neg.numel():
        vn, zn = vc.index_select(0, neg), zero.index_select(0, neg)
        bhi.index_copy_(0, neg, row_max(torch.add(vn, zn, alpha=-big)))
        ok.index_copy_(0, neg, zn.view(torch.uint8).amax(1) > 0)
    return blo, bhi, ok & (blo < bhi)


def reconstruct(e0: torch.Tensor, e1: torch.Tensor, scale: torch.Tensor | None, idx: torch.Tensor, k: int,
                method: Method, scale_ids: tuple[int, ...]) -> torch.Tensor:
    """Decoder side: values from stored endpoints, scale flags and indices (order gives the mode;
    for implicit-scale methods the endpoints give the scale too, and `scale` is ignored).

    The 2^k points of each block are computed once per block and gathered by index."""
    mode_b = e0 > e1
    if bool(mode_b.any()) and not (method.mode_b and (1 << k) - 1 >= 2):
        raise UserError(f"fmc payload uses endpoint mode B, which method '{method.name}' with "
                        f"{k}-bit indices never writes")
    a, b = torch.where(mode_b, e1, e0), torch.where(mode_b, e0, e1)
    if method.implicit_scale:  # no flag in the stream: `scale` is the endpoints' parity bit
        scale = implicit_table(scale, a, b)
    elif bool((scale >= len(scale_ids)).any()):
        raise UserError("fmc payload has a scale flag outside the header's scale list")
    combo = scale.long() + len(scale_ids) * mode_b.long()
    pts = a[:, None] + (b - a)[:, None] * table(scale_ids, k, e0.dtype, e0.device)[combo]
    pts[:, 0].masked_fill_(mode_b, 0)
    return pts.gather(1, scratch("idx64", idx.shape, torch.int64, idx.device).copy_(idx))
