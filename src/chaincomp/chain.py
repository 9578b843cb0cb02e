"""The chain runner: baseline, then each stage in order, a checkpoint after each, and the ledger.

Resume semantics: a stage is done when its checkpoint JSON exists (written after its weights,
both atomically), carries the digest of the recipe up to that stage (`Recipe.stage_digest`) and
its weights load. `--resume` rebuilds the model from the last done stage and runs the rest; every
stage seeds itself from (recipe seed, stage index), so a resumed run ends with the same ledger as an
uninterrupted one. A recipe whose later stages were edited resumes from the last unchanged stage
(the usual loop: keep a slow baseline and distillation, retune pruning and quantization); one with
another baseline, data, model or seed is refused.
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from pydantic import BaseModel, ConfigDict
from torch import nn

from . import __version__, baselines, faults, progress
from . import device as devices
from .arch import initial_model
from .data import load_data, model_kwargs
from .data.base import TaskData
from .errors import UserError
from .exits.model import ExitNetwork
from .io import RunLock, atomic_write_text, load_weights, read_model_json, save_weights, write_json
from .ledger import measure
from .recipe import Recipe
from .stages import Context, make_stage, rebuild, settle
from .train import fit

FORMAT = 1


class _Lenient(BaseModel):
    """Files a run folder holds, read back: the keys the tool needs are checked, others kept as they are."""
    model_config = ConfigDict(extra="allow")


class RunFile(_Lenient):
    """DIR/run.json: which recipe the folder belongs to."""
    format: int
    recipe_digest: str


class Entry(_Lenient):
    """One stage's measured figures (the ledger entry a checkpoint carries)."""
    name: str
    technique: str
    metric: float
    bitops: float
    macs: float
    params: int
    size_bytes: float
    seconds: float


class Arch(_Lenient):
    """How to rebuild the model: the model spec and the structural transforms, in order."""
    model: dict
    transforms: list[dict]


class CheckpointFile(_Lenient):
    """DIR/checkpoints/NN-name.json, written after its weights."""
    format: int
    recipe_digest: str
    arch: Arch
    exit_rule: dict | None = None
    entry: Entry


class Figures(_Lenient):
    metric: float
    bitops: float


class StageFigures(Figures):
    name: str


class ResultsFile(_Lenient):
    """DIR/results.json, as the studies and bench read it back."""
    chain: list[str]
    baseline: Figures
    final: Figures
    stages: list[StageFigures]


def read_results(path: Path) -> dict:
    return read_model_json(path, ResultsFile, allow_nan=True).model_dump()


def read_run_file(path: Path) -> dict:
    return read_model_json(path, RunFile, allow_nan=True).model_dump()


@dataclass
class Checkpoints:
    """Files of one run folder: checkpoints/NN-name.{safetensors,json}."""

    out: Path

    def paths(self, index: int, name: str) -> tuple[Path, Path]:
        base = self.out / "checkpoints" / f"{index:02d}-{name}"
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    def save(self, index: int, name: str, model: nn.Module, entry: dict, digest: str) -> None:
        wpath, jpath = self.paths(index, name)
        save_weights(wpath, model.state_dict(), metadata={"chaincomp": __version__})
        faults.point("between_weights_and_json")
        write_json(jpath, {"format": FORMAT, "version": __version__, "recipe_digest": digest, "index": index,
                           "name": name, "arch": model.chaincomp_arch,
                           "exit_rule": getattr(model, "exit_rule", None), "entry": entry})

    def _meta(self, index: int, name: str, recipe: Recipe) -> dict | None:
        """The checkpoint JSON of stage `index` if it belongs to this recipe's prefix, else None. The
        whole-recipe digest is accepted too: checkpoints written before stage digests carry it."""
        wpath, jpath = self.paths(index, name)
        if not jpath.exists() or not wpath.exists():
            return None
        meta = read_model_json(jpath, CheckpointFile, allow_nan=True).model_dump()
        if meta.get("format") != FORMAT:
            raise UserError(f"{jpath}: written by another chaincomp format ({meta.get('format')}); use a new --out")
        return meta if meta.get("recipe_digest") in (recipe.stage_digest(index), recipe.digest()) else None

    def matches(self, index: int, name: str, recipe: Recipe) -> bool:
        """Whether stage `index` has a checkpoint of this recipe's prefix (the JSON only, no weights read)."""
        return self._meta(index, name, recipe) is not None

    def load(self, index: int, name: str, recipe: Recipe, sample: torch.Tensor) -> tuple[nn.Module, dict] | None:
        meta = self._meta(index, name, recipe)
        if meta is None:
            return None
        wpath, jpath = self.paths(index, name)
        if meta["recipe_digest"] != recipe.stage_digest(index):    # written before stage digests: restamp it
            meta["recipe_digest"] = recipe.stage_digest(index)
            write_json(jpath, meta)
        model = rebuild(meta["arch"], load_weights(wpath), sample, where=str(wpath))
        if meta.get("exit_rule") and isinstance(model, ExitNetwork):
            model.exit_rule = meta["exit_rule"]
        return model, meta["entry"]


