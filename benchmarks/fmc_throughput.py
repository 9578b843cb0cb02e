"""Throughput, counted ratio and error of the fmc codec on synthetic feature maps; default sweep.

Usage:
    python benchmarks/fmc_throughput.py            # throughput table (ASC and the baselines), defaults
    python benchmarks/fmc_throughput.py --paper    # the paper's operating point (preset "paper") against
                                                   # the same tables with a scale flag, and without log
    python benchmarks/fmc_throughput.py --speed    # codec speed on a typical map, threads 1 and 2,
                                                   # and where the encoder's time goes
    python benchmarks/fmc_throughput.py --sweep    # block shape x index bits x scales sweep
    python benchmarks/fmc_throughput.py --native-speed --repeats 15   # torch path vs native kernel
    python benchmarks/fmc_throughput.py --native-speed --native-only --repeats 15   # native columns only

Maps (float16, the 16-bit maps of the paper's headline):
- "gauss": pre-activation-like: a Gaussian field with a 1/f^2 power spectrum (the spectrum of
  natural images, neighbour correlation ~0.7) times a per-channel scale plus a per-channel offset.
- "relu": ReLU of that field with a per-channel threshold: ~60% zeros in spatial clusters.
- "sparse": the same with a higher threshold, ~88% zeros (a deep-layer ReLU map).
- "cnn": outputs of a random conv-BN-ReLU-conv-BN-ReLU net applied to 1/f^2 images.
Ratio = raw bytes (numel * 2) / len(stream), header included. SNR = 10 log10(sum x^2 / sum e^2).
MB/s = raw MB per second of wall time, one process, median of `repeats` runs (`--speed` also gives
the best run and process CPU time, which a machine shared with other jobs distorts less).
"""
from __future__ import annotations

import argparse
import collections
import math
import statistics
import time

import torch
from torch import nn

from chaincomp.fmc import decode, encode_with_stats


