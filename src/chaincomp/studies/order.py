"""`chaincomp order`: the paper's method for the order of compression, measured rather than assumed.

For every pair of the recipe's techniques both orders run as 2-stage chains from one shared
baseline, with the same seeds and the same fine-tuning budget (each stage keeps its recipe
settings, so A->B and B->A spend the same epochs). A rule (RULE below, also written into
order.json) picks a winner per pair; winners become edges of a precedence graph, which is sorted
topologically. Cycles are reported with the pairs that form them; ties add no edge and the
canonical D, P, Q, E order breaks them, said so in the output. `--insertion` checks that a third
technique between a pair keeps the pair's order; `--permutations` runs every full order to check
the topological answer against brute force.
"""
from __future__ import annotations

import math
import statistics
import time
from graphlib import TopologicalSorter
from itertools import combinations, permutations
from pathlib import Path

from .. import faults
from .common import (CANONICAL, study_device, LETTER, Executor, check_techniques, derived, ensure_baseline, open_study,
                          run_recipe_task, stage_dicts)
from ..errors import UserError
from ..io import RunLock, write_json
from ..progress import log
from ..recipe import Recipe, load_recipe

SAME_BITOPS = 0.05      # two orders within 5% BitOps are compared on the metric alone
MIN_TOL = 0.3           # points: the smallest difference that counts (one seed has no spread)
POINTS_PER_DECADE = 1.0  # trade-off exchange rate: metric points one decade of BitOps is worth

# The default study (no recipe): the default recipe's techniques and settings, with per-stage
# epochs scaled down so that 12 two-stage chains fit in 10 minutes on 2 cores.
STUDY_EPOCHS = {"baseline": 30, "distill": 15, "prune": 6, "quantize": 8, "early_exit": 8}

RULE = ("Per order: metric = mean over seeds of the final metric, spread = range (max - min) over seeds, "
        "BitOps = mean final BitOps. tol = max({min_tol} points, spread of either order). "
        "(1) BitOps within {same:.0%} of each other: the higher metric wins; |difference| <= tol is a tie. "
        "(2) Otherwise, if the cheaper order's metric is not worse than the dearer one's by more than tol, "
        "the cheaper order wins (dominance). "
        "(3) Otherwise (a trade-off) each order scores metric + {rate} x log10(max BitOps / its BitOps), "
        "i.e. {rate} point(s) per decade of BitOps saved; the higher score wins, |difference| <= tol is a tie. "
        "The winner of a pair is the technique that goes first in the winning order.")


def rule_text(min_tol: float = MIN_TOL, rate: float = POINTS_PER_DECADE) -> str:
    return RULE.format(min_tol=min_tol, same=SAME_BITOPS, rate=rate)


def letters(order: list[str]) -> str:
    return "".join(LETTER[t] for t in order)


def summarize(order: list[str], runs: list[dict]) -> dict:
    """One order over its seeds."""
    m = [r["metric"] for r in runs]
    return {"order": list(order), "metric": round(statistics.fmean(m), 4), "spread": round(max(m) - min(m), 4),
            "bitops": statistics.fmean(r["bitops"] for r in runs), "seeds": [{"metric": r["metric"],
            "bitops": r["bitops"], "run": r["name"]} for r in runs]}


def decide(a: dict, b: dict, min_tol: float = MIN_TOL, rate: float = POINTS_PER_DECADE) -> tuple[str, str]:
    """'a', 'b' or 'tie', and the rule that decided, for two summarized orders (see RULE)."""
    tol = max(min_tol, a["spread"], b["spread"])
    dm = a["metric"] - b["metric"]
    hi = max(a["bitops"], b["bitops"])
    if abs(a["bitops"] - b["bitops"]) <= SAME_BITOPS * hi:
        rule = f"equal-bitops: metric {a['metric']:.2f} vs {b['metric']:.2f}, tol {tol:.2f}"
        return ("tie" if abs(dm) <= tol else "a" if dm > 0 else "b"), rule
    cheap, dear, sign = (a, b, "a") if a["bitops"] < b["bitops"] else (b, a, "b")
    ratio = dear["bitops"] / max(cheap["bitops"], 1e-30)
    if cheap["metric"] >= dear["metric"] - tol:
        return sign, (f"dominance: {ratio:.2f}x fewer BitOps, metric {cheap['metric']:.2f} vs {dear['metric']:.2f} "
                      f"(tol {tol:.2f})")
    ds = (cheap["metric"] + rate * math.log10(ratio)) - dear["metric"]
    rule = (f"trade-off: {ratio:.2f}x fewer BitOps for {dear['metric'] - cheap['metric']:.2f} points, "
            f"score difference {ds:+.2f} at {rate} pt/decade (tol {tol:.2f})")
    if abs(ds) <= tol:
        return "tie", rule
    return (sign if ds > 0 else ("b" if sign == "a" else "a")), rule


