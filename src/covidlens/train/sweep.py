"""Grid sweeps: one run directory per combination of recipe values, resumable, compared in one table.

`--grid depth=2,4,8 --grid batch_size=8,32` runs the 6 combinations (first key outermost) with the
same data, split seed and recipe otherwise. Every cell is an ordinary run directory under `runs/`,
so an interrupted sweep resumes cell by cell and fold by fold; all cells share one decode-once cache.
The comparison (paper 002 Tables 5-7) is computed from each cell's test predictions of its first round.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml
from pydantic import BaseModel

from covidlens import atomic
from covidlens.config import Recipe, load_recipe
from covidlens.data.adapters.base import IndexOptions
from covidlens.errors import CovidlensError
from covidlens.evaluate.tables import comparison_csv, comparison_rows
from covidlens.progress import console
from covidlens.train.cv import resolved_path, run_cv

DEFAULT_RESAMPLES = 1000  # paper 002's bootstrap, when the recipe does not set evaluate.bootstrap_resamples


@dataclass(frozen=True)
class GridAxis:
    """One swept recipe field: its dotted key, the short label shown in tables, and its values."""

    key: str
    label: str
    values: tuple


def recipe_fields(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """Dotted paths of every leaf field of the recipe schema (data.depth, train.optimizer.lr, ...)."""
    paths = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.extend(recipe_fields(annotation, f"{prefix}{name}."))
        else:
            paths.append(f"{prefix}{name}")
    return paths


OPTIONS_PREFIX = "model.options."  # free-form: the model's builder names them, the recipe checks them
RECIPE_KEY = "recipe"  # a grid axis over whole recipes (paper 003's classifiers each have their own)


def resolve_key(key: str) -> str:
    """A dotted recipe key from a full key, a unique field name (depth -> data.depth), a section with a
    name field (model -> model.name), a model option (model.options.c), or `recipe` (whole recipes)."""
    if key == RECIPE_KEY:
        return key
    if key.startswith(OPTIONS_PREFIX):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.removeprefix(OPTIONS_PREFIX)):
            raise CovidlensError(f"--grid {key!r}: a model option is model.options.<name>, e.g. model.options.c")
        return key
    fields = recipe_fields()
    if key in fields:
        return key
    if f"{key}.name" in fields:
        return f"{key}.name"
    matches = [f for f in fields if f.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise CovidlensError(f"--grid {key!r} is ambiguous: use one of {', '.join(matches)}")
    raise CovidlensError(
        f"--grid {key!r} is not a recipe field; use e.g. data.depth, train.batch_size, model, model.options.c"
    )


def grid_value(text: str) -> object:
    """One grid value as a YAML scalar, where a number YAML 1.1 leaves as text (1e-4, no dot) becomes a float."""
    value = yaml.safe_load(text)
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value):
        return float(value)
    return value


def parse_grid(items: list[str]) -> list[GridAxis]:
    """`key=v1,v2,...` items as grid axes; values are YAML scalars (8 -> int, 1e-3 -> float)."""
    axes: list[GridAxis] = []
    for item in items:
        key, sep, raw = item.partition("=")
        values = tuple(grid_value(v) for v in raw.split(",") if v.strip())
        if not sep or not key.strip() or not values:
            raise CovidlensError(f"--grid {item!r}: expected key=v1,v2,..., e.g. --grid depth=2,4,8")
        full = resolve_key(key.strip())
        if any(axis.key == full for axis in axes):
            raise CovidlensError(f"--grid names {full} twice; give all its values in one --grid")
        if len(set(map(str, values))) != len(values):
            raise CovidlensError(f"--grid {item!r} repeats a value")
        axes.append(GridAxis(full, key.strip().rsplit(".", 1)[-1], values))
    if not axes:
        raise CovidlensError("a sweep needs at least one --grid key=v1,v2,...")
    return axes


def grid_cells(axes: list[GridAxis]) -> list[dict[str, object]]:
    """Every combination of the axes' values, the first axis outermost, as {dotted key: value}."""
    keys = [a.key for a in axes]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(a.values for a in axes))]


def cell_name(axes: list[GridAxis], cell: dict[str, object]) -> str:
    """A folder name for a cell, e.g. `depth=4_batch_size=32`."""
    parts = [f"{a.label}={re.sub(r'[^A-Za-z0-9.+-]+', '-', str(cell[a.key])).strip('-')}" for a in axes]
    return "_".join(parts)


