"""Running many independent chains: one shared baseline, one folder per chain; on Ray, in local
worker processes, or in-process.

Why: the order study and the search both run dozens of short chains that differ only in order and
degree. Training the baseline once (DIR/baseline.safetensors, referenced by `model.weights` of every
derived recipe) makes every chain start from the same network, so differences come from the
chain alone. Each chain is a `run_chain` in DIR/runs/<name> with resume=True, so a rerun reuses
whatever finished and a crash loses only the chains that were running.

Ray is an optional extra (`pip install "chaincomp[ray]"`): its wheel is larger than what can be carried
to a GPU machine, so without it (or without `--address`) chains run in spawned local processes.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from pydantic import BaseModel, ConfigDict

from ..errors import UserError
from ..io import checked_name, read_model_json, save_weights, write_json
from ..recipe import Recipe, parse_recipe
from ..stages.registry import canonical_order, letters

LETTER = letters(studied_only=True)   # technique -> letter, for the techniques a study may reorder
CANONICAL = canonical_order()          # the paper's order (D -> P -> Q -> E); breaks ties


# The longest suffix a study appends to its recipe's name (order letters, the largest seed), and the
# length a recipe name may have (`recipe.RecipeName`).
DERIVED_SUFFIX = "-" + "".join(LETTER.values()) + "-s" + str(2**31 - 1)
NAME_LIMIT = 100


class StudyFile(BaseModel):
    """DIR/study.json: which study and recipe the folder belongs to."""
    model_config = ConfigDict(extra="allow")
    kind: str
    recipe_digest: str


def check_techniques(recipe: Recipe, source: str) -> list[str]:
    """The techniques a study compares (at least two, each once, from the four the paper orders), and a
    name its chains can be named after."""
    techs = recipe.techniques()
    if len(techs) < 2:
        raise UserError(f"{source}: the chain needs at least two techniques to compare orders (has {len(techs)})")
    twice = sorted({t for t in techs if techs.count(t) > 1})
    if twice:
        raise UserError(f"{source}: technique '{twice[0]}' is named twice in the chain; keep one entry per technique")
    other = [t for t in techs if t not in LETTER]
    if other:
        raise UserError(f"{source}: technique '{other[0]}' cannot be ordered; use {', '.join(CANONICAL)}")
    # chains and trials are named <name>-<order letters>-s<seed> / <name>-t0000, and must be recipe names too
    checked_name(recipe.name, what=f"{source}: name", longest_suffix=len(DERIVED_SUFFIX), name_max=NAME_LIMIT)
    return techs


def validate_study_recipe(obj: object, source: str) -> Recipe:
    """What the order study and the search check before any training (and `chaincomp check` with them)."""
    recipe = parse_recipe(obj, source)
    check_techniques(recipe, source)
    return recipe


def derived(recipe: Recipe, stages: list[dict], *, seed: int, weights: Path, name: str) -> Recipe:
    """A recipe with the base recipe's data/model but another chain and seed, starting from `weights`."""
    obj = recipe.model_dump(mode="json", by_alias=True)
    obj.update(name=name, seed=seed, threads=None, chain=stages)
    obj["model"]["weights"] = str(Path(weights).resolve())
    return parse_recipe(obj, f"chain {name}")


def stage_dicts(recipe: Recipe) -> dict[str, dict]:
    """Each technique's stage settings as written in the recipe (aliases kept, e.g. prune `global`)."""
    return {s.technique: s.model_dump(mode="json", by_alias=True) for s in recipe.chain}


def open_study(out: Path, kind: str, recipe: Recipe) -> None:
    """Refuse to mix two studies (or two recipes) in one folder; a rerun of the same one continues."""
    f = out / "study.json"
    if f.exists():
        meta = read_model_json(f, StudyFile, allow_nan=True)
        if meta.kind != kind or meta.recipe_digest != recipe.digest():
            raise UserError(f"{out}: holds a {meta.kind} study of another recipe; choose another --out")
        return
    write_json(f, {"kind": kind, "recipe_digest": recipe.digest(), "recipe": recipe.model_dump(mode="json", by_alias=True),
                   "started": time.strftime("%Y-%m-%d %H:%M:%S")})


def ensure_baseline(recipe: Recipe, out: Path) -> Path:
    """Train the baseline once (or reuse DIR/baseline.safetensors) so every chain shares its weights."""
    from ..chain import train_baseline
    from ..data import load_data
    from ..progress import log

    path = out / "baseline.safetensors"
    if path.exists():
        return path
    if recipe.model.weights:
        from ..io import load_weights
        save_weights(path, load_weights(recipe.model.weights))
        return path
    from ..chain import placed

    t0 = time.perf_counter()
    model = train_baseline(recipe, placed(load_data(recipe.data, recipe.seed), recipe))
    save_weights(path, model.state_dict(), metadata={"recipe_digest": recipe.digest()})
    log(f"baseline trained once in {time.perf_counter() - t0:.1f} s -> {path}")
    return path


def study_device(recipe: Recipe) -> str:
    """The device the study's chains ran on, as results record it."""
    from ..device import describe, resolve

    return describe(resolve(recipe.device, "recipe field device (or --device)"))


def run_recipe_task(recipe_obj: dict, out: str, data_seed: int, threads: int | None,
                    blob: bytes | None = None) -> dict:
    """One chain, in a worker or in-process. Data comes from the base seed (one split for all runs,
    so a shared baseline is never tested on its own training images). Returns the compact result."""
    from .. import progress

    was_quiet, progress.quiet = progress.quiet, True
    try:
        return _run_recipe(recipe_obj, out, data_seed, threads, blob)
    finally:
        progress.quiet = was_quiet


