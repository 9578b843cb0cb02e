"""`chaincomp search`: multi-objective search over the order AND the degree of compression.

Why: the paper's order is measured at one degree per technique, and the authors' follow-up finds
that the best order can change with the degree (bits, ratios, thresholds). Optuna's multi-objective
sampler proposes (order, degrees); each proposal is one chain from the shared baseline, run as a
Ray task; objectives are maximise the metric and minimise BitOps (told as log10 BitOps, which has
the same Pareto set and keeps the sampler's hypervolume arithmetic well scaled).

Resumable: the Optuna study lives in DIR/optuna.journal (JournalStorage, file backend); each
trial's result is written to DIR/trials/NNNN.json the moment it ends, before it is told to the
study. On restart, finished trials are kept, trials that were running are dispatched again with
the parameters they were asked with (their chain folder resumes from its last checkpoint; one
killed while drawing them gets the rest drawn as they would have been), and new trials are asked
until the study holds --trials of them. The sampler is seeded per trial (see _seeded_per_trial),
so with one trial at a time (--workers 0) a killed and resumed search ends as an uninterrupted one.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from itertools import permutations
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .. import faults
from .common import LETTER, study_device, Executor, check_techniques, derived, ensure_baseline, open_study, run_recipe_task, \
    stage_dicts
from ..errors import UserError
from ..io import RunLock, read_model_json, write_json
from ..progress import log
from ..recipe import Recipe

TECH_OF = {v: k for k, v in LETTER.items()}

# Degrees searched per technique: (low, high, step); ints for bits. The rest of each stage's
# settings (epochs, lr, first/last-layer bits, criterion...) come from the recipe.
SPACE = {
    "distill": {"student.width": (0.25, 1.0, 0.125)},
    "prune": {"ratio": (0.0, 0.8, 0.05)},
    "quantize": {"weight_bits": (2, 8, 1), "act_bits": (2, 8, 1)},
    "early_exit": {"max_drop": (0.0, 3.0, 0.25)},
}
THRESHOLD = {"confidence": (0.5, 0.99, 0.01), "entropy": (0.05, 2.0, 0.05)}


class TrialFile(BaseModel):
    """DIR/trials/NNNN.json: one finished (or failed) trial, written before the study hears of it."""
    model_config = ConfigDict(extra="allow")
    number: int = Field(ge=0)
    order: str
    params: dict
    state: Literal["complete", "fail"]
    metric: float | None = None
    bitops: float | None = None

    @model_validator(mode="after")
    def _complete_has_figures(self) -> "TrialFile":
        if self.state == "complete" and (self.metric is None or self.bitops is None):
            raise ValueError("a complete trial needs metric and bitops")
        return self


def read_trial(path: Path) -> dict:
    return read_model_json(path, TrialFile, allow_nan=True).model_dump()


def space_for(stages: dict[str, dict]) -> dict[str, tuple]:
    """Parameter name -> (low, high, step) for the techniques of the recipe."""
    out = {}
    for tech, st in stages.items():
        knobs = dict(SPACE[tech])
        if tech == "early_exit" and st.get("threshold") is not None:   # a fixed threshold: search it
            knobs = {"threshold": THRESHOLD[st.get("criterion", "confidence")]}
        out |= {f"{tech}.{k}": v for k, v in knobs.items()}
    return out


def suggest(trial, techs: list[str], space: dict[str, tuple]) -> dict:
    """Ask every parameter up front (no conditionals), so a re-dispatched trial has all it needs."""
    trial.suggest_categorical("order", ["".join(LETTER[t] for t in p) for p in permutations(techs)])
    for name, (lo, hi, step) in space.items():
        faults.point("param_drawn")         # each draw is its own journal write: a crash can fall between
        if isinstance(lo, int) and isinstance(step, int):
            trial.suggest_int(name, lo, hi, step=step)
        else:
            trial.suggest_float(name, lo, hi, step=step)
    return dict(trial.params)


def chain_from(params: dict, stages: dict[str, dict]) -> list[dict]:
    """The ordered stage configs of a trial: recipe settings with the trial's degrees."""
    chain = []
    for letter in params["order"]:
        tech = TECH_OF[letter]
        st = copy.deepcopy(stages[tech])
        for name, value in params.items():
            if name.startswith(tech + "."):
                *path, key = name[len(tech) + 1:].split(".")
                node = st
                for p in path:
                    node = node.setdefault(p, {})
                node[key] = round(value, 6) if isinstance(value, float) else value   # 0.7000000000000001
        chain.append(st)
    return chain


