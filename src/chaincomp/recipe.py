"""The recipe: one validated YAML document that says what to compress and how.

Errors name the field (e.g. `chain.1.ratio`) and the fix; the command line turns them into one
line on stderr and exit status 2.
"""
from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_serializer, model_validator

from .device import DeviceName
from .errors import UserError
from .stages import STAGES, configs
from .train import FitConfig

# The fields every command's recipe starts with, constrained once. The name becomes a folder name
# (runs/<name>), so it may hold no path separator or `..` of its own.
def _not_hidden(name: str) -> str:
    """`.`, `..` and `.x` pass the pattern but are not folder names a run may take: runs/.. is the
    working directory (a run there replaced the user's results.json) and runs/. is runs/ itself."""
    if name.startswith("."):
        raise ValueError(f"'{name}' may not start with '.' ('.' and '..' name existing folders, '.x' is hidden); "
                         "start the name with a letter, digit, '_' or '-'")
    return name


RecipeName = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$"),
                       AfterValidator(_not_hidden)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Threads = Annotated[int | None, Field(ge=1, le=1024)]


def _without_defaults(handler, obj: BaseModel, fields: tuple[str, ...]) -> dict:
    """Dump without `fields` left at their defaults, so recipes written before those fields keep their digest
    (and so their checkpoints)."""
    d = handler(obj)
    for f in fields:
        info = type(obj).model_fields[f]
        key = info.alias or f
        if key in d and getattr(obj, f) == info.get_default(call_default_factory=True):
            del d[key]
    return d


class AugmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flip: bool = Field(False, description="random horizontal flips of training images")
    crop: int = Field(0, ge=0, le=256, description="random crops after zero-padding by this many pixels")


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Literal["digits", "cifar10", "camvid", "sr", "sr_sample", "imagefolder"] = "digits"
    path: str | None = Field(None, description="archive or folder; default $CHAINCOMP_DATA or ~/.cache/chaincomp/data")
    limit_train: int | None = Field(None, ge=1, le=10_000_000)
    limit_test: int | None = Field(None, ge=1, le=10_000_000)
    val_size: int = Field(5000, ge=1, le=1_000_000)
    scale: int = Field(2, ge=2, le=4)
    size: tuple[int, int] | None = Field(None, description="imagefolder: resize every image to [H, W]")
    augment: AugmentConfig | None = Field(None, description="imagefolder: training augmentation")

    @model_validator(mode="after")
    def _folder_needs_path(self) -> "DataConfig":
        if self.name == "imagefolder" and not self.path:
            raise ValueError("imagefolder needs `path`: a folder or zip with train/ and test/ class folders")
        if self.size and not all(1 <= v <= 8192 for v in self.size):
            raise ValueError("size: height and width in 1..8192")
        if self.name != "imagefolder" and (self.size or self.augment):
            raise ValueError(f"data: size and augment are options of imagefolder, not of {self.name}")
        if self.path is not None and self.name in ("digits", "sr_sample"):
            raise ValueError(f"path: dataset '{self.name}' is built in and reads no files; remove path "
                             "(or name a dataset that reads it: cifar10, camvid, sr, imagefolder)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _without_defaults(handler, self, ("size", "augment"))


IMPORT_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"


class ModelConfig(BaseModel):
    """A zoo model by `name`, or the user's own: `import: package.module:callable` with `kwargs`."""
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = "digits_cnn"
    width: float = Field(1.0, gt=0, le=8)
    weights: str | None = Field(None, description="start from these weights (.safetensors) instead of training")
    import_: str | None = Field(None, alias="import", max_length=300, pattern=IMPORT_PATTERN,
                                description="package.module:callable building the model (an nn.Module class, "
                                            "or a factory of a module given --allow-import)")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the import callable")
    given: bool = Field(False, description="set by compress(model_object): the structure is that object's")

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if self.import_ is None:
            if self.kwargs or self.given:
                raise ValueError("model.kwargs: only with model.import")
            return self
        if "name" in self.model_fields_set and self.name != self.import_:
            raise ValueError("model: give either name (a zoo model) or import (your own), not both")
        if "width" in self.model_fields_set and self.width != 1.0:
            raise ValueError("model.width: applies to zoo models; an imported model is built as its kwargs say")
        self.name = self.import_
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        return _without_defaults(handler, self, ("import_", "kwargs", "given"))

    def spec(self, input_shape) -> dict:
        """What a checkpoint records to rebuild an imported model (see models.imported.build)."""
        s = {"import": self.import_, "kwargs": dict(self.kwargs), "input": [int(v) for v in input_shape]}
        return s | ({"given": "model"} if self.given else {})


class ResizePhase(BaseModel):
    """`epochs` epochs trained at `size` x `size` inputs (progressive resizing)."""
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(ge=1, le=100_000)
    size: int = Field(ge=4, le=4096)


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: int = Field(30, ge=0, le=100_000)
    lr: float = Field(0.05, gt=0, le=10)
    batch_size: int = Field(128, ge=1, le=1_000_000)
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = Field(5e-4, ge=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="classification only: cross-entropy against "
                                   "targets smoothed by this much")
    resize: list[ResizePhase] = Field([], description="classification only: the first epochs train at these "
                                      "smaller input sizes, in order (cheaper epochs); the rest at the data's size")
    ema: float = Field(0.0, ge=0, lt=1, description="keep an exponential moving average of the weights (and BN "
                       "statistics) with this decay per step, e.g. 0.999, and end training on it; 0: off")

    @model_validator(mode="after")
    def _resize_fits(self) -> "BaselineConfig":
        if sum(p.epochs for p in self.resize) > self.epochs:
            raise ValueError("baseline.resize: its phases hold more epochs than baseline.epochs; shorten them")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler):   # baselines trained before these fields keep their digest (and their cache)
        return _without_defaults(handler, self, ("label_smoothing", "resize", "ema"))

    def fit_config(self) -> FitConfig:
        return FitConfig.of(self)


