"""Results for people: a table in the terminal, report.md with plots beside results.json."""
from __future__ import annotations

from pathlib import Path

from rich.table import Table

from .io import atomic_write_bytes, atomic_write_text
from .progress import console


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1000 or (x and abs(x) < 0.01) else f"{x:.2f}"


def _dram_kib(entry: dict) -> str:
    """Modelled DRAM traffic per inference (ledger.py); '-' for runs measured before it existed."""
    return _fmt(entry["dram_bytes"] / 1024) if "dram_bytes" in entry else "-"


def run_rows(results: dict) -> list[list[str]]:
    base = results["baseline"]
    rows = [["baseline", "-", _fmt(base["metric"]), _fmt(base["bitops"]), "1.0x", _fmt(base["macs"]),
             str(base["params"]), _fmt(base["size_bytes"] / 1024), _dram_kib(base)]]
    for s in results["stages"]:
        rows.append([s["name"], s["technique"], _fmt(s["metric"]), _fmt(s["bitops"]),
                     f"{base['bitops'] / max(s['bitops'], 1e-9):.1f}x", _fmt(s["macs"]), str(s["params"]),
                     _fmt(s["size_bytes"] / 1024), _dram_kib(s)])
    return rows


HEADERS = ["stage", "technique", "metric", "BitOps", "BitOps reduction", "MACs", "params", "size KiB",
           "DRAM KiB"]


def print_run_table(results: dict) -> None:
    t = Table(title=f"{results['recipe']}: {results['model']} on {results['dataset']} ({results['metric_name']})")
    for h in HEADERS:
        t.add_column(h, justify="right" if h not in ("stage", "technique") else "left")
    for r in run_rows(results):
        t.add_row(*r)
    console.print(t)
    f = results["final"]
    console.print(f"final: {results['metric_name']} {f['metric']:.2f} ({f['metric_delta']:+.2f}), "
                  f"BitOps reduction {f['bitops_reduction']:.1f}x"
                  + (f", DRAM traffic reduction {f['dram_reduction']:.1f}x (modelled)" if "dram_reduction" in f else ""))


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def save_figure(fig, path: Path) -> None:
    """PNG written atomically; the figure is closed (matplotlib keeps open figures alive)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def machine_info() -> dict:
    """Where a result was measured, for the record beside it."""
    import os
    import platform

    import torch

    return {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


def plot_metric_vs_bitops(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [("baseline", results["baseline"])] + [(s["name"], s) for s in results["stages"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    xs, ys = [p["bitops"] for _, p in pts], [p["metric"] for _, p in pts]
    ax.plot(xs, ys, "-o")
    for (name, p) in pts:
        ax.annotate(name, (p["bitops"], p["metric"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("BitOps per input (log)")
    ax.set_ylabel(results["metric_name"])
    ax.set_title("metric against BitOps after each stage")
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, path)


def write_run_report(out: Path, results: dict) -> None:
    plot_metric_vs_bitops(results, out / "metric_vs_bitops.png")
    f = results["final"]
    text = f"""# chaincomp run: {results['recipe']}

{results['model']} on {results['dataset']} ({results['task']}); chain: {' -> '.join(results['chain']) or '(none)'}; seed {results['seed']}.

{markdown_table(HEADERS, run_rows(results))}

Final: {results['metric_name']} {f['metric']:.2f} ({f['metric_delta']:+.2f} points against the baseline),
{f['bitops_reduction']:.1f}x fewer BitOps. BitOps = MACs x weight bits x activation bits, counted on the
model after each stage (for exits: the mean over the test set of what ran, exit heads included).
DRAM KiB is the modelled traffic of one inference: weights, and every conv/linear layer's input and
output at their stored bits; maps coded by an fmc stage at the length of their real streams.

![metric against BitOps](metric_vs_bitops.png)
"""
    atomic_write_text(out / "report.md", text)
