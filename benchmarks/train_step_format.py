"""Training-step time of a zoo network in the two memory formats, on the CPU, alternating in one process
(a ratio in the same run, as this project measures speed on noisy machines).

    python benchmarks/train_step_format.py [--model resnet20] [--batch 128] [--threads 2] [--steps 6]

Prints best and median seconds per step for contiguous (NCHW) and channels_last (NHWC) weights and inputs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from chaincomp.models import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    model = build_model(a.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(a.batch, 3, 32, 32), torch.randint(0, 10, (a.batch,))

    def step(last: bool) -> float:
        fmt = torch.channels_last if last else torch.contiguous_format
        model.to(memory_format=fmt)
        xx = x.contiguous(memory_format=fmt)
        t = time.perf_counter()
        out = model(xx)
        out = out[-1] if isinstance(out, (list, tuple)) else out
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    for last in (False, True):      # warm-up: oneDNN picks its kernels per format
        step(last), step(last)
    times = {False: [], True: []}
    for _ in range(a.steps):
        for last in (False, True):
            times[last].append(step(last))
    for last, name in ((False, "contiguous"), (True, "channels_last")):
        print(f"{name:14s} best {min(times[last]):.3f} s  median {statistics.median(times[last]):.3f} s per step")
    print(f"channels_last speed-up: best {min(times[False]) / min(times[True]):.2f}x, "
          f"median {statistics.median(times[False]) / statistics.median(times[True]):.2f}x")


if __name__ == "__main__":
    main()