def pair_record(x: str, y: str, xy: dict, yx: dict, min_tol: float, rate: float) -> dict:
    w, rule = decide(xy, yx, min_tol, rate)
    return {"first": x, "second": y, "winner": {"a": x, "b": y, "tie": "tie"}[w], "rule": rule,
            "orders": [xy, yx]}


def edges_of(pairs: list[dict]) -> list[tuple[str, str]]:
    """Precedence edges winner -> other technique of the pair; ties give none."""
    return [(p["winner"], p["second"] if p["winner"] == p["first"] else p["first"])
            for p in pairs if p["winner"] != "tie"]


def find_cycles(nodes: list[str], edges: list[tuple[str, str]]) -> list[dict]:
    """Every simple cycle (the graphs have at most a handful of nodes), with the pairs forming it."""
    e = set(edges)
    found = []
    for k in range(2, len(nodes) + 1):
        for group in combinations(nodes, k):
            start, rest = group[0], group[1:]
            for perm in permutations(rest):
                cyc = [start, *perm, start]
                if all((cyc[i], cyc[i + 1]) in e for i in range(k)):
                    found.append({"cycle": cyc, "pairs": [[cyc[i], cyc[i + 1]] for i in range(k)]})
    return found


def _reach(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, set[str]]:
    succ = {n: {v for u, v in edges if u == n} for n in nodes}
    reach = {}
    for n in nodes:
        seen, stack = set(), [n]
        while stack:
            for v in succ[stack.pop()]:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        reach[n] = seen
    return reach


def topo_order(nodes: list[str], edges: list[tuple[str, str]], canonical=CANONICAL) -> tuple[list[str], list[str]]:
    """Topological order of the precedence graph; returns (order, notes on how freedom was resolved).

    Techniques in a cycle are condensed into one group (placed as a block, inside it by canonical
    order); where several techniques are ready at once the canonical D, P, Q, E order picks."""
    rank = {t: (canonical.index(t) if t in canonical else len(canonical)) for t in nodes}
    reach = _reach(nodes, edges)
    comp = {n: tuple(sorted({n} | {m for m in reach[n] if n in reach[m]}, key=rank.get)) for n in nodes}
    groups = sorted(set(comp.values()), key=lambda g: rank[g[0]])
    preds = {g: {comp[u] for u, v in edges if comp[v] == g and comp[u] != g} for g in groups}
    ts = TopologicalSorter(preds)
    ts.prepare()
    order, ready, notes = [], [], []
    while ts.is_active():
        ready += ts.get_ready()
        ready.sort(key=lambda g: rank[g[0]])
        if len(ready) > 1:
            notes.append(f"{' and '.join(letters(list(g)) for g in ready)} unordered by the graph; "
                         f"placed by the canonical D,P,Q,E order")
        g = ready.pop(0)
        if len(g) > 1:
            notes.append(f"{'/'.join(g)} form a cycle; placed together in canonical order")
        order.extend(g)
        ts.done(g)
    return order, notes


def respects(order: list[str], edges: list[tuple[str, str]]) -> bool:
    pos = {t: i for i, t in enumerate(order)}
    return all(pos[u] < pos[v] for u, v in edges)