def pink_field(shape, beta: float = 2.0, seed: int = 0) -> torch.Tensor:
    """Gaussian field with power spectrum ~ 1/f^beta, unit variance per channel."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    fy = torch.fft.fftfreq(h).view(-1, 1)
    fx = torch.fft.rfftfreq(w).view(1, -1)
    f = torch.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    amp = f ** (-beta / 2)
    amp[0, 0] = 0.0
    noise = torch.randn(n, c, h, w // 2 + 1, 2, generator=g)
    x = torch.fft.irfft2(torch.complex(noise[..., 0], noise[..., 1]) * amp, s=(h, w))
    return x / x.std(dim=(0, 2, 3), keepdim=True)


def gauss_map(shape, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    c = shape[1]
    scale = torch.exp(0.5 * torch.randn(1, c, 1, 1, generator=g))
    offset = 0.5 * torch.randn(1, c, 1, 1, generator=g)
    return ((pink_field(shape, seed=seed) + offset) * scale).half()


def relu_map(shape, seed: int = 0, threshold: float = 0.25) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 2)
    c = shape[1]
    scale = torch.exp(0.5 * torch.randn(1, c, 1, 1, generator=g))
    thresh = threshold + 0.3 * torch.randn(1, c, 1, 1, generator=g)
    return (torch.relu(pink_field(shape, seed=seed) - thresh) * scale).half()


def sparse_map(shape, seed: int = 0) -> torch.Tensor:
    return relu_map(shape, seed, threshold=1.2)


def cnn_map(shape, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    n, c, h, w = shape
    net = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                        nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
    with torch.no_grad():
        return net(pink_field((n, 3, h, w), seed=seed)).half()


MAPS = {"relu": relu_map, "sparse": sparse_map, "gauss": gauss_map, "cnn": cnn_map}


def snr_db(x: torch.Tensor, y: torch.Tensor) -> float:
    x, y = x.double(), y.double()
    err = (x - y).square().sum()
    return float("inf") if err == 0 else float(10 * torch.log10(x.square().sum() / err))


def measure(x: torch.Tensor, repeats: int = 1, **cfg) -> dict:
    """Encode/decode `x` `repeats` times; counted ratio, SNR, max error / max |x|, MB/s."""
    enc_t, dec_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data, stats = encode_with_stats(x, **cfg)
        t1 = time.perf_counter()
        y = decode(data)
        dec_t.append(time.perf_counter() - t1)
        enc_t.append(t1 - t0)
    mb = stats["raw_bytes"] / 1e6
    return {"ratio": stats["ratio"], "payload": stats["payload_ratio"], "snr": snr_db(x, y),
            "max_err": float((x.double() - y.double()).abs().max() / x.double().abs().max()),
            "enc": mb / statistics.median(enc_t), "dec": mb / statistics.median(dec_t),
            "bpv": stats["bits_per_value"], "hist": stats["mode_histogram"]}


SWEEP_BLOCKS = [(1, 4, 4), (2, 4, 4), (1, 4, 8), (2, 4, 8), (4, 4, 4), (1, 8, 8), (2, 8, 8)]
SWEEP_SCALES = [("linear",), ("linear", "log"), ("linear", "hlog"), ("linear", "log", "rlog"),
                ("linear", "hlog", "rhlog"), ("linear", "log", "hlog", "rhlog")]


def sweep(shape=(4, 32, 32, 32), seeds=(0, 1)) -> list[dict]:
    """ASC over block shape x index bits x scale sets; mean over maps and seeds.

    Rule for the default: the highest mean CBR SNR over the map kinds among configs whose
    counted CBR ratio is >= 4; ties within 0.1 dB go to the higher mean VBR ratio.
    """
    maps = {(name, s): fn(shape, seed=s) for name, fn in MAPS.items() for s in seeds}
    rows = []
    for block in SWEEP_BLOCKS:
        for k in (2, 3):
            for scales in SWEEP_SCALES:
                row = {"block": block, "k": k, "scales": scales}
                for name in MAPS:
                    for mode in ("cbr", "vbr"):
                        r = [measure(maps[(name, s)], block=block, index_bits=k, mode=mode, scales=scales)
                             for s in seeds]
                        row[f"{name}_{mode}_ratio"] = statistics.mean(m["ratio"] for m in r)
                        row[f"{name}_{mode}_snr"] = statistics.mean(m["snr"] for m in r)
                row["cbr_ratio"] = statistics.mean(row[f"{n}_cbr_ratio"] for n in MAPS)
                row["cbr_snr"] = statistics.mean(row[f"{n}_cbr_snr"] for n in MAPS)
                row["vbr_ratio"] = statistics.mean(row[f"{n}_vbr_ratio"] for n in MAPS)
                rows.append(row)
    return rows


def print_sweep(rows: list[dict]) -> None:
    head = ("block", "k", "scales", "CBR x") + tuple(f"{n} dB" for n in MAPS) + ("mean dB",) + tuple(
        f"VBR x {n}" for n in MAPS)
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        snrs = " | ".join(f"{r[f'{n}_cbr_snr']:.2f}" for n in MAPS)
        vbrs = " | ".join(f"{r[f'{n}_vbr_ratio']:.2f}" for n in MAPS)
        print(f"| {r['block']} | {r['k']} | {'+'.join(r['scales'])} | {r['cbr_ratio']:.3f} | {snrs} | "
              f"{r['cbr_snr']:.2f} | {vbrs} |")
    ok = [r for r in rows if r["cbr_ratio"] >= 4.0]
    top = max(r["cbr_snr"] for r in ok)
    best = max((r for r in ok if r["cbr_snr"] >= top - 0.1), key=lambda r: r["vbr_ratio"])
    print(f"\nchosen (max mean CBR SNR with CBR ratio >= 4, ties by VBR ratio): block {best['block']}, "
          f"index_bits {best['k']}, scales {best['scales']}: CBR {best['cbr_ratio']:.3f}x at "
          f"{best['cbr_snr']:.2f} dB, VBR {best['vbr_ratio']:.2f}x")


def throughput(shape=(8, 64, 56, 56), repeats: int = 3, **cfg) -> None:
    """Table of ratio / SNR / MB/s for ASC (given or default config) and the baselines."""
    print(f"map shape {shape} float16 ({math.prod(shape) * 2 / 1e6:.1f} MB raw), codec config "
          f"{cfg or 'defaults'}, median of {repeats}")
    head = ("map", "method", "rate", "ratio", "bits/value", "SNR dB", "max err / peak", "encode MB/s", "decode MB/s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in ("relu", "sparse", "gauss"):
        x = MAPS[name](shape, seed=0)
        for method in ("asc", "single_mode", "minmax"):
            for mode in ("cbr", "vbr"):
                kw = dict(cfg, method=method, mode=mode)
                if method != "asc":
                    kw.pop("scales", None)
                m = measure(x, repeats=repeats, **kw)
                print(f"| {name} | {method} | {mode} | {m['ratio']:.3f} | {m['bpv']:.3f} | {m['snr']:.2f} | "
                      f"{m['max_err']:.4f} | {m['enc']:.1f} | {m['dec']:.1f} |")


def paper_table(shape=(8, 64, 56, 56), repeats: int = 3) -> None:
    """The paper's operating point against its neighbours at 16-value blocks and 2-bit indices."""
    print(f"map shape {shape} float16 ({math.prod(shape) * 2 / 1e6:.1f} MB raw), median of {repeats}")
    head = ("map", "config", "payload x", "ratio", "bits/value", "SNR dB", "max err / peak", "encode MB/s",
            "decode MB/s")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    configs = [("preset paper (parity-signalled scale)", dict(preset="paper")),
               ("asc linear+log, 1-bit flag", dict(block=(1, 4, 4), index_bits=2, scales=("linear", "log"))),
               ("asc linear+log+rlog, 2-bit flag", dict(block=(1, 4, 4), index_bits=2,
                                                       scales=("linear", "log", "rlog"))),
               ("asc linear only", dict(block=(1, 4, 4), index_bits=2, scales=("linear",))),
               ("single_mode", dict(block=(1, 4, 4), index_bits=2, method="single_mode")),
               ("minmax", dict(block=(1, 4, 4), index_bits=2, method="minmax"))]
    for name in MAPS:
        x = MAPS[name](shape, seed=0)
        for label, cfg in configs:
            m = measure(x, repeats=repeats, mode="cbr", **cfg)
            print(f"| {name} | {label} | {m['payload']:.3f} | {m['ratio']:.4f} | {m['bpv']:.4f} | {m['snr']:.2f} | "
                  f"{m['max_err']:.4f} | {m['enc']:.1f} | {m['dec']:.1f} |")