# The chain's entries: every registered stage's config, told apart by `technique`.
StageEntry = Annotated[Union[configs()], Field(discriminator="technique")]


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: RecipeName = "run"
    seed: Seed = 0
    threads: Threads = None
    device: DeviceName = "auto"
    amp: bool = Field(False, description="bf16 autocast for float training on CUDA and on CPUs with AMX (elsewhere "
                      "on the CPU bf16 is emulated and slower: off); quantized layers stay fp32")
    channels_last: bool | None = Field(None, description="train in the channels_last memory format; default: on "
                                       "CUDA only (on the CPU opt-in: faster with oneDNN, other last float bits)")
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    baseline: BaselineConfig = BaselineConfig()
    chain: list[StageEntry] = Field(default_factory=list, max_length=32)

    @model_validator(mode="after")
    def _exits_need_classes(self) -> "Recipe":
        if self.data.name in ("sr", "sr_sample", "camvid"):
            for i, s in enumerate(self.chain):
                if s.technique == "early_exit":
                    raise ValueError(f"chain.{i}: early_exit needs a classification dataset, not {self.data.name}")
            for f in ("label_smoothing", "resize"):
                if f in self.baseline.model_fields_set and getattr(self.baseline, f):
                    raise ValueError(f"baseline.{f}: classification only, not {self.data.name}; remove it")
        return self

    def identity(self) -> dict:
        """What the digests cover: everything but where it runs (a run resumed on a GPU is the same run);
        `amp` only when on, so recipes written before it keep their digests."""
        return identity_dump(self)

    def digest(self) -> str:
        """Identity of the recipe for resume: same digest, same run."""
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:16]

    def stage_digest(self, index: int) -> str:
        """Identity of what stage `index` (0 = baseline) depends on: everything but the name and the stages
        after it. Checkpoints carry it, so a resumed run with only later stages changed keeps the earlier ones."""
        dump = self.identity()
        dump.pop("name", None)
        dump["chain"] = dump["chain"][:index]
        return hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]

    def techniques(self) -> list[str]:
        return [s.technique for s in self.chain]


