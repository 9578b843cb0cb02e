"""The study's results dictionary (exit.json) and its report (exit.md, plots)."""
from __future__ import annotations

from pathlib import Path

import torch


def criteria_auroc(exit_outs: list[torch.Tensor], y: torch.Tensor, points: list[int]) -> dict:
    """How well each exit criterion tells right answers from wrong ones, exit by exit (test split)."""
    from ...exits.rules import separability

    per_exit = separability(exit_outs, y)
    known = {c: [v for v in row if v is not None] for c, row in per_exit.items()}
    mean = {c: sum(vs) / len(vs) if vs else 0.0 for c, vs in known.items()}
    return {"split": "test", "exit_blocks": list(points), "per_exit": per_exit, "mean": mean,
            "definition": "AUROC of the criterion's score for 'the exit's answer is right' "
                          "(0.5 = chance, 1 = perfect ranking); the ceiling on what a threshold on it can save"}


def auroc_lines(res: dict) -> list[str]:
    """A markdown table of criteria_auroc (exit.md, and the benchmark record)."""
    ca = res.get("criteria_auroc")
    if not ca:
        return []
    names = {w: label.removeprefix("early exit: ").replace("|", "\\|") for w, label in WAYS}
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    lines = ["| criterion | mean AUROC | per exit (block " + ", ".join(map(str, ca["exit_blocks"])) + ") |",
             "|---|---|---|"]
    for c, row in ca["per_exit"].items():
        lines.append(f"| {names.get(c, c)} | {ca['mean'][c]:.3f} | {' '.join(fmt(v) for v in row)} |")
    return lines


WAYS = [("classic", "classic"), ("confidence", "early exit: max softmax"), ("entropy", "early exit: entropy"),
        ("maxlogit", "early exit: max|logit|"), ("predictive", "predictive exit"),
        ("predictive_softmax", "predictive exit: max softmax engine")]


def ways_of(res: dict) -> dict[str, dict]:
    """exit.json's result of each way of running, by the keys of WAYS."""
    return {"classic": res["classic"], **res["early_exit"]["strategies"], "predictive": res["predictive"],
            "predictive_softmax": res["predictive_softmax"]}


def ways_table(res: dict) -> list[str]:
    """The markdown table of the ways of running (exit.md, and the benchmark record)."""
    ways = ways_of(res)
    lines = ["| way | top-1 | MACs | heads/input | energy (DVFS, modelled) | energy (ops, modelled) "
             "| latency (measured) | limit met |", "|---|---|---|---|---|---|---|---|"]
    for w, name in WAYS:
        r = ways[w]
        cell = name.replace("|", "\\|")  # "max|logit|" would split the markdown cell
        lines.append(f"| {cell} | {r['metric']:.2f} | {r['macs_per_sample'] / 1e6:.3f} M | {r['heads_per_sample']:.2f} "
                     f"| {r['energy_j'] * 1e3:.4g} mJ | {r['energy_ops_j'] * 1e6:.4g} uJ | {r['latency_ms']:.3f} ms "
                     f"| {r['deadline_met_pct']:.1f}% |")
    return lines