def _run_recipe(recipe_obj: dict, out: str, data_seed: int, threads: int | None, blob: bytes | None) -> dict:
    import torch

    from ..chain import read_results, read_run_file, run_chain
    from ..data import load_data
    from ..io import atomic_write_bytes

    if threads:
        torch.set_num_threads(threads)
    weights = Path(recipe_obj["model"]["weights"])
    if blob is not None and not weights.exists():   # a remote node without the driver's filesystem
        atomic_write_bytes(weights, blob)
    recipe = parse_recipe(recipe_obj, f"chain {recipe_obj.get('name')}")
    out_p = Path(out)
    t0 = time.perf_counter()
    res_file = out_p / "results.json"
    if res_file.exists() and (out_p / "run.json").exists() and read_run_file(out_p / "run.json").get(
            "recipe_digest") == recipe.digest():
        res, reused = read_results(res_file), True
    else:
        data = load_data(recipe.data, data_seed)
        res = run_chain(recipe, out_p, resume=True, recipe_text=yaml.safe_dump(recipe_obj, sort_keys=False),
                        data=data, write_report=False)
        reused = False
    return {"name": recipe.name, "out": str(out_p), "chain": res["chain"], "metric": res["final"]["metric"],
            "bitops": res["final"]["bitops"], "baseline": res["baseline"],
            "stages": [{k: s[k] for k in ("name", "metric", "bitops")} for s in res["stages"]],
            "seconds": round(time.perf_counter() - t0, 2), "reused": reused}


class Executor:
    """Submit independent jobs and get their results as they finish: Ray tasks (Ray installed, or an
    `--address`), spawned local worker processes (no Ray), or in-process one at a time when
    workers == 0 (tests, debugging)."""

    def __init__(self, workers: int | None, address: str | None = None):
        if workers is not None and workers < 0:
            raise UserError(f"--workers: must be 0 (in-process) or more, not {workers}")
        if workers == 0 and address:
            raise UserError("--workers 0 runs in-process without Ray; drop --address or give --workers 1 or more")
        self.ray = None
        self.pool: ProcessPoolExecutor | None = None
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.pending: dict[Any, Any] = {}
        self._queue: list[tuple[Any, Callable, tuple]] = []
        if self.workers > 0:
            ray = _optional_ray(address)
            if ray is None:
                self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
                return
            self.ray = _start_ray(ray, self.workers, address)
            if address and workers is None:
                self.workers = max(1, int(self.ray.cluster_resources().get("CPU", 1)))
            self._remote = self.ray.remote(num_cpus=1, max_retries=2)(_call)

    @property
    def threads(self) -> int | None:
        """Torch threads per job: a Ray task or a worker process has one CPU, so it runs one thread (more
        threads than reserved cores made one worker 10x slower on a loaded 2-core machine, see
        benchmarks/order_results.md); in-process jobs keep torch's default."""
        return 1 if (self.ray or self.pool) else None

    @property
    def slots(self) -> int:
        return max(1, self.workers)

    def put(self, obj: Any) -> Any:
        return self.ray.put(obj) if self.ray else None

    def submit(self, key: Any, fn: Callable, *args: Any) -> None:
        if self.ray:
            self.pending[self._remote.remote(fn, *args)] = key
        elif self.pool:
            self.pending[self.pool.submit(_call, fn, *args)] = key
        else:
            self._queue.append((key, fn, args))

    def __len__(self) -> int:
        return len(self.pending) + len(self._queue)

    def next_done(self) -> tuple[Any, dict | None, BaseException | None]:
        """(key, result, error) of the next job to finish."""
        if self.pool:
            done, _ = wait(list(self.pending), return_when=FIRST_COMPLETED)
            fut = next(f for f in self.pending if f in done)      # submission order among the finished
            key = self.pending.pop(fut)
            err = fut.exception()
            if isinstance(err, UserError):
                raise err
            return key, (None if err else fut.result()), err
        if not self.ray:
            key, fn, args = self._queue.pop(0)
            try:
                return key, fn(*args), None
            except (UserError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - reported per job
                return key, None, e
        (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
        key = self.pending.pop(ref)
        try:
            return key, self.ray.get(ref), None
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, UserError):
                raise cause from None
            return key, None, cause
        except self.ray.exceptions.RayError as e:
            return key, None, e

    def drain(self) -> Iterator[tuple[Any, dict | None, BaseException | None]]:
        while len(self):
            yield self.next_done()

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
        if self.ray and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import_ray():
    import ray

    return ray


def _optional_ray(address: str | None):
    """The ray module, or None when it is not installed (then local processes run the jobs); an
    `--address` without Ray is a user mistake."""
    try:
        return _import_ray()
    except ImportError:
        if address:
            raise UserError("--address: Ray is not installed; pip install 'chaincomp[ray]', or drop --address "
                            "to run the chains in local worker processes") from None
        return None


def _call(fn: Callable, *args: Any) -> Any:
    return fn(*args)


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Ray retries an unreachable head for a minute; a plain TCP connect answers in seconds."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address: '{address}' is not host:port (or ray://host:port, or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"--address: cannot reach Ray at {hostport} ({e.strerror or e}); "
                        "start the cluster (ray start --head) or drop --address to run locally") from None


def _start_ray(ray, workers: int, address: str | None):
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 ignore_reinit_error=True)
    try:
        if address:
            _check_reachable(address)
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=workers, object_store_memory=128 * 1024 ** 2, **quiet)
    except UserError:
        raise
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"--address: cannot connect to Ray ({first})" if address
                        else f"cannot start a local Ray instance ({first}); try --workers 0") from None
    return ray