def stage_names(recipe: Recipe) -> list[str]:
    names, seen = [], {}
    for s in recipe.chain:
        seen[s.technique] = seen.get(s.technique, 0) + 1
        names.append(s.technique if seen[s.technique] == 1 else f"{s.technique}{seen[s.technique]}")
    return names


def train_baseline(recipe: Recipe, data: TaskData, *, reuse: bool = True) -> nn.Module:
    """The recipe's baseline: its `model.weights`, else the cached one of the same digest (`chaincomp
    train`, see baselines.py), else trained here."""
    torch.manual_seed(recipe.seed)
    model, given = initial_model(recipe.model, data.sample_input(2), model_kwargs(data))
    if given:
        return model
    if reuse and baselines.load_cached(model, baselines.of_recipe(recipe), progress.log):
        return model
    fit(model, data, recipe.baseline.fit_config(), stage="baseline", seed=recipe.seed)
    return model


def refuse_mixed_runs(out: Path, recipe: Recipe, resume: bool) -> None:
    """Refuse to mix two runs in one folder; never overwrite an earlier run without --resume."""
    run_file = out / "run.json"
    if run_file.exists():
        meta = read_run_file(run_file)
        if not resume:
            raise UserError(f"{out}: holds an earlier run; pass --resume to continue it, or choose another --out")
        if meta.get("recipe_digest") == recipe.digest():
            return
        if not Checkpoints(out).matches(0, "baseline", recipe):
            raise UserError(f"{out}: was started with another recipe (its data, model, baseline or seed differ); "
                            f"--resume keeps earlier stages only when those are the same (or choose another --out)")
        # only later stages changed: the run continues under the new recipe from its last unchanged stage
        (out / "results.json").unlink(missing_ok=True)     # no longer describes this folder
        progress.log(f"{out}: recipe changed after the baseline; unchanged stages are kept, the rest rerun")


def write_run_files(out: Path, recipe: Recipe, recipe_text: str) -> None:
    """run.json and the canonical recipe.yaml: written only once the inputs (data, weights) were read, so
    a refused run leaves nothing that would block its corrected retry."""
    run_file = out / "run.json"
    if run_file.exists() and read_run_file(run_file).get("recipe_digest") == recipe.digest():
        return
    write_json(run_file, {"format": FORMAT, "version": __version__, "recipe_digest": recipe.digest(),
                          "recipe": recipe.name, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                          "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads",
                          "torch": torch.__version__})
    # The canonical form (every default spelled out), so the folder alone rebuilds the run.
    canonical = yaml.safe_dump(recipe.model_dump(mode="json", by_alias=True), sort_keys=False)
    original = "".join(f"# {line}\n" for line in recipe_text.splitlines())
    atomic_write_text(out / "recipe.yaml", canonical + ("\n# as written by the user:\n" + original if original else ""))


def run_chain(recipe: Recipe, out: str | Path, *, resume: bool = False, recipe_text: str = "",
              data: TaskData | None = None, write_report: bool = True) -> dict:
    """Run a recipe into folder `out`; returns the results dictionary (also DIR/results.json)."""
    out = Path(out)
    device_of(recipe)       # CUDA asked for where there is none: refused before the folder is touched
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    with RunLock(out):
        refuse_mixed_runs(out, recipe, resume)
        ckpt = Checkpoints(out)
        data = placed(data or load_data(recipe.data, recipe.seed), recipe)
        sample = data.sample_input()
        # a missing or unfitting weights file fails before run.json is written (no blocked retry)
        given = train_baseline(recipe, data) if recipe.model.weights and not ckpt.matches(0, "baseline", recipe) \
            else None
        write_run_files(out, recipe, recipe_text)
        t0 = time.perf_counter()
        loaded = ckpt.load(0, "baseline", recipe, sample)
        if loaded:
            model, base_entry = loaded
            progress.log("baseline: restored from checkpoint")
        else:
            model = given if given is not None else train_baseline(recipe, data)
            base_entry = {"name": "baseline", "technique": "baseline", **measure(model, data),
                          "seconds": round(time.perf_counter() - t0, 2)}
            ckpt.save(0, "baseline", model, base_entry, recipe.stage_digest(0))
        progress.log(_line(base_entry, data.metric_name))
        entries = []
        for i, (cfg, name) in enumerate(zip(recipe.chain, stage_names(recipe)), start=1):
            loaded = ckpt.load(i, name, recipe, sample)
            if loaded:
                model, entry = loaded
                progress.log(f"{name}: restored from checkpoint")
            else:
                t0 = time.perf_counter()
                ctx = Context(data=data, seed=recipe.seed, stage_index=i, stage_name=name)
                model = make_stage(cfg).apply(model, ctx)
                model = settle(model, data)
                entry = {"name": name, "technique": cfg.technique, **measure(model, data),
                         "seconds": round(time.perf_counter() - t0, 2), **({"notes": ctx.notes} if ctx.notes else {})}
                ckpt.save(i, name, model, entry, recipe.stage_digest(i))
            progress.log(_line(entry, data.metric_name))
            entries.append(entry)
        results = build_results(recipe, data, base_entry, entries)
        if write_report:
            from .report import write_run_report
            write_run_report(out, results)
        write_json(out / "results.json", results)  # last: its presence means the run is complete
        return results