class Sweep:
    """Where a sweep's files live, and what it was started with."""

    def __init__(self, root: Path, recipe: str, overrides: list[str], axes: list[GridAxis]) -> None:
        self.root = root
        self.recipe = recipe
        self.overrides = overrides
        self.axes = axes
        self.cells = grid_cells(axes)
        self.names = [cell_name(axes, cell) for cell in self.cells]
        if len(set(self.names)) != len(self.names):
            raise CovidlensError("two grid values give the same folder name; make the values more distinct")
        self.record = self.root / "sweep.json"
        self.table = self.root / "sweep.csv"
        self.results = self.root / "results.json"
        self.cache = self.root / "cache"

    def run_dir(self, name: str) -> Path:
        """The run directory of one cell."""
        return self.root / "runs" / name

    def cell_recipe(self, cell: dict[str, object]) -> Recipe:
        """The recipe of one cell: the sweep's (or the cell's `recipe`) recipe and overrides, then the cell's values."""
        values = [
            f"{key}={json.dumps(value) if isinstance(value, str) else value}"
            for key, value in cell.items()
            if key != RECIPE_KEY
        ]
        return load_recipe(str(cell.get(RECIPE_KEY, self.recipe)), self.overrides + values)

    def description(self) -> dict:
        """What sweep.json records; a rerun must match it to resume."""
        return {
            "recipe": self.recipe,
            "overrides": self.overrides,
            "grid": [{"key": a.key, "label": a.label, "values": list(a.values)} for a in self.axes],
        }

    def start_or_resume(self, data: str) -> None:
        """Write sweep.json for a new sweep, or check that an existing one was started the same way."""
        wanted = self.description() | {"data": data}
        if self.record.is_file():
            found = json.loads(self.record.read_text(encoding="utf-8"))
            if found != wanted:
                raise CovidlensError(
                    f"{self.root}: holds a sweep with another recipe, --set values, grid or data; use another --out"
                )
            return
        if self.root.exists() and any(self.root.iterdir()):
            raise CovidlensError(f"{self.root}: exists and is not a covidlens sweep; choose another --out")
        atomic.write_json(self.record, wanted)


def run_sweep(
    recipe: str,
    grid: list[str],
    data: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    layout: str | None = None,
    options: IndexOptions | None = None,
    show_progress: bool = True,
) -> list[dict]:
    """Run (or resume) every cell of the grid, then write the comparison table; return its rows."""
    data = resolved_path(data)
    sweep = Sweep(Path(out), recipe, list(overrides or []), parse_grid(grid))
    recipes = [sweep.cell_recipe(cell) for cell in sweep.cells]  # every cell's recipe is checked before any runs
    positive = recipes[0].evaluate.positive_class
    if positive is None:
        raise CovidlensError(
            "a sweep compares the positive class against the rest: set evaluate.positive_class "
            "(e.g. --set evaluate.positive_class=COVID)"
        )
    sweep.start_or_resume(data)
    for index, (name, cell_recipe) in enumerate(zip(sweep.names, recipes, strict=True), start=1):
        console.print(f"sweep cell {index}/{len(recipes)}: {name}")
        run_cv(cell_recipe, data, sweep.run_dir(name), layout, options, show_progress, cache_dir=sweep.cache)
    return write_comparison(sweep, recipes)


def write_comparison(sweep: Sweep, recipes: list[Recipe]) -> list[dict]:
    """Compare the cells' first-round test predictions; write results.json and sweep.csv."""
    groups, settings, classes = {}, {}, None
    for name, cell in zip(sweep.names, sweep.cells, strict=True):
        predictions = pd.read_csv(sweep.run_dir(name) / "predictions.csv", dtype={"sample_id": str})
        groups[name] = predictions[predictions["round"] == predictions["round"].min()]
        settings[name] = {axis.label: cell[axis.key] for axis in sweep.axes}
        cell_classes = json.loads((sweep.run_dir(name) / "metrics.json").read_text(encoding="utf-8"))["classes"]
        if classes is not None and cell_classes != classes:
            raise CovidlensError(f"sweep cell {name} has classes {cell_classes}, the others {classes}")
        classes = cell_classes
    evaluate = recipes[0].evaluate
    rows = comparison_rows(
        groups,
        settings,
        classes,
        evaluate.positive_class,
        n_resamples=evaluate.bootstrap_resamples or DEFAULT_RESAMPLES,
        confidence=evaluate.confidence,
        seed=recipes[0].cv.seed,
    )
    atomic.write_json(
        sweep.results,
        sweep.description() | {"classes": classes, "positive": evaluate.positive_class, "rows": rows},
    )
    atomic.write_csv(sweep.table, comparison_csv(rows))
    return rows
