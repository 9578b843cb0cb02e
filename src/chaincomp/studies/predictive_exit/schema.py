"""The Predictive Exit study's recipe: every key validated, and the command line's overrides merged at
the edge (`with_overrides`), so the runner reads one configuration."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ...device import DeviceName
from ...errors import UserError
from ...recipe import (BaselineConfig, DataConfig, ModelConfig, RecipeName, Seed, Threads, read_yaml_recipe,
                       validate_document)

DEFAULT_RECIPE = "exit_default"


class ExitsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    style: Literal["authors", "project"] = Field(
        "authors", description="authors: their network (exits after every conv and pool, inside residual blocks "
                               "too; their BoF head with shared FC layers; joint training); project: exits after "
                               "blocks, a head per exit (`head`), backbone frozen by default")
    head: Literal["bof", "pool"] = Field("bof", description="project style only: the exit head")
    share: Literal["auto", "network", "stage", "none"] = Field(
        "auto", description="authors style: which exits share FC layers (network: all, as on VGG; stage: per "
                            "ResNet stage; auto: stage on ResNets, network otherwise)")
    codewords: int = Field(64, ge=1, le=4096, description="BoF codebook size (the paper: 64)")
    train: Literal["frozen", "joint"] | None = Field(
        None, description="frozen: backbone fixed, sum of exit CEs; joint: everything, sum of every exit's and "
                          "the final head's CE; null: the style's own (authors: joint, project: frozen)")
    epochs: int = Field(30, ge=0, le=100_000)
    lr: float = Field(0.003, gt=0, le=10)
    batch_size: int = Field(64, ge=1, le=1_000_000)
    optimizer: Literal["sgd", "adam"] = "adam"
    weight_decay: float = Field(5e-4, ge=0, le=1)


class PredictiveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    beta: float | None = Field(None, gt=0, le=1e6, description="null: calibrate on validation data")
    rounds: int = Field(8, ge=1, le=64)
    start_block: int = Field(1, ge=0, le=10_000)
    give_up: Literal["jump", "final"] = "jump"
    thresholds: Literal["authors", "project"] | None = Field(
        None, description="T_k: authors = |signed mean logit| over training inputs with BN in train mode (their "
                          "script); project = mean |logit| in eval mode (the paper's text); null: the style's own")
    max_drop: float = Field(0.5, ge=0, le=100)
    sweep_points: int = Field(40, ge=2, le=1000)
    equal_drop: float = Field(0.25, ge=0, le=100, description="the ways are compared at the classic network's test "
                                                                "top-1 minus this many points, on their sweep curves")


class EnergyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    platform: str = "jetson_tx2_cpu"
    latency_ms: float | None = Field(None, gt=0, le=1e9)
    slack: float = Field(1.1, ge=1.0, le=1000)
    controller: Literal["auto", "cpufreq", "jetson_devfreq", "dry_run"] = "auto"
    policy: Literal["guarded", "predicted"] = Field(
        "guarded", description="predicted: the guide's policy on the predicted remaining work; guarded: "
                               "also keep time to finish the whole network at the top point (see docs)")


class RuntimeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int | None = Field(None, ge=1, le=10_000_000, description="test inputs run at batch 1 (null: all)")
    warmup: int = Field(10, ge=0, le=10_000)
    threads: int = Field(1, ge=1, le=1024, description="torch threads while timing (batch 1: one is fastest and steadiest)")


class ExitRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: RecipeName = "exit"
    seed: Seed = 0
    threads: Threads = None
    device: DeviceName = "auto"
    amp: bool = False
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig(name="digits_vgg")
    baseline: BaselineConfig = BaselineConfig(epochs=40, batch_size=64)
    exits: ExitsConfig = ExitsConfig()
    predictive: PredictiveConfig = PredictiveConfig()
    energy: EnergyConfig = EnergyConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @property
    def train_mode(self) -> str:
        return self.exits.train or ("joint" if self.exits.style == "authors" else "frozen")

    @property
    def threshold_mode(self) -> str:
        return self.predictive.thresholds or self.exits.style


def validate_exit_recipe(obj: object, source: str) -> ExitRecipe:
    """Everything checked before any training: the schema and the platform profile it names.
    `chaincomp check` and `chaincomp exit` both call this, so check says exactly what the command would."""
    from ...energy.profiles import load_profile

    cfg = validate_document(ExitRecipe, obj, source)
    load_profile(cfg.energy.platform)
    return cfg


def load_exit_recipe(path: str | None) -> ExitRecipe:
    """A recipe file, or a built-in one by name (``exit_default`` when none is given)."""
    obj, _, source = read_yaml_recipe(path, DEFAULT_RECIPE, prefix="exit_")
    return validate_exit_recipe(obj, source)


def with_overrides(cfg: ExitRecipe, *, beta: float | None = None, latency_ms: float | None = None,
                   platform: str | None = None) -> ExitRecipe:
    """The recipe with `--beta`, `--latency-ms` and `--platform` merged in, checked as the recipe is."""
    from ...energy.profiles import load_profile

    if beta is not None and not beta > 0:
        raise UserError(f"--beta: must be > 0 (got {beta})")
    if latency_ms is not None and not latency_ms > 0:
        raise UserError(f"--latency-ms: must be > 0 (got {latency_ms})")
    p = {"beta": beta} if beta is not None else {}
    e = {k: v for k, v in (("latency_ms", latency_ms), ("platform", platform)) if v is not None}
    merged = cfg.model_copy(update={"predictive": cfg.predictive.model_copy(update=p),
                                    "energy": cfg.energy.model_copy(update=e)})
    load_profile(merged.energy.platform)          # a bad --platform fails before training
    return merged