def speed(repeats: int = 15) -> None:
    """Encode/decode MB/s on a typical map, 1 and 2 threads: best and median wall, best CPU time.

    The same command with PYTHONPATH at an older checkout's src measures that codec (before/after)."""
    cases = [("64x64x64 float32 (relu)", torch.relu(pink_field((1, 64, 64, 64)) - 0.25)),
             ("64x64x64 float32 (gauss)", pink_field((1, 64, 64, 64), seed=1)),
             ("8x64x56x56 float16 (relu)", relu_map((8, 64, 56, 56)))]
    configs = [("default cbr", dict(mode="cbr")), ("default vbr", {}), ("preset paper", dict(preset="paper"))]
    threads = torch.get_num_threads()
    print("| map | config | threads | encode MB/s best / median (CPU) | decode MB/s best / median (CPU) |")
    print("|---|---|---|---|---|")
    for n_threads in (1, 2):
        torch.set_num_threads(n_threads)
        for label, x in cases:
            raw = x.numel() * 2 / 1e6  # the map at 16 bits, as the codec counts it
            for name, cfg in configs:
                try:
                    encode_with_stats(x, **cfg)
                except TypeError:  # an older codec without presets (for before/after runs)
                    print(f"| {label} | {name} | {n_threads} | n/a | n/a |")
                    continue
                ew, ec, dw, dc = _times(x, cfg, repeats)
                print(f"| {label} | {name} | {n_threads} | {raw / min(ew):.0f} / {raw / statistics.median(ew):.0f} "
                      f"({raw / min(ec):.0f}) | {raw / min(dw):.0f} / {raw / statistics.median(dw):.0f} "
                      f"({raw / min(dc):.0f}) |")
    torch.set_num_threads(threads)
    print()
    profile_encoder(cases[0][1])