def analyse(techs: list[str], summaries: dict[str, dict], min_tol: float, rate: float) -> dict:
    """Pairs, graph, order and cycles from the summarized 2-stage orders (keyed by letters)."""
    canon = sorted(techs, key=lambda t: CANONICAL.index(t))
    pairs = [pair_record(x, y, summaries[letters([x, y])], summaries[letters([y, x])], min_tol, rate)
             for x, y in combinations(canon, 2)]
    edges = edges_of(pairs)
    order, notes = topo_order(canon, edges)
    ties = [f"{p['first']}/{p['second']}" for p in pairs if p["winner"] == "tie"]
    if ties:
        notes.insert(0, f"ties (no edge): {', '.join(ties)}; ties are broken by the canonical D,P,Q,E order")
    cycles = find_cycles(canon, edges)
    return {"pairs": pairs, "edges": [list(e) for e in edges], "order": order, "order_letters": letters(order),
            "cycles": cycles, "valid_topological_order": respects(order, edges), "notes": notes}


def _plan(techs: list[str], insertion: bool, perms: bool) -> list[list[str]]:
    orders = [list(o) for x, y in combinations(techs, 2) for o in ((x, y), (y, x))]
    if insertion:
        orders += [[x, z, y] for x, y in permutations(techs, 2) for z in techs if z not in (x, y)]
    if perms:
        orders += [list(p) for p in permutations(techs)]
    seen, out = set(), []
    for o in orders:
        if letters(o) not in seen:
            seen.add(letters(o))
            out.append(o)
    return out


def run_order_study(recipe: Recipe, out: Path, *, seeds: int = 1, workers: int | None = None,
                    address: str | None = None, insertion: bool = False, perms: bool = False,
                    min_tol: float = MIN_TOL, rate: float = POINTS_PER_DECADE, source: str = "recipe") -> dict:
    """Run (or reuse) every chain the study needs, then decide, sort and write order.json/order.md."""
    if seeds <= 0:
        raise UserError(f"--seeds: must be 1 or more, not {seeds}")
    if min_tol < 0 or rate < 0:
        raise UserError("--tolerance and --points-per-decade must not be negative")
    techs = sorted(check_techniques(recipe, source), key=CANONICAL.index)
    out = Path(out)
    t0 = time.perf_counter()
    with Executor(workers, address) as ex, RunLock(out):
        open_study(out, "order", recipe)
        stages = stage_dicts(recipe)
        weights = ensure_baseline(recipe, out)
        blob = ex.put(weights.read_bytes())
        seed_list = [recipe.seed + k for k in range(seeds)]
        plan = _plan(techs, insertion, perms)
        for order in plan:
            for s in seed_list:
                name = f"{letters(order)}-s{s}"
                r = derived(recipe, [stages[t] for t in order], seed=s, weights=weights,
                            name=f"{recipe.name}-{name}")
                ex.submit(name, run_recipe_task, r.model_dump(mode="json", by_alias=True),
                          str(out / "runs" / name), recipe.seed, ex.threads, blob)
        runs, errors, total = {}, [], len(ex)
        for name, res, err in ex.drain():
            if err is not None:
                errors.append((name, err))
                log(f"{name}: failed ({type(err).__name__}: {err})")
                continue
            runs[name] = res
            took = "reused" if res["reused"] else f"{res['seconds']:.0f} s"
            log(f"[{len(runs)}/{total}] {name}: metric {res['metric']:.2f}  BitOps {res['bitops']:.3g}  ({took})")
            faults.point("chain_done")
        if errors:
            raise errors[0][1]
        summaries = {letters(o): summarize(o, [runs[f"{letters(o)}-s{s}"] for s in seed_list]) for o in plan}
        result = {"recipe": recipe.name, "techniques": techs, "seeds": seed_list,
                  "rule": rule_text(min_tol, rate), "budget_epochs": {t: stages[t].get("epochs") for t in techs},
                  "baseline": next(iter(runs.values()))["baseline"],
                  **analyse(techs, summaries, min_tol, rate)}
        if insertion:
            result["insertion"] = insertion_check(techs, result["pairs"], summaries, min_tol, rate)
        if perms:
            result["permutations"] = permutation_check(techs, result["order"], summaries, min_tol, rate)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        result["device"] = study_device(recipe)
        write_order_report(out, result)
        write_json(out / "order.json", result)      # last: order.json means the report beside it is complete
        return result


