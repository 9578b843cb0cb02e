"""Least-squares endpoints: the encoder option `endpoints: fit` (default `range`: the block's min and max).

Why: min/max endpoints spend the block's points on its extremes; on dense maps (tanh, GELU, un-rectified
residual streams) most values sit in between and a better pair of endpoints lowers the squared error at
the same bits. Given each value's point fraction f, the decoded value is a + (b - a) f = a (1 - f) + b f,
linear in (a, b), so the best endpoints for those indices solve a 2x2 least-squares system per block
(the refinement step of BC1/DXT texture compressors). The endpoints are then rounded to the stored dtype,
every value takes its nearest point again, and a block keeps the new coding only where its squared error
(of the values the decoder will really produce) went down. Nothing in the stream changes: the decoder
reads endpoints as always, so `fit` streams decode everywhere.

Mode-B blocks (a zero point beside the bulk, ReLU maps) are refined over their bulk values. Not for the
implicit method (`preset: paper`): its endpoints also signal the scale by their parity. This is the torch
path (any device); the native CPU kernel runs the same arithmetic per block (`native_fit.h`, byte-identical).
"""
from __future__ import annotations

import torch

from . import dtypes
from .coder import CONST, MODE_B, Coded
from .points import table

ENDPOINTS = ("range", "fit")
ITERATIONS = 2   # the second pass still lowers the error on ESPCN's maps; a third changes almost nothing


def fit_endpoints(v: torch.Tensor, coded: Coded, k: int, scale_ids: tuple[int, ...], storage: torch.dtype,
                  iterations: int = ITERATIONS) -> Coded:
    """`coded` with least-squares endpoints (and new indices) on the blocks where they lower the error.

    Mode A: every value's point is a (1 - f) + b f. Mode B (a block with zeros: index 0 is the exact zero,
    the other points span the non-zero bulk [a, b], stored as e0 = b > e1 = a): the fit runs over the
    values on bulk points only, and every value may then move to the zero point or off it."""
    rows = (coded.mode != CONST).nonzero().view(-1)
    if rows.numel() == 0:
        return coded
    work = v.dtype
    vs = v.index_select(0, rows).double()
    e0, e1 = coded.e0.index_select(0, rows), coded.e1.index_select(0, rows)
    is_b = (coded.mode.index_select(0, rows) == MODE_B)
    lo, hi = torch.where(is_b, e1, e0), torch.where(is_b, e0, e1)   # the range the points span
    idx = coded.idx.index_select(0, rows).long()
    combo = coded.scale.index_select(0, rows).long() + len(scale_ids) * is_b.long()
    fr = table(scale_ids, k, work, v.device).index_select(0, combo)
    zero_col = torch.zeros_like(fr, dtype=torch.bool)
    zero_col[:, 0] = is_b

    def decoded_points(a, b):   # the decoder's arithmetic (`coder.reconstruct`), then the stored dtype
        pts = dtypes.to_storage(a[:, None] + (b - a)[:, None] * fr, storage).double()
        return pts.masked_fill_(zero_col, 0.0)

    err = (decoded_points(lo, hi).gather(1, idx) - vs).pow_(2).sum(1)
    for _ in range(iterations):
        f = fr.gather(1, idx).double()
        w = ((idx > 0) | ~is_b[:, None]).double()   # mode B: values on the zero point do not pull the range
        u = 1 - f
        suu, suw, sww = (w * u * u).sum(1), (w * u * f).sum(1), (w * f * f).sum(1)
        suv, swv = (w * u * vs).sum(1), (w * f * vs).sum(1)
        det = suu * sww - suw * suw
        ok = det > 1e-12 * (suu * sww).clamp_min(1e-300)   # every value on one point: no fit
        det = torch.where(ok, det, torch.ones_like(det))
        a = dtypes.to_storage(((sww * suv - suw * swv) / det).to(work), storage).to(work)
        b = dtypes.to_storage(((suu * swv - suw * suv) / det).to(work), storage).to(work)
        ok &= torch.isfinite(a) & torch.isfinite(b) & (a < b)
        a, b = torch.where(ok, a, lo), torch.where(ok, b, hi)
        pts = decoded_points(a, b)
        srt, order = pts.sort(dim=1, stable=True)   # mode B's zero may sit anywhere among the points
        mids = ((srt[:, :-1] + srt[:, 1:]) / 2).contiguous()   # exact in float64
        new_idx = order.gather(1, torch.searchsorted(mids, vs.contiguous()))
        new_err = (pts.gather(1, new_idx) - vs).pow_(2).sum(1)
        better = ok & (new_err < err)
        if not bool(better.any()):
            break
        lo, hi = torch.where(better, a, lo), torch.where(better, b, hi)
        idx = torch.where(better[:, None], new_idx, idx)
        err = torch.where(better, new_err, err)
    out_e0, out_e1, out_idx = coded.e0.clone(), coded.e1.clone(), coded.idx.clone()
    out_e0[rows], out_e1[rows] = torch.where(is_b, hi, lo), torch.where(is_b, lo, hi)
    out_idx[rows] = idx.to(torch.uint8)
    return Coded(out_e0, out_e1, coded.scale, out_idx, coded.mode)
