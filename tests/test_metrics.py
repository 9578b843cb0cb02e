"""Task metrics against values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from chaincomp.metrics import MeanIoU, psnr_y, rgb_to_y, top1


def test_top1_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0], [1.0, 0.0]])
    assert top1(logits, torch.tensor([0, 1, 1, 1])) == pytest.approx(50.0)
    assert top1(logits, torch.tensor([0, 1, 0, 0])) == pytest.approx(100.0)


def test_miou_by_hand():
    # after ignoring the last pixel: truth [0 0 1 1 2], prediction [0 1 1 1 0]
    # IoU0 = 1/(1+1+1) = 1/3, IoU1 = 2/(2+1) = 2/3, IoU2 = 0/1 = 0  -> mean 1/3
    y = torch.tensor([[0, 0, 1, 1, 2, 3]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 2]])
    m = MeanIoU(3, ignore_index=3)
    m.update(pred, y)
    assert m.compute() == pytest.approx(100 / 3)
    assert m.per_class().tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    # the same from logits, split over two updates: accumulation is over pixels, not batches
    logits = torch.nn.functional.one_hot(pred, 3).permute(0, 2, 1).float().unsqueeze(-1)  # (1, 3, 6, 1)
    m2 = MeanIoU(3, ignore_index=3)
    m2.update(logits[..., :2, :], y[:, :2, None])
    m2.update(logits[..., 2:, :], y[:, 2:, None])
    assert torch.equal(m2.confusion, m.confusion)


def test_miou_skips_absent_classes_and_rejects_bad_labels():
    m = MeanIoU(4, ignore_index=11)
    m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 11]))
    assert m.compute() == pytest.approx(100.0)  # classes 2 and 3 appear nowhere: skipped
    assert math.isnan(m.per_class()[3])
    with pytest.raises(ValueError, match="label 7"):
        m.update(torch.tensor([0]), torch.tensor([7]))


def test_psnr_y_by_hand():
    hr = torch.full((1, 3, 6, 6), 0.5)
    sr = hr + 0.1  # Y moves by 0.1 * (65.481 + 128.553 + 24.966) / 255 = 0.1 * 219 / 255
    assert psnr_y(sr, hr) == pytest.approx(-20 * math.log10(0.1 * 219 / 255))
    red = hr.clone()
    red[:, 0] += 0.2  # only R: Y moves by 0.2 * 65.481 / 255
    assert psnr_y(red, hr) == pytest.approx(-20 * math.log10(0.2 * 65.481 / 255))
    assert rgb_to_y(torch.ones(3, 1, 1)).item() == pytest.approx(235 / 255)
    assert rgb_to_y(torch.zeros(3, 1, 1)).item() == pytest.approx(16 / 255)


def test_psnr_shave_clamp_and_luma_input():
    hr = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    sr = hr.clone()
    sr[..., 0, :] = 0.0  # damage only the top border row
    assert math.isfinite(psnr_y(sr, hr)) and psnr_y(sr, hr, shave=1) == math.inf
    assert psnr_y(torch.full((3, 4, 4), 1.5), torch.ones(3, 4, 4)) == math.inf  # sr is clamped to [0, 1]
    y_hr, y_sr = torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 0.1)  # 1 channel is Y already
    assert psnr_y(y_sr, y_hr) == pytest.approx(20.0)
    # mean over images: one image with error 0.1 (20 dB), one with 0.01 (40 dB)
    two_sr = torch.cat([torch.full((1, 1, 4, 4), 0.1), torch.full((1, 1, 4, 4), 0.01)])
    assert psnr_y(two_sr, torch.zeros(2, 1, 4, 4)) == pytest.approx(30.0)
    with pytest.raises(ValueError):
        psnr_y(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))
