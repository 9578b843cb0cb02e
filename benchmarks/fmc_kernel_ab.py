"""A/B of native fmc kernel builds in one process: each build encodes the same maps in turn (ROUNDS rounds of
40 encodes per map and mode), the streams asserted byte-identical across builds, best / median wall time.

    gcc <flags printed by chaincomp.fmc.native._flags()> -o /tmp/a.so src/chaincomp/fmc/native.c -lm
    ROUNDS=8 TH=2 python benchmarks/fmc_kernel_ab.py /tmp/a.so /tmp/b.so
    COLD=1 ...: a decode after each encode, as in fmc_throughput.py's tables (the input leaves the cache)

Alternating builds within one process is how this project compares speed on noisy shared machines.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch

from chaincomp.fmc import decode, encode_with_stats, native

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fmc_throughput import pink_field


def main() -> None:
    torch.set_num_threads(int(os.environ.get("TH", "2")))
    maps = {"relu64": torch.relu(pink_field((1, 64, 64, 64)) - 0.25), "gauss64": pink_field((1, 64, 64, 64), seed=1)}
    libs = []
    for path in sys.argv[1:]:
        native._STATE.clear()
        native._build = lambda cc, path=path: Path(path)
        libs.append((path, native.library()))
    ref, res, cold = {}, {}, os.environ.get("COLD") == "1"
    for _ in range(int(os.environ.get("ROUNDS", "5"))):
        for path, lib in libs:
            native._STATE["lib"] = lib
            for name, x in maps.items():
                for mode in ("cbr", "vbr"):
                    data = encode_with_stats(x, mode=mode)[0]
                    assert ref.setdefault((name, mode), data) == data, f"{path}: other bytes on {name} {mode}"
                    for _ in range(40):
                        t = time.perf_counter()
                        data = encode_with_stats(x, mode=mode)[0]
                        res.setdefault((path, name, mode), []).append(time.perf_counter() - t)
                        if cold:  # as the throughput table: a decode between encodes evicts the input
                            decode(data)
    for (path, name, mode), t in res.items():
        print(f"{path} {name} {mode} best {min(t) * 1e6:.0f} us median {statistics.median(t) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