def insertion_check(techs: list[str], pairs: list[dict], summaries: dict, min_tol: float, rate: float) -> list[dict]:
    """Does x..z..y vs y..z..x give the same winner as x,y vs y,x? One record per pair and third."""
    rows = []
    for p in pairs:
        x, y = p["first"], p["second"]
        for z in techs:
            if z in (x, y):
                continue
            rec = pair_record(x, y, summaries[letters([x, z, y])], summaries[letters([y, z, x])], min_tol, rate)
            rows.append({"first": x, "second": y, "third": z, "winner": rec["winner"], "pair_winner": p["winner"],
                         "kept": rec["winner"] == p["winner"], "rule": rec["rule"], "orders": rec["orders"]})
    return rows


def permutation_check(techs: list[str], order: list[str], summaries: dict, min_tol: float, rate: float) -> dict:
    """Brute force: which full orders beat the topological one under the same pairwise rule."""
    alls = [summaries[letters(list(p))] for p in permutations(techs)]
    topo = summaries[letters(order)]
    wins = {letters(a["order"]): sum(decide(a, b, min_tol, rate)[0] == "a" for b in alls if b is not a) for a in alls}
    top = max(wins.values())
    beaten = [letters(a["order"]) for a in alls if a is not topo and decide(a, topo, min_tol, rate)[0] == "a"]
    return {"orders": alls, "wins": wins, "best": [k for k, v in wins.items() if v == top],
            "topological": letters(order), "topological_wins": wins[letters(order)], "beaten_by": beaten,
            "agrees": not beaten}


def study_recipe(name: str | None) -> tuple[Recipe, str]:
    """The recipe of the study; with no recipe, the default one at the study's scaled-down budget."""
    recipe, _ = load_recipe(name)
    if name is not None:
        return recipe, name
    obj = recipe.model_dump(mode="json", by_alias=True)
    obj["name"] = "default-order"
    obj["baseline"]["epochs"] = STUDY_EPOCHS["baseline"]
    for s in obj["chain"]:
        s["epochs"] = STUDY_EPOCHS[s["technique"]]
    from ..recipe import parse_recipe
    return parse_recipe(obj, "<built-in order study>"), "<built-in order study>"


# ---- report: order.md with the precedence graph and metric against BitOps per order ----

