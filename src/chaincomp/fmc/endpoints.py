"""Least-squares endpoints: the encoder option `endpoints: fit` (default `range`: the block's min and max).

Why: min/max endpoints spend the block's points on its extremes; on dense maps (tanh, GELU, un-rectified
residual streams) most values sit in between and a better pair of endpoints lowers the squared error at
the same bits. Given each value's point fraction f, the decoded value is a + (b - a) f = a (1 - f) + b f,
linear in (a, b), so the best endpoints for those indices solve a 2x2 least-squares system per block
(the refinement step of BC1/DXT texture compressors). The endpoints are then rounded to the stored dtype,
every value takes its nearest point again, and a block keeps the new coding only where its squared error
(of the values the decoder will really produce) went down. Nothing in the stream changes: the decoder
reads endpoints as always, so `fit` streams decode everywhere.

Only mode-A blocks of methods with an explicit scale are refined: mode B's zero point and the implicit
method's parity-signalled scale (`preset: paper`) tie the endpoints to more than the error. Runs on the
torch path (any device); the native kernel codes `range` only.
"""
from __future__ import annotations

import torch

from . import dtypes
from .coder import MODE_A, Coded
from .points import table

ENDPOINTS = ("range", "fit")
ITERATIONS = 2   # the second pass still lowers the error on ESPCN's maps; a third changes almost nothing


def fit_endpoints(v: torch.Tensor, coded: Coded, k: int, scale_ids: tuple[int, ...], storage: torch.dtype,
                  iterations: int = ITERATIONS) -> Coded:
    """`coded` with least-squares endpoints (and new indices) on the mode-A blocks where they lower the error."""
    rows = (coded.mode == MODE_A).nonzero().view(-1)
    if rows.numel() == 0:
        return coded
    work = v.dtype
    vs = v.index_select(0, rows).double()
    e0, e1 = coded.e0.index_select(0, rows), coded.e1.index_select(0, rows)
    idx = coded.idx.index_select(0, rows).long()
    fr = table(scale_ids, k, work, v.device)[:len(scale_ids)].index_select(0, coded.scale.index_select(0, rows).long())

    def decoded_points(a, b):   # the decoder's arithmetic (`coder.reconstruct`), then the stored dtype
        return dtypes.to_storage(a[:, None] + (b - a)[:, None] * fr, storage).double()

    err = (decoded_points(e0, e1).gather(1, idx) - vs).pow_(2).sum(1)
    for _ in range(iterations):
        f = fr.gather(1, idx).double()
        u = 1 - f
        suu, suw, sww = (u * u).sum(1), (u * f).sum(1), (f * f).sum(1)
        suv, swv = (u * vs).sum(1), (f * vs).sum(1)
        det = suu * sww - suw * suw
        ok = det > 1e-12 * (suu * sww).clamp_min(1e-300)   # every value on one point: no fit
        det = torch.where(ok, det, torch.ones_like(det))
        a = dtypes.to_storage(((sww * suv - suw * swv) / det).to(work), storage).to(work)
        b = dtypes.to_storage(((suu * swv - suw * suv) / det).to(work), storage).to(work)
        ok &= torch.isfinite(a) & torch.isfinite(b) & (a < b)
        a, b = torch.where(ok, a, e0), torch.where(ok, b, e1)
        pts = decoded_points(a, b)
        mids = ((pts[:, :-1] + pts[:, 1:]) / 2).contiguous()   # exact in float64; a tie takes the lower point
        new_idx = torch.searchsorted(mids, vs.contiguous())
        new_err = (pts.gather(1, new_idx) - vs).pow_(2).sum(1)
        better = ok & (new_err < err)
        if not bool(better.any()):
            break
        e0, e1 = torch.where(better, a, e0), torch.where(better, b, e1)
        idx = torch.where(better[:, None], new_idx, idx)
        err = torch.where(better, new_err, err)
    out_e0, out_e1, out_idx = coded.e0.clone(), coded.e1.clone(), coded.idx.clone()
    out_e0[rows], out_e1[rows], out_idx[rows] = e0, e1, idx.to(torch.uint8)
    return Coded(out_e0, out_e1, coded.scale, out_idx, coded.mode)
