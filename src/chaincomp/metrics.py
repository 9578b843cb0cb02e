"""The three task metrics, as the literature computes them, so ledgers compare with published numbers.

- classification: top-1 accuracy in percent;
- segmentation: mean intersection-over-union in percent from a confusion matrix accumulated over the
  whole split (not a mean of per-batch IoUs), ignoring one label (CamVid: 11 = void);
- super-resolution: PSNR in dB on the Y channel of YCbCr (ITU-R BT.601) with `shave` border pixels
  removed, averaged over images.
"""
from __future__ import annotations

import math

import torch


def top1(logits: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of rows whose arg-max logit is the label. logits (N, C), y (N,)."""
    if logits.shape[0] != y.shape[0] or logits.shape[0] == 0:
        raise ValueError(f"top1: {logits.shape[0]} predictions for {y.shape[0]} labels")
    return 100.0 * (logits.argmax(1) == y).float().mean().item()


class MeanIoU:
    """Confusion-matrix accumulator for mIoU.

    `update` takes logits (N, C, H, W) or predicted ids (N, H, W) and labels (N, H, W); pixels labelled
    `ignore_index` are left out. `compute` averages the IoU over the classes that occur in the labels
    or the predictions (a class absent from both has no defined IoU and is skipped).
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # rows: truth, cols: prediction

    def reset(self) -> None:
        self.confusion.zero_()

    def update(self, pred: torch.Tensor, y: torch.Tensor) -> None:
        if pred.dim() == y.dim() + 1:
            if pred.shape[1] != self.num_classes:
                raise ValueError(f"MeanIoU: logits have {pred.shape[1]} classes, expected {self.num_classes}")
            pred = pred.argmax(1)
        if pred.shape != y.shape:
            raise ValueError(f"MeanIoU: prediction shape {tuple(pred.shape)} != label shape {tuple(y.shape)}")
        pred, y = pred.reshape(-1).long().cpu(), y.reshape(-1).long().cpu()
        keep = y != self.ignore_index if self.ignore_index is not None else torch.ones_like(y, dtype=torch.bool)
        pred, y = pred[keep], y[keep]
        if y.numel() and (y.min() < 0 or y.max() >= self.num_classes):
            raise ValueError(f"MeanIoU: label {int(y.max() if y.max() >= self.num_classes else y.min())} "
                             f"outside 0..{self.num_classes - 1} and not the ignore index {self.ignore_index}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"MeanIoU: predicted class outside 0..{self.num_classes - 1}")
        k = self.num_classes
        self.confusion += torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)

    def per_class(self) -> torch.Tensor:
        """IoU of each class in [0, 1]; NaN where the class is in neither labels nor predictions."""
        c = self.confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def compute(self) -> float:
        iou = self.per_class()
        valid = ~torch.isnan(iou)
        if not valid.any():
            raise ValueError("MeanIoU: no pixels were counted")
        return 100.0 * iou[valid].mean().item()


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """Luma of [0, 1] RGB (..., 3, H, W) per ITU-R BT.601 as MATLAB's rgb2ycbcr: range 16/255..235/255."""
    r, g, b = x.unbind(-3)
    return (16.0 + 65.481 * r + 128.553 * g + 24.966 * b).div(255.0).unsqueeze(-3)


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, shave: int = 0) -> float:
    """PSNR (dB) on the Y channel, peak 1, mean over the images of a batch.

    Inputs are [0, 1] RGB (N, 3, H, W) or (3, H, W); `sr` is clamped to [0, 1] first. A 1-channel input
    is taken to be the Y channel already (a model trained on luma). `shave` pixels are cut from every
    border (the usual protocol: shave = scale). Identical images give +inf.
    """
    if sr.shape != hr.shape:
        raise ValueError(f"psnr_y: shapes differ: {tuple(sr.shape)} vs {tuple(hr.shape)}")
    if sr.dim() == 3:
        sr, hr = sr.unsqueeze(0), hr.unsqueeze(0)
    if sr.dim() != 4 or sr.shape[1] not in (1, 3):
        raise ValueError(f"psnr_y: expected (N, 3 or 1, H, W), got {tuple(sr.shape)}")
    sr, hr = sr.detach().double().clamp(0, 1), hr.detach().double()
    if sr.shape[1] == 3:
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
    if shave:
        if 2 * shave >= min(sr.shape[-2:]):
            raise ValueError(f"psnr_y: shave={shave} leaves nothing of a {tuple(sr.shape[-2:])} image")
        sr, hr = sr[..., shave:-shave, shave:-shave], hr[..., shave:-shave, shave:-shave]
    mse = (sr - hr).pow(2).mean(dim=(1, 2, 3))
    vals = [math.inf if m == 0 else -10.0 * math.log10(m) for m in mse.tolist()]
    return sum(vals) / len(vals)