def plot_graph(res: dict, path: Path) -> None:
    """Nodes on a circle, an arrow winner -> other per decided pair, ties dashed, cycle edges red."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import save_figure

    nodes = res["techniques"]
    pos = {t: (math.cos(math.pi / 2 - 2 * math.pi * i / len(nodes)), math.sin(math.pi / 2 - 2 * math.pi * i / len(nodes)))
           for i, t in enumerate(nodes)}
    in_cycle = {tuple(p) for c in res["cycles"] for p in c["pairs"]}
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for p in res["pairs"]:
        a, b = pos[p["first"]], pos[p["second"]]
        if p["winner"] == "tie":
            ax.plot([a[0], b[0]], [a[1], b[1]], "--", color="grey", lw=1)
            continue
        u, v = (p["first"], p["second"]) if p["winner"] == p["first"] else (p["second"], p["first"])
        ax.annotate("", xy=pos[v], xytext=pos[u], arrowprops=dict(
            arrowstyle="-|>", lw=1.5, shrinkA=18, shrinkB=18, color="red" if (u, v) in in_cycle else "black"))
    for t, (x, y) in pos.items():
        ax.scatter([x], [y], s=900, color="#dde8f5", edgecolor="black", zorder=3)
        ax.text(x, y, LETTER[t], ha="center", va="center", fontsize=13, zorder=4)
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.5, 1.5)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"precedence (arrow: goes first); order {res['order_letters']}", fontsize=9)
    save_figure(fig, path)


def plot_orders(res: dict, path: Path) -> None:
    """Metric against BitOps (log x) of both orders of each pair, with the spread over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..report import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, p in enumerate(res["pairs"]):
        xs = [o["bitops"] for o in p["orders"]]
        ys = [o["metric"] for o in p["orders"]]
        line, = ax.plot(xs, ys, "-", lw=0.8, alpha=0.6)
        for o in p["orders"]:
            ax.errorbar([o["bitops"]], [o["metric"]], yerr=[[o["spread"] / 2], [o["spread"] / 2]], fmt="o",
                        color=line.get_color(), capsize=3)
            ax.annotate(letters(o["order"]), (o["bitops"], o["metric"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=8)
    base = res["baseline"]
    ax.scatter([base["bitops"]], [base["metric"]], marker="*", s=120, color="black", label="baseline")
    ax.set_xscale("log")
    ax.set_xlabel("BitOps per input (log)")
    ax.set_ylabel("metric (mean over seeds; bar = range)")
    ax.set_title("both orders of every pair")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _row(o: dict) -> str:
    return f"{letters(o['order'])} {o['metric']:.2f} ±{o['spread'] / 2:.2f}, {o['bitops']:.3g}"


def write_order_report(out: Path, res: dict) -> None:
    from ..io import atomic_write_text
    from ..report import markdown_table

    plot_graph(res, out / "precedence.png")
    plot_orders(res, out / "orders.png")
    rows = [[f"{LETTER[p['first']]}/{LETTER[p['second']]}", _row(p["orders"][0]), _row(p["orders"][1]),
             p["winner"], p["rule"]] for p in res["pairs"]]
    cycles = "\n".join(f"- {' -> '.join(c['cycle'])} (pairs: {', '.join('>'.join(x) for x in c['pairs'])})"
                       for c in res["cycles"]) or "none"
    notes = "\n".join(f"- {n}" for n in res["notes"]) or "- the graph fixes the whole order"
    text = [f"# Order of compression: {res['recipe']}\n",
            f"Techniques {', '.join(res['techniques'])}; seeds {res['seeds']}; stage epochs {res['budget_epochs']} "
            f"(the same in both orders of every pair); baseline metric {res['baseline']['metric']:.2f}, "
            f"BitOps {res['baseline']['bitops']:.3g}; {res['seconds']:.0f} s.\n",
            f"**Order: {' -> '.join(res['order'])} ({res['order_letters']})**; a valid topological order of the "
            f"pairwise results: {res['valid_topological_order']}.\n",
            f"Rule: {res['rule']}\n",
            markdown_table(["pair", "order 1 (metric ±half-range, BitOps)", "order 2", "goes first", "rule"], rows),
            f"\nCycles:\n{cycles}\n", f"How the order was completed:\n{notes}\n",
            "![precedence graph](precedence.png) ![metric against BitOps](orders.png)\n"]
    if "insertion" in res:
        kept = sum(r["kept"] for r in res["insertion"])
        text.append(f"## Insertion\n\n{kept} of {len(res['insertion'])} (pair, third) cases keep the pair's order.\n")
        text.append(markdown_table(["pair", "third", "pair alone", "with third", "kept", "rule"], [
            [f"{LETTER[r['first']]}/{LETTER[r['second']]}", LETTER[r["third"]], r["pair_winner"], r["winner"],
             str(r["kept"]), r["rule"]] for r in res["insertion"]]) + "\n")
    if "permutations" in res:
        pm = res["permutations"]
        text.append(f"## All orders (brute force)\n\nTopological order {pm['topological']} wins "
                    f"{pm['topological_wins']} of {len(pm['orders']) - 1} comparisons; most wins: "
                    f"{', '.join(pm['best'])}; beaten by: {', '.join(pm['beaten_by']) or 'none'}; agrees: {pm['agrees']}.\n")
        text.append(markdown_table(["order", "metric", "spread", "BitOps", "wins"], [
            [letters(o["order"]), f"{o['metric']:.2f}", f"{o['spread']:.2f}", f"{o['bitops']:.3g}",
             str(pm["wins"][letters(o["order"])])] for o in pm["orders"]]) + "\n")
    atomic_write_text(out / "order.md", "\n".join(text))