def pareto(trials: list[dict], cost: str = "bitops") -> list[dict]:
    """Non-dominated finished trials (metric up, cost down: BitOps or measured latency_ms), cheapest first."""
    done = [t for t in trials if t["state"] == "complete" and t.get(cost) is not None]
    front = [t for t in done if not any(
        o["metric"] >= t["metric"] and o[cost] <= t[cost] and (o["metric"] > t["metric"] or o[cost] < t[cost])
        for o in done)]
    return sorted(front, key=lambda t: t[cost])


def _study(out: Path, seed: int, trials: int, sampler: str):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if sampler == "nsga2":
        def make(s: int):
            return optuna.samplers.NSGAIISampler(seed=s, population_size=max(4, min(50, trials // 4)))
    else:
        def make(s: int):
            return optuna.samplers.TPESampler(seed=s, multivariate=True, constant_liar=True,
                                              n_startup_trials=max(4, min(10, trials // 4)))
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.journal")))
    return optuna.create_study(study_name="chaincomp-search", storage=storage, sampler=_seeded_per_trial(make, seed),
                               load_if_exists=True, directions=["maximize", "minimize"])


def _seeded_per_trial(make, seed: int):
    """A sampler whose every draw comes from a fresh `make(s)` with s from (seed, trial number[, parameter]).

    Why: an Optuna sampler draws from one RNG per process, so a search restarted after a crash would
    draw trial 0's parameters again for its next trial. Here a trial's parameters depend only on the
    seed, its number and the trials already told, so a killed and resumed search (one trial at a time)
    asks what the uninterrupted one asked, even for a trial killed halfway through drawing them."""
    import hashlib

    from optuna.samplers import BaseSampler

    def at(trial, name: str = ""):
        key = hashlib.sha256(f"{seed}/{trial.number}/{name}".encode()).digest()
        return make(int.from_bytes(key[:4], "little"))

    class PerTrial(BaseSampler):
        def infer_relative_search_space(self, study, trial):
            return at(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, space):
            return at(trial).sample_relative(study, trial, space)

        def sample_independent(self, study, trial, name, dist):
            return at(trial, name).sample_independent(study, trial, name, dist)

        def before_trial(self, study, trial):
            at(trial).before_trial(study, trial)

        def after_trial(self, study, trial, state, values):
            at(trial).after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:   # the seeds are fixed by design
            pass

    return PerTrial()


def run_search(recipe: Recipe, out: Path, *, trials: int, workers: int | None = None, address: str | None = None,
               sampler: str = "tpe", source: str = "recipe", objective: str | None = None) -> dict:
    """objective: 'bitops' (default) or 'latency:RUNTIME:bBATCH:tTHREADS': each finished trial's model is
    exported and timed here (deploy.bench.measure_latency), and the study minimises log10 of that median
    beside maximising the metric; BitOps are recorded either way."""
    from ..deploy.bench import measure_latency, parse_objective

    import optuna
    from optuna.trial import TrialState

    if trials <= 0:
        raise UserError(f"--trials: must be 1 or more, not {trials}")
    obj = parse_objective(objective)
    cost = "latency_ms" if obj["kind"] == "latency" else "bitops"
    techs = check_techniques(recipe, source)
    out = Path(out)
    t0 = time.perf_counter()
    with Executor(workers, address) as ex, RunLock(out):
        open_study(out, "search", recipe)
        stages = stage_dicts(recipe)
        space = space_for(stages)
        study = _study(out, recipe.seed, trials, sampler)
        tdir = out / "trials"
        weights = ensure_baseline(recipe, out)
        blob = ex.put(weights.read_bytes())

        def dispatch(number: int, params: dict) -> None:
            name = f"t{number:04d}"
            r = derived(recipe, chain_from(params, stages), seed=recipe.seed, weights=weights,
                        name=f"{recipe.name}-{name}")
            ex.submit((number, params), run_recipe_task, r.model_dump(mode="json", by_alias=True),
                      str(out / "runs" / name), recipe.seed, ex.threads, blob)

        def finish(number: int, params: dict, res: dict | None, err: BaseException | None) -> None:
            rec = {"number": number, "order": params["order"], "params": params,
                   "chain": chain_from(params, stages), "run": str(out / "runs" / f"t{number:04d}")}
            if err is None:
                rec |= {"state": "complete", "metric": res["metric"], "bitops": res["bitops"],
                        "seconds": res["seconds"]}
                if obj["kind"] == "latency":  # measured here, one trial at a time
                    lat = measure_latency(rec["run"], obj)
                    rec |= {"latency_ms": lat["median_ms"], "latency": lat}
            else:
                rec |= {"state": "fail", "error": f"{type(err).__name__}: {err}"[:300]}
            write_json(tdir / f"{number:04d}.json", rec)        # on disk before the study hears of it
            faults.point("trial_recorded")
            tell(rec)

        def tell(rec: dict) -> None:
            if rec["state"] == "complete":
                c = math.log10(max(rec["bitops"], 1.0)) if cost == "bitops" else math.log10(max(rec[cost], 1e-6))
                study.tell(rec["number"], [rec["metric"], c], skip_if_finished=True)
                lat = f" latency {rec['latency_ms']:.3f} ms" if cost != "bitops" else ""
                log(f"trial {rec['number']}: {rec['order']} metric {rec['metric']:.2f} BitOps {rec['bitops']:.3g}"
                    f"{lat} ({rec.get('seconds', 0):.0f} s)")
            else:
                study.tell(rec["number"], state=TrialState.FAIL, skip_if_finished=True)
                log(f"trial {rec['number']}: failed ({rec.get('error')})")

        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):   # a crash left these
            f = tdir / f"{t.number:04d}.json"
            if f.exists():                                  # finished, not told: tell it what the file says
                tell(read_trial(f))
            else:   # parameters missing if it died between ask and suggest: drawn now, as they would have been
                params = t.params if set(t.params) == {"order", *space} else \
                    suggest(optuna.trial.Trial(study, t._trial_id), techs, space)
                dispatch(t.number, params)
        while len(study.trials) < trials or len(ex):
            while len(ex) < ex.slots and len(study.trials) < trials:
                trial = study.ask()
                dispatch(trial.number, suggest(trial, techs, space))
            (number, params), res, err = ex.next_done()
            finish(number, params, res, err)
        records = [read_trial(f) for f in sorted(tdir.glob("*.json"))]
        result = {"recipe": recipe.name, "techniques": techs, "sampler": sampler,
                  "objectives": ["maximize metric", "minimize BitOps (told as log10 BitOps)" if cost == "bitops" else
                                 f"minimize measured latency, {obj['runtime']} batch {obj['batch']} threads "
                                 f"{obj['threads']} (told as log10 ms)"], "objective": obj,
                  "space": {k: list(v) for k, v in space.items()}, "trials_requested": trials,
                  "pareto": [{k: t[k] for k in ("number", "order", "chain", "metric", "bitops", "latency_ms") if k in t}
                             for t in pareto(records, cost)],
                  "trials": records, "seconds": round(time.perf_counter() - t0, 1),
                  "device": study_device(recipe)}
        write_search_report(out, result)
        write_json(out / "search.json", result)     # last: search.json means the report beside it is complete
        return result


def write_search_report(out: Path, res: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_write_text
    from ..report import markdown_table, save_figure

    done = [t for t in res["trials"] if t["state"] == "complete"]
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([t["bitops"] for t in done], [t["metric"] for t in done], s=14, color="grey", label="trials")
    front = res["pareto"]
    ax.step([t["bitops"] for t in front], [t["metric"] for t in front], "-o", where="post", color="red",
            label="Pareto front")
    for t in front:
        ax.annotate(t["order"], (t["bitops"], t["metric"]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("BitOps per input (log)")
    ax.set_ylabel("metric")
    ax.set_title(f"{len(done)} trials, {len(front)} on the front")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, out / "pareto.png")

    def degrees(t: dict) -> str:
        return ", ".join(f"{k}={round(v, 6) if isinstance(v, float) else v}" for k, v in t.get("params", {}).items()
                         if k != "order")

    by_num = {t["number"]: t for t in res["trials"]}
    rows = [[str(t["number"]), t["order"], f"{t['metric']:.2f}", f"{t['bitops']:.3g}", degrees(by_num[t["number"]])]
            for t in front]
    atomic_write_text(out / "search.md", f"# Search over order and degree: {res['recipe']}\n\n"
                      f"{len(res['trials'])} trials ({len(done)} finished), sampler {res['sampler']}, "
                      f"{res['seconds']:.0f} s this session.\n\n"
                      + markdown_table(["trial", "order", "metric", "BitOps", "degrees"], rows)
                      + "\n\n![Pareto front](pareto.png)\n")
