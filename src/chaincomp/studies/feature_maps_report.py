"""fmc.md and fmc_modes.png of `chaincomp fmc` (a module of its own: the study's measuring stays short)."""
from __future__ import annotations

from pathlib import Path

GOAL = 0.1  # the near-lossless bound: points of top-1 / mIoU, or dB of PSNR


def _fmt(x, spec: str = ".2f") -> str:
    return "exact" if x is None else format(x, spec)


def write_report(out: Path, res: dict) -> None:
    """fmc.md: quality and ratio per task and method, the histogram of chosen modes, throughput."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_text
    from ..report import save_figure

    details = res["details"]
    fig, axes = plt.subplots(1, len(details), figsize=(5 * len(details), 3.4), squeeze=False)
    for ax, d in zip(axes[0], details):
        h = d["mode_histogram"]
        labels = [f"mode {k}" for k in h["mode"]] + [f"scale {k}" for k in h["scale"]] + [f"tag {k}" for k in h["tag"]]
        values = list(h["mode"].values()) + list(h["scale"].values()) + list(h["tag"].values())
        ax.bar(range(len(values)), values,
               color=["C0"] * len(h["mode"]) + ["C1"] * len(h["scale"]) + ["C2"] * len(h["tag"]))
        ax.set_xticks(range(len(values)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("blocks")
        ax.set_title(f"{d['model']} on {d['dataset']} (ASC, VBR, {h['bits_in']}-bit)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "fmc_modes.png")

    m = res["machine"]
    lines = ["# Feature-map compression (ASC) on real tasks", "",
             f"{res['date']}, {m['processor']} ({m['cpus']} CPUs, {m['threads']} torch threads), torch {m['torch']}; "
             f"{res['seconds']} s in all. Ratio = raw bytes (numel x bits_in / 8) / stream bytes, counted over "
             "the test split, headers included. `raw`: maps at bits_in precision, uncoded. "
             "Definitions: docs/fmc.md.", "",
             "`agree`: top-1 (or pixel) agreement with the uncoded-map answers in %, or for super-resolution the "
             "PSNR of the output against the uncoded-map output in dB: the codec's effect free of label noise.", "",
             "`codec`: block and index bits (`alloc`: per-map index bits from `allocate`) or the preset; "
             "`ft`: epochs of codec-aware fine-tuning (0: none).", "",
             "| dataset | model | codec | ft | bits_in | method | metric | fp32 | raw | CBR | CBR x | VBR | VBR x "
             "| SNR dB (CBR) | agree CBR | agree VBR |", "|" + "---|" * 16]
    for r in sorted(res["tasks"] + res["baselines"], key=lambda r: (r["dataset"], -r["bits_in"])):
        lines.append(f"| {r['dataset']} | {r['model']} | {r.get('codec', '')} | {r.get('finetune_epochs', 0)} "
                     f"| {r['bits_in']} | {r['method']} | {r['metric_name']} "
                     f"| {r['metric_fp32']:.3f} | {r['metric_raw']:.3f} | {r['metric_cbr']:.3f} | {r['ratio_cbr']:.2f} "
                     f"| {r['metric_vbr']:.3f} | {r['ratio_vbr']:.2f} | {_fmt(r['snr_db_cbr'])} "
                     f"| {_fmt(r['agree_cbr'])} | {_fmt(r['agree_vbr'])} |")
    lines += ["", "Against the near-lossless goal (ASC, CBR, 16-bit: at most 0.1 point / dB lost at >= 4x, the "
              "payload ratio: the 54-byte container header per coded map is software, as in the paper's 4x). "
              "`control`: the same fine-tuning with uncoded maps; the loss against it is the codec's alone, "
              "free of what the extra training buys:", "",
              "| dataset | codec | ft | raw | CBR (delta) | CBR x | payload x | control | delta vs control | met |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["tasks"]:
        if r["bits_in"] != 16:
            continue
        ctl = r.get("metric_raw_control")
        worst = min(r["delta_cbr"], r.get("delta_cbr_control", r["delta_cbr"]))
        met = "yes" if worst >= -GOAL and r.get("payload_ratio_cbr", r["ratio_cbr"]) >= 4 else "no"
        lines.append(f"| {r['dataset']} | {r.get('codec', '')} | {r.get('finetune_epochs', 0)} | {r['metric_raw']:.3f} "
                     f"| {r['metric_cbr']:.3f} ({r['delta_cbr']:+.3f}) | {r['ratio_cbr']:.2f} "
                     f"| {r.get('payload_ratio_cbr', float('nan')):.2f} "
                     f"| {'-' if ctl is None else f'{ctl:.3f}'} "
                     f"| {'-' if ctl is None else format(r['delta_cbr_control'], '+.3f')} | {met} |")
    lines += ["", "Modelled DRAM traffic per inference (weights once + activations in/out, coded maps at their "
              "counted size), ASC:", "", "| dataset | codec | ft | bits_in | fp32 | CBR | VBR |", "|---|---|---|---|---|---|---|"]
    for r in res["tasks"]:
        lines.append(f"| {r['dataset']} | {r.get('codec', '')} | {r.get('finetune_epochs', 0)} | {r['bits_in']} | {r['dram_bytes_fp32']:.0f} B | {r['dram_bytes_cbr']:.0f} B "
                     f"| {r['dram_bytes_vbr']:.0f} B |")
    lines += ["", "Throughput of ASC on each task's float16 maps (one process, median of repeats):", "",
              "| dataset | codec | maps MB | codec path | encode CBR MB/s | decode CBR MB/s | encode VBR MB/s "
              "| decode VBR MB/s |", "|---|---|---|---|---|---|---|---|"]
    for d in details:
        for label, t in d.get("throughput_by_codec", {"": d["throughput"]}).items():
            lines.append(f"| {d['dataset']} | {label} | {t['raw_mb']:.3f} | {t.get('path', 'torch')} | {t['encode_mbps_cbr']} "
                         f"| {t['decode_mbps_cbr']} | {t['encode_mbps_vbr']} | {t['decode_mbps_vbr']} |")
    lines += ["", "Coded maps and blocks (a 4th number: that map's index bits): " + "; ".join(
        f"{d['dataset']} [{label}]: " + ", ".join(f"{p} {tuple(b)}" for p, b in pts.items())
        for d in details for label, pts in d.get("points_by_codec", {"": d["points"]}).items()),
        "", "![modes](fmc_modes.png)", ""]
    atomic_write_text(out / "fmc.md", "\n".join(lines))