def write_report(out: Path, res: dict) -> None:
    """exit.md with two plots: where inputs leave, and accuracy against computation over the sweeps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ...io import atomic_write_text
    from ...report import save_figure

    ways = ways_of(res)
    labels = list(res["classic"]["exit_histogram"])
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(WAYS)
    for i, (w, name) in enumerate(WAYS):
        h = ways[w]["exit_histogram"]
        ax.bar([x + i * width for x in range(len(labels))], [h[k] for k in labels], width, label=name)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))], labels, rotation=45, ha="right")
    ax.set_ylabel("test inputs")
    ax.set_title(f"exit layer distribution ({res['model']} on {res['dataset']})")
    ax.legend(fontsize=7)
    save_figure(fig, out / "exit_layers.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for w, name in WAYS[1:]:
        rows = sorted(res["sweep"][w], key=lambda r: r["test_macs"])
        ax.plot([r["test_macs"] / 1e6 for r in rows], [r["test_metric"] for r in rows], ".-", label=name)
        ax.plot([ways[w]["macs_per_sample"] / 1e6], [ways[w]["metric"]], "k*", ms=9)
    ax.plot([res["classic"]["macs_per_sample"] / 1e6], [res["classic"]["metric"]], "rs", label="classic")
    ax.axhline(res["equal_accuracy"]["target_top1"], color="grey", lw=0.8, ls="--", label="equal-accuracy target")
    ax.set_xlabel("MACs per input (M)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs computation (test sweeps; * = chosen on validation)")
    ax.legend(fontsize=7)
    save_figure(fig, out / "tradeoff.png")

    lines = [f"# Predictive Exit: {res['model']} on {res['dataset']}", "",
             f"{res['date']}, {res['machine']['processor']} ({res['machine']['cpus']} CPUs), torch "
             f"{res['machine']['torch']}; {res['n_test']} test inputs. Definitions: docs/predictive_exit.md.", "",
             f"beta = {res['beta']:.4g} ({res['beta_source']}); R = {res['rounds']}, L0 = block "
             f"{res['start_block']}, give-up: {res['give_up']}. Latency limit {res['latency_limit_ms']:.4g} ms "
             f"({res['latency_limit_source']}) on platform `{res['platform']}`.", "", *ways_table(res)]
    op = res["predictive"]["other_policy"]
    lines += ["", f"DVFS policy `{res['predictive']['policy']}`; with `{op['policy']}` instead: predictive energy "
              f"{op['energy_j'] * 1e3:.4g} mJ (modelled), limit met {op['deadline_met_pct']:.1f}%."]
    pa = res["predictive"].get("prediction_accuracy")
    ac = res["at_chosen_points"]
    lines += ["", "The table above: each way at its own setting chosen on validation (least MACs within "
              f"{res['max_drop']} points of classic), so their accuracies differ; predictive exit there saves "
              f"{ac['computation_reduction_vs_classic']:.1f}% MACs against classic and "
              f"{ac['computation_reduction_vs_early_exit']:.1f}% against early exit ({res['early_exit']['strategy']}). "
              "Negative: predictive exit costs more.", "", *equal_accuracy_lines(res), "",
              f"Engine overhead (measured, the runtime's own work per input): "
              f"{res['predictive']['engine_overhead_us_per_input']:.1f} us ({res['predictive']['engine_us_per_decision']:.1f} "
              f"us per decision); softmax engine {res['predictive_softmax']['engine_overhead_us_per_input']:.1f} us.", "",
              f"Network: style `{res['style']}`, training `{res['train']}`, {len(res['exit_points'])} exits; "
              f"T_k: {res['threshold_definition']}.", "",
              f"Prediction accuracy (first prediction of each input): "
              f"{'n/a' if pa is None else f'{pa:.1f}%'} over {res['predictive']['n_first_predictions']} inputs; "
              f"over all predictions: {res['predictive']['prediction_accuracy_all'] or 0:.1f}%.", "",
              "How well each criterion ranks an exit's right answers above its wrong ones (AUROC on the test "
              "set; 0.5 = chance): the ceiling on what a threshold on it can save at equal accuracy.", "",
              *auroc_lines(res), "",
              "![exit layers](exit_layers.png)", "", "![tradeoff](tradeoff.png)", ""]
    if res["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in res["warnings"]] + [""]
    atomic_write_text(out / "exit.md", "\n".join(lines))


def _f(v, unit: str = "%") -> str:
    return "n/a" if v is None else f"{v:.1f}{unit}"


def _less(v) -> str:
    return "n/a" if v is None else f"{v:.1f}% less" if v >= 0 else f"{-v:.1f}% more"


def summary_line(res: dict) -> str:
    """The one line the command prints: each predictive engine against classic and the best early exit,
    all read at the same test top-1 on the sweep curves; the "up to" ceiling apart."""
    eq = res["equal_accuracy"]
    ref = eq.get("early_exit_reference") or "none reaches it"
    parts = [f"At equal top-1 {eq['target_top1']:.2f}% (classic - {eq['drop_below_classic']}):"]
    for p, name in (("predictive", "predictive exit (max|logit|)"), ("predictive_softmax", "predictive exit (max softmax)")):
        vc, ve = eq.get(f"{p}_vs_classic") or {}, eq.get(f"{p}_vs_early_exit") or {}
        parts.append(f"{name} vs classic: MACs {_less(vc.get('computation_reduction'))}, energy "
                     f"{_less(vc.get('energy_saving'))} (modelled), latency {_less(vc.get('latency_reduction'))} "
                     f"(measured); vs early exit ({ref}): MACs {_less(ve.get('computation_reduction'))}, energy "
                     f"{_less(ve.get('energy_saving'))}, latency {_less(ve.get('latency_reduction'))}.")
    first = res["up_to"].get("first_exit") or {}
    parts.append(f"Up to (ceiling: every input leaves at L0, top-1 {_f(first.get('top1'))}): MACs "
                 f"{_less(first.get('computation_reduction_vs_classic'))} than classic.")
    return " ".join(parts)


def equal_accuracy_lines(res: dict) -> list[str]:
    """exit.md's table of every way at the equal-accuracy target, and the reductions."""
    eq = res["equal_accuracy"]
    lines = [f"At equal accuracy: every way read on its test sweep curve at top-1 {eq['target_top1']:.2f}% "
             f"(classic {eq['classic_top1']:.2f}% - {eq['drop_below_classic']}); MACs and ops energy interpolated "
             "between the two settings that bracket it, DVFS energy (modelled, same latency limit) and latency "
             "(measured, trimmed mean) at those two settings, mixed alike.", "",
             "| way | MACs | energy (DVFS, modelled) | energy (ops, modelled) | latency (measured) | settings |",
             "|---|---|---|---|---|---|",
             f"| classic | {res['classic']['macs_per_sample'] / 1e6:.3f} M | {res['classic']['energy_j'] * 1e3:.4g} mJ "
             f"| {res['classic']['energy_ops_j'] * 1e6:.4g} uJ | {eq['classic_latency_ms']:.3f} ms | - |"]
    for w, name in WAYS[1:]:
        r = eq["ways"].get(w)
        cell = name.replace("|", "\\|")
        if r is None:
            lines.append(f"| {cell} | never reaches it | | | | |")
            continue
        lines.append(f"| {cell} | {r['macs'] / 1e6:.3f} M | {r['energy_j'] * 1e3:.4g} mJ | {r['energy_ops_j'] * 1e6:.4g} uJ "
                     f"| {r['latency_ms']:.3f} ms | {r['settings'][0]:.4g} / {r['settings'][1]:.4g} (w {r['weight']:.2f}) |")
    lines += ["", "| comparison | MACs | energy (DVFS) | energy (ops) | latency |", "|---|---|---|---|---|"]
    for key, label in (("predictive_vs_classic", "predictive vs classic"),
                       ("predictive_vs_early_exit", f"predictive vs early exit ({eq.get('early_exit_reference')})"),
                       ("predictive_softmax_vs_classic", "predictive (softmax engine) vs classic"),
                       ("predictive_softmax_vs_early_exit", "predictive (softmax engine) vs early exit"),
                       ("early_exit_vs_classic", "early exit vs classic")):
        v = eq.get(key)
        if v is None:
            lines.append(f"| {label} | n/a | n/a | n/a | n/a |")
        else:
            lines.append(f"| {label} | {_f(v['computation_reduction'])} | {_f(v['energy_saving'])} "
                         f"| {_f(v['ops_energy_saving'])} | {_f(v['latency_reduction'])} |")
    up = res["up_to"]
    first = up.get("first_exit")
    lines += ["", f"Up to ({up['label']}):"]
    if first:
        lines.append(f"every input leaving at the first exit checked (block {first['exit_block']}, top-1 "
                     f"{first['top1']:.2f}%) saves {_f(first['computation_reduction_vs_classic'])} of the MACs and "
                     f"{_f(first['energy_saving_vs_classic'])} of the energy (modelled) against the classic network.")
    best = up.get("predictive_vs_early_exit_best")
    if best:
        lines.append(f"Largest reduction against the best early exit over targets down to classic - 5 points: "
                     f"{_f(best['computation_reduction'])} MACs (at top-1 {best['target_top1']:.2f}%).")
    return lines