def identity_dump(recipe: BaseModel) -> dict:
    """A recipe's fields without `device` and `channels_last` (where and how it runs, not what; and `amp`
    when off), for any recipe kind's digest."""
    dump = recipe.model_dump(mode="json", by_alias=True)
    dump.pop("device", None)
    dump.pop("channels_last", None)
    if not dump.get("amp", True):
        dump.pop("amp")
    return dump


def _loc(loc: tuple) -> str:
    tags = set(STAGES)
    parts = [str(p) for p in loc if not (isinstance(p, str) and p in tags)]
    return ".".join(parts) or "recipe"


def format_error(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling; see the recipe reference in docs/recipes.md)"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        if not err["loc"]:  # a whole-recipe rule: its message already names the field
            return f"{source}: {msg}"
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) or got is None else f" (got {' '.join(str(got)[:40].split())})"
    more = f" [+{len(e.errors()) - 1} more]" if len(e.errors()) > 1 else ""
    return f"{source}: {_loc(err['loc'])}: {msg}{got_s}{more}"


def parse_recipe(obj: object, source: str = "recipe") -> Recipe:
    return validate_document(Recipe, obj, source)


def builtin_recipes(prefix: str = "") -> dict[str, str]:
    folder = resources.files("chaincomp") / "recipes"
    return {p.name[:-5]: p.read_text() for p in folder.iterdir()
            if p.name.endswith(".yaml") and p.name.startswith(prefix)}


def read_yaml_recipe(path: str | None, default: str, prefix: str = "") -> tuple[object, str, str]:
    """(parsed YAML, text, source) of a recipe file, or of a built-in recipe named `prefix*`.

    Every command's recipe goes through here, so every one answers a missing file, a name the file
    system refuses (too long, NUL), bad YAML, aliases, duplicate keys, oversized values or absurd
    nesting with one line naming the file (and the line): see `safe_yaml`."""
    from . import safe_yaml

    name = path or default
    builtins = builtin_recipes(prefix)
    try:
        exists = Path(name).exists()
    except (OSError, ValueError) as e:      # a name over 255 bytes, a NUL
        raise UserError(f"{name}: not a usable recipe path ({getattr(e, 'strerror', None) or type(e).__name__}); "
                        "give a YAML path or a built-in recipe name") from None
    if not exists and name in builtins:
        text, source = builtins[name], f"<built-in recipe {name}>"
    else:
        if not exists:
            raise UserError(f"{name}: recipe file not found; give a YAML path or one of: {', '.join(sorted(builtins))}")
        source = str(Path(name))
        text = safe_yaml.read_document(name, source)
    return safe_yaml.load(text, source), text, source


MAX_DEPTH = 32  # recipes nest about 5 deep; the limit keeps pydantic from recursing on a crafted object


def too_deep(obj: object, limit: int = MAX_DEPTH) -> bool:
    """Does `obj` nest lists/dicts more than `limit` levels? Iterative, so it cannot overflow itself.
    Why: pydantic reports an over-deep value's repr failing through sys.unraisablehook (a second
    message on stderr) instead of raising, so a deep object from the Python API is refused first."""
    stack = [(obj, 0)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, (dict, list, tuple)):
            if d >= limit:
                return True
            stack.extend((v, d + 1) for v in (x.values() if isinstance(x, dict) else x))
    return False


def validate_document(schema: type[BaseModel], obj: object, source: str) -> BaseModel:
    """Validate a parsed recipe against a schema; every failure is one UserError line."""
    if obj is None:
        obj = {}
    if not isinstance(obj, dict):
        raise UserError(f"{source}: a recipe is a mapping of keys, not {type(obj).__name__}")
    if too_deep(obj):
        raise UserError(f"{source}: nested too deeply to be a recipe (more than {MAX_DEPTH} levels)")
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        raise UserError(format_error(e, source)) from None
    except (RecursionError, OverflowError, ValueError, TypeError) as e:
        raise UserError(f"{source}: cannot be read as a recipe ({type(e).__name__})") from None


def load_recipe(path: str | None) -> tuple[Recipe, str]:
    """A chain recipe from a YAML file, or a built-in one by name (`default` when none is given)."""
    obj, text, source = read_yaml_recipe(path, "default")
    return parse_recipe(obj, source), text
