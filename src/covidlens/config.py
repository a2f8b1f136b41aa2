"""Recipe schema, YAML loading and `--set key=value` overrides."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from covidlens.errors import CovidlensError


class Section(BaseModel):
    """A recipe section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


SectionT = TypeVar("SectionT", bound=Section)


class DataConfig(Section):
    image_size: int = Field(224, ge=8, description="side of the square model input, pixels")
    channels: Literal[1, 3] = 3
    window: tuple[float, float] | None = Field(
        None, description="HU window (level, width) for 16-bit / HU data"
    )
    cache: bool = True
    lung_mask: bool = Field(
        False, description="keep only the lungs (classical segmentation): paper 002's 'segmented CT' variant"
    )
    classes: list[str] | None = Field(None, description="class order; default: sorted labels")
    relabel: dict[str, str] = Field(
        {},
        description="rename labels as the data is indexed, e.g. {Healthy: NonCOVID, Others: NonCOVID} for "
        "COVID vs not-COVID (paper 004); labels not named keep theirs",
    )
    depth: int | None = Field(
        None, ge=2, description="stack this many adjacent slices of a scan into one volume (3D models); none: slices"
    )
    stride: int | None = Field(None, ge=1, description="slices between volume starts; default: depth (no overlap)")
    resize: Literal["square", "A", "B", "C", "D"] = Field(
        "square",
        description="square: stretch to image_size; A-D: paper 003's methods (A pad, B stretch, C and D crop)",
    )
    threshold: Literal["preset", "max", "min"] = Field(
        "preset",
        description="A-D: the size from the training images' largest (max) or smallest (min) image, or image_size",
    )
    clahe_clip: float | None = Field(None, gt=0, description="CLAHE clip limit after resizing; none: no CLAHE")
    clahe_grid: tuple[int, int] = Field((8, 8), description="CLAHE tile grid (rows, columns)")


class ModelConfig(Section):
    name: str = "resnet18"
    pretrained: bool = False
    weights: str | None = None
    drop_rate: float | None = Field(None, ge=0.0, lt=1.0, description="classifier dropout; default: the model's own")
    options: dict[str, int | float | str | bool] = Field(
        {},
        description="keyword arguments of the model's builder (LinearSVM: c, epsilon, epochs; MLP: hidden); "
        "passed on unchecked to a timm model",
    )

    @model_validator(mode="after")
    def _options_fit_the_builder(self) -> ModelConfig:
        if self.options:
            from covidlens.models.registry import check_model_options  # the registry imports torch: only when used

            try:
                self.options = check_model_options(self.name, self.options)
            except CovidlensError as exc:
                raise ValueError(str(exc)) from None
        return self