def _times(x, cfg, repeats: int) -> tuple[list, list, list, list]:
    data = encode_with_stats(x, **cfg)[0]
    decode(data)
    ew, ec, dw, dc = [], [], [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        data = encode_with_stats(x, **cfg)[0]
        c1, w1 = time.process_time(), time.perf_counter()
        decode(data)
        c2, w2 = time.process_time(), time.perf_counter()
        ew.append(w1 - w0), ec.append(c1 - c0), dw.append(w2 - w1), dc.append(c2 - c1)
    return ew, ec, dw, dc


def native_speed(repeats: int = 15, native_only: bool = False) -> None:
    """The torch path (CHAINCOMP_FMC_NATIVE=0) against the native kernel, same maps as `speed`:
    MB/s best / median of `repeats` wall times (best CPU time in brackets), 1 and 2 threads.
    native_only: the native columns alone (quicker; the torch path's do not change with kernel work)."""
    import os

    from chaincomp.fmc import native

    cases = [("64x64x64 float32 (relu)", torch.relu(pink_field((1, 64, 64, 64)) - 0.25)),
             ("64x64x64 float32 (gauss)", pink_field((1, 64, 64, 64), seed=1)),
             ("8x64x56x56 float16 (relu)", relu_map((8, 64, 56, 56)))]
    configs = [("preset paper", dict(preset="paper")), ("default cbr", dict(mode="cbr")), ("default vbr", {}),
               ("fit cbr", dict(mode="cbr", endpoints="fit"))]
    print(f"native kernel: {native.library() is not None} {native.reason}")
    threads, env = torch.get_num_threads(), os.environ.get("CHAINCOMP_FMC_NATIVE")
    if native_only:
        print("| map | config | threads | encode MB/s native | decode MB/s native |")
        print("|---|---|---|---|---|")
    else:
        print("| map | config | threads | encode MB/s torch path | encode MB/s native | decode MB/s torch path | "
              "decode MB/s native |")
        print("|---|---|---|---|---|---|---|")

    def cell(raw, wall, cpu):
        return f"{raw / min(wall):.0f} / {raw / statistics.median(wall):.0f} ({raw / min(cpu):.0f})"

    for n_threads in (1, 2):
        torch.set_num_threads(n_threads)
        for label, x in cases:
            raw = x.numel() * 2 / 1e6
            for name, cfg in configs:
                got = {}
                for flag in ("1",) if native_only else ("0", "1"):
                    os.environ["CHAINCOMP_FMC_NATIVE"] = flag
                    got[flag] = _times(x, cfg, repeats)
                ew1, ec1, dw1, dc1 = got["1"]
                if native_only:
                    print(f"| {label} | {name} | {n_threads} | {cell(raw, ew1, ec1)} | {cell(raw, dw1, dc1)} |",
                          flush=True)
                    continue
                ew0, ec0, dw0, dc0 = got["0"]
                print(f"| {label} | {name} | {n_threads} | {cell(raw, ew0, ec0)} | {cell(raw, ew1, ec1)} | "
                      f"{cell(raw, dw0, dc0)} | {cell(raw, dw1, dc1)} |", flush=True)
    torch.set_num_threads(threads)
    if env is None:
        os.environ.pop("CHAINCOMP_FMC_NATIVE", None)
    else:
        os.environ["CHAINCOMP_FMC_NATIVE"] = env


def profile_encoder(x: torch.Tensor, repeats: int = 10) -> None:
    """Where the encoder's time goes: torch op self CPU time, one thread, default CBR and paper."""
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    for name, cfg in (("default cbr", dict(mode="cbr")), ("preset paper", dict(preset="paper"))):
        try:
            encode_with_stats(x, **cfg)
        except TypeError:
            continue
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                encode_with_stats(x, **cfg)
        ops = collections.Counter()
        calls = collections.Counter()
        for ev in prof.key_averages():
            ops[ev.key] += ev.self_cpu_time_total
            calls[ev.key] += ev.count
        total = sum(ops.values())
        print(f"{name}: {total / repeats / 1e3:.2f} ms of torch ops per encode (profiler, wall clock); top ops:")
        for key, t in ops.most_common(8):
            print(f"  {key}: {100 * t / total:.0f}% ({calls[key] // repeats} calls per encode)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", action="store_true", help="run the default-selection sweep instead")
    ap.add_argument("--paper", action="store_true", help="preset paper against flagged / linear-only neighbours")
    ap.add_argument("--speed", action="store_true", help="MB/s on a typical map, 1 and 2 threads, and a profile")
    ap.add_argument("--native-speed", action="store_true",
                    help="torch path against the native kernel, 1 and 2 threads (use --repeats 15)")
    ap.add_argument("--native-only", action="store_true", help="with --native-speed: the native columns alone")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep:
        print_sweep(sweep())
    elif args.paper:
        paper_table(repeats=args.repeats)
    elif args.speed:
        speed()
    elif args.native_speed:
        native_speed(repeats=args.repeats, native_only=args.native_only)
    else:
        throughput(repeats=args.repeats)


if __name__ == "__main__":
    main()