def device_of(recipe) -> torch.device:
    return devices.resolve(getattr(recipe, "device", "auto"), "recipe field device (or --device)")


def placed(data: TaskData, recipe) -> TaskData:
    """The data on the device the recipe names (resolved once, here at the edge of the runner)."""
    dev = device_of(recipe)
    devices.prepare(dev)
    if dev.type != "cpu":
        progress.log(f"device: {devices.describe(dev)}")
    return data.place(dev, amp=getattr(recipe, "amp", False), channels_last=getattr(recipe, "channels_last", None))


def _line(e: dict, metric: str) -> str:
    return (f"{e['name']}: {metric} {e['metric']:.2f}  BitOps {e['bitops']:.3g}  MACs {e['macs']:.3g}  "
            f"params {e['params']}  ({e['seconds']:.1f} s)")


def build_results(recipe: Recipe, data: TaskData, base: dict, stages: list[dict]) -> dict:
    final = stages[-1] if stages else base
    # dram_bytes is optional: checkpoints written before it was measured lack it
    keys = ("metric", "bitops", "macs", "params", "size_bytes")
    opt = ("dram_bytes", "fmc_ratio")
    return {
        "format": FORMAT, "version": __version__, "recipe": recipe.name, "seed": recipe.seed,
        "task": data.task, "dataset": data.name, "model": recipe.model.name, "metric_name": data.metric_name,
        "device": devices.describe(data.device), "amp": data.amp, "chain": recipe.techniques(),
        "baseline": {k: base[k] for k in (*keys, *opt) if k in base},
        "stages": [{k: s[k] for k in ("name", "technique", *keys, "seconds")} |
                   {k: s[k] for k in (*opt, "exit_histogram", "exit_rule", "notes") if k in s} for s in stages],
        "final": {"metric": final["metric"], "bitops": final["bitops"],
                  "metric_delta": round(final["metric"] - base["metric"], 4),
                  "bitops_reduction": round(base["bitops"] / max(final["bitops"], 1e-9), 3),
                  "macs": final["macs"], "params": final["params"], "size_bytes": final["size_bytes"]}
                 | ({"dram_bytes": final["dram_bytes"],
                     "dram_reduction": round(base["dram_bytes"] / max(final["dram_bytes"], 1e-9), 3)}
                    if "dram_bytes" in final and "dram_bytes" in base else {}),
    }


@dataclass
class LoadedRun:
    """A finished (or partly finished) run folder brought back to life, for export, bench, exit, fmc."""

    out: Path
    recipe: Recipe
    data: TaskData
    model: nn.Module          # the model after `stage`
    baseline: nn.Module       # the baseline model of the run
    entry: dict               # the ledger entry of `stage`
    stage: str


def load_run(out: str | Path, stage: str | None = None, data: TaskData | None = None) -> LoadedRun:
    """Rebuild the model of a run folder after `stage` (default: the last finished stage)."""
    from .recipe import load_recipe

    out = Path(out)
    if not (out / "run.json").is_file() or not (out / "recipe.yaml").is_file():
        raise UserError(f"{out}: not a chaincomp run folder (no run.json/recipe.yaml); give the --out of `chaincomp run`")
    meta = read_run_file(out / "run.json")
    if meta.get("format") != FORMAT:
        raise UserError(f"{out}: written by another chaincomp format ({meta.get('format')}); rerun it with this version")
    recipe, _ = load_recipe(str(out / "recipe.yaml"))
    if recipe.digest() != meta.get("recipe_digest"):
        raise UserError(f"{out}/recipe.yaml: does not match run.json (edited after the run?)")
    data = data or load_data(recipe.data, recipe.seed)
    sample = data.sample_input()
    ckpt = Checkpoints(out)
    names = ["baseline"] + stage_names(recipe)
    done = [n for i, n in enumerate(names) if ckpt.matches(i, n, recipe)]
    if not done:
        raise UserError(f"{out}: no finished stage yet; run `chaincomp run --resume --out {out}` first")
    want = stage or done[-1]
    if want not in names:
        raise UserError(f"--stage: '{want}' is not a stage of this run; choose one of {', '.join(names)}")
    if want not in done:
        raise UserError(f"{out}: stage '{want}' has not finished; run `chaincomp run --resume --out {out}` first")
    model, entry = ckpt.load(names.index(want), want, recipe, sample)
    baseline, _ = ckpt.load(0, "baseline", recipe, sample)
    return LoadedRun(out, recipe, data, model, baseline, entry, want)