class OptimizerConfig(Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class SchedulerConfig(Section):
    name: Literal["none", "plateau", "step"] = "none"
    factor: float = Field(0.1, gt=0, le=1)
    patience: int = Field(10, ge=0)
    min_delta: float = Field(1e-4, ge=0)
    step_size: int = Field(10, ge=1)
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"


class AugmentConfig(Section):
    """Random affine augmentation of training images (Keras ImageDataGenerator semantics)."""

    rotation: tuple[float, float] = Field((0.0, 0.0), description="rotation range, degrees")
    zoom: tuple[float, float] = Field((1.0, 1.0), description="zoom range (Keras: > 1 zooms out); 1 = none")
    width_shift: float = Field(0.0, ge=0, lt=1, description="max horizontal shift, fraction of width")
    height_shift: float = Field(0.0, ge=0, lt=1, description="max vertical shift, fraction of height")
    shear: float = Field(0.0, ge=0, lt=1, description="max shear factor (tan of the shear angle)")
    hflip: bool = False
    vflip: bool = False

    @field_validator("zoom")
    @classmethod
    def _positive_zoom(cls, zoom: tuple[float, float]) -> tuple[float, float]:
        if min(zoom) <= 0 or zoom[0] > zoom[1]:
            raise ValueError("zoom must be a range [low, high] with 0 < low <= high")
        return zoom

    @property
    def enabled(self) -> bool:
        """True when any transformation is switched on."""
        return self != AugmentConfig()


class OfflineAugmentConfig(Section):
    """Augmented copies of each fold's training images, made once before training (paper 004's "x4")."""

    factor: int = Field(
        1, ge=1, description="training images per original: the original + factor - 1 augmented copies; 1: off"
    )
    mode: Literal["combined", "separate"] = Field(
        "combined",
        description="combined: every copy is rotated, scaled and noised; separate: copy k gets only the k-th of "
        "the transformations set (rotation, scale, noise), in turn",
    )
    rotation: tuple[float, float] = Field((0.0, 0.0), description="rotation angle range, degrees")
    scale: tuple[float, float] = Field((1.0, 1.0), description="isotropic scale range (> 1 enlarges)")
    noise_std: float = Field(0.0, ge=0, description="SD of additive Gaussian noise, as a fraction of the 0-255 range")

    @field_validator("rotation", "scale")
    @classmethod
    def _ordered_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError("must be a range [low, high] with low <= high")
        return value

    @field_validator("scale")
    @classmethod
    def _positive_scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if scale[0] <= 0:
            raise ValueError("scale must be positive")
        return scale

    @model_validator(mode="after")
    def _copies_need_a_transformation(self) -> OfflineAugmentConfig:
        if self.factor > 1 and not self.transformations:
            raise ValueError("factor > 1 needs a rotation, scale or noise_std range, or the copies equal the originals")
        return self

    @property
    def transformations(self) -> list[str]:
        """The transformations switched on, in the order `separate` mode deals them to copies."""
        switched = {
            "rotation": self.rotation != (0.0, 0.0),
            "scale": self.scale != (1.0, 1.0),
            "noise": self.noise_std > 0,
        }
        return [name for name, on in switched.items() if on]

    @property
    def enabled(self) -> bool:
        """True when training images get augmented copies."""
        return self.factor > 1


class TrainConfig(Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    augment: AugmentConfig = AugmentConfig()
    offline_augment: OfflineAugmentConfig = OfflineAugmentConfig()
    restore_best: bool = True
    precise_bn: bool = Field(
        False, description="re-estimate batch-norm statistics on the training images after every epoch"
    )
    monitor: Literal["val_loss", "val_accuracy", "val_loss_and_accuracy"] = Field(
        "val_loss",
        description="what makes an epoch the best (restore_best); val_loss_and_accuracy: a new lowest validation "
        "loss and a new highest validation accuracy at the same epoch (paper 003's SaveBest)",
    )
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: torch's choice")


class CVConfig(Section):
    split: Literal["kfold", "holdout", "fixed"] = Field(
        "kfold",
        description="kfold: patient-wise k-fold; holdout: one patient-wise train/val/test split per round; "
        "fixed: the dataset's own train/val/test lists",
    )
    folds: int = Field(5, ge=2)
    rounds: int = Field(1, ge=1)
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the training patients for validation")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="holdout: share of all patients for testing")
    seed: int = 0


class EvaluateConfig(Section):
    confidence: float = Field(0.95, gt=0, lt=1)
    ci_unit: Literal["fold", "round"] = "fold"
    positive_class: str | None = Field(
        None, description="the class of the binary one-vs-rest metrics (e.g. NCP, COVID); needed by bootstrap"
    )
    bootstrap_resamples: int = Field(
        0, ge=0, description="percentile bootstrap CIs of the test predictions with this many resamples; 0: off"
    )
    levels: list[Literal["scan", "patient"]] = Field(
        [], description="also report metrics with predictions aggregated to these levels"
    )
    aggregation: Literal["mean", "vote"] = Field("mean", description="how predictions aggregate to a level")


class Recipe(Section):
    name: str = "custom"
    paper: str = ""
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    cv: CVConfig = CVConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _bootstrap_needs_positive_class(self) -> Recipe:
        if self.evaluate.bootstrap_resamples and self.evaluate.positive_class is None:
            raise ValueError("evaluate.bootstrap_resamples needs evaluate.positive_class (e.g. NCP or COVID)")
        return self


def builtin_names(folder: str) -> list[str]:
    """Names of the YAML files shipped in the package folder `folder` (recipes, studies)."""
    files = resources.files("covidlens") / folder
    return sorted(p.name.removesuffix(".yaml") for p in files.iterdir() if p.name.endswith(".yaml"))


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with covidlens."""
    return builtin_names("recipes")


def packaged_yaml(folder: str, what: str, name_or_path: str) -> tuple[dict, str]:
    """The mapping in a built-in YAML of `folder` (by name) or in a YAML file, and where it came from."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise CovidlensError(f"{path}: {what} file not found")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    elif name_or_path not in builtin_names(folder):
        raise CovidlensError(
            f"unknown {what} {name_or_path!r}; built-in {what}s: {', '.join(builtin_names(folder))}, "
            "or give a path to a .yaml file"
        )
    else:
        text = (resources.files("covidlens") / folder / f"{name_or_path}.yaml").read_text(encoding="utf-8")
        origin = f"built-in {what} {name_or_path}"
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise CovidlensError(f"{origin}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise CovidlensError(f"{origin}: a {what} must be a mapping of sections")
    return data, origin


def parse_override(item: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-parsed value."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise CovidlensError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=5")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to a recipe dict (in place) and return it."""
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise CovidlensError(f"--set {item!r}: {key!r} is a value, not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe by built-in name or path, apply overrides and validate it."""
    data, origin = packaged_yaml("recipes", "recipe", name_or_path)
    apply_overrides(data, overrides or [])
    return validate_recipe(data, origin)


def validate_recipe(data: dict, origin: str) -> Recipe:
    """Validate a recipe dict; the first problem becomes a one-line CovidlensError."""
    return validate_as(Recipe, data, origin, "recipe")


def validate_as(schema: type[SectionT], data: dict, origin: str, what: str) -> SectionT:
    """Validate a dict against `schema` (a recipe, a study); the first problem becomes a one-line CovidlensError."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise CovidlensError(f"{origin}: unknown {what} key {where!r}; check its spelling") from None
        message = first["msg"].removeprefix("Value error, ")
        raise CovidlensError(f"{origin}: {where}: {message}" if where else f"{origin}: {message}") from None


def recipe_to_yaml(recipe: Recipe) -> str:
    """The resolved recipe as YAML, as written to a run's config.yaml."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
