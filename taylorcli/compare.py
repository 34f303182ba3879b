"""Runs side by side: read run directories, pick values at epochs, label runs by recipe differences.

This is the layer `report` builds on: a `Run` is one run directory as read back from disk, and
`side_by_side` lays several runs out like the paper's Tables 3 and 4 (per setting, per model:
test accuracy, cos_param and cos_func at a few epochs).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from rich.table import Table as RichTable

from .recipe import Recipe, RecipeError, load_recipe, recipe_to_flat
from .runs import LAYERS_COLUMNS, METRICS_COLUMNS, write_atomic

FULL = "full"
FORMATS = ("md", "csv")
METRICS = ("test_acc", "cos_param", "cos_func")
# Recipe keys that change how a run is stored or evaluated, not what it learns: never a label.
NOT_A_SETTING = ("name", "data.data_dir", "data.archive", "eval.", "checkpoint.")
EPOCH_TOL = 1e-6  # metrics.csv rounds epochs to 6 decimals


class ReportError(Exception):
    """Bad input to `compare` or `report`; str(e) is one line naming the path or flag."""


@dataclass(frozen=True, eq=False)  # eq would compare DataFrames element-wise
class Run:
    """One run directory as read back: its resolved recipe, metrics and layer movement."""

    path: Path
    name: str
    recipe: Recipe
    metrics: pd.DataFrame
    layers: pd.DataFrame | None
    parts: tuple[Path, ...] = ()  # the subset runs merged into this one (merge.py), if any

    @property
    def _anchor(self) -> pd.Series:
        # The full network's rows; a subset run without it goes by whatever it trained.
        is_full = self.metrics["model"] == FULL
        return is_full if is_full.any() else self.metrics["model"].notna()

    @property
    def last_epoch(self) -> float:
        """The latest epoch the full network (or, without it, any model) was evaluated at."""
        return float(self.metrics.loc[self._anchor, "epoch"].max())

    @property
    def complete(self) -> bool:
        """Whether metrics.csv reaches the recipe's final epoch."""
        return self.last_epoch >= self.recipe.train.epochs - EPOCH_TOL

    @property
    def status(self) -> str:
        """'complete', or 'incomplete (epoch E of N)'."""
        if self.complete:
            return "complete"
        return f"incomplete (epoch {self.last_epoch:g} of {self.recipe.train.epochs})"

    @property
    def models(self) -> list[str]:
        """Model names in table order: order1 … orderK, then the full network (as in the paper)."""
        orders = self.metrics.groupby("model")["order"].first()
        return sorted(orders.index, key=lambda m: (orders[m] == 0, orders[m]))

    def order_of(self, model: str) -> int:
        """Taylor order of a model of this run (0 for the full network)."""
        return int(self.metrics.loc[self.metrics["model"] == model, "order"].iloc[0])

    def epochs(self) -> np.ndarray:
        """Evaluated epochs of the full network (or, without it, any model), ascending."""
        return np.sort(self.metrics.loc[self._anchor, "epoch"].unique())

    def nearest_epoch(self, wanted: float) -> float:
        """The evaluated epoch equal to `wanted`, else the nearest one before it."""
        epochs = self.epochs()
        before = epochs[epochs <= wanted + EPOCH_TOL]
        return float(before.max()) if len(before) else float(epochs.min())

    def at(self, epoch: float) -> pd.DataFrame:
        """The metrics rows at one evaluated epoch, indexed by model."""
        rows = self.metrics[np.isclose(self.metrics["epoch"], epoch, rtol=0, atol=EPOCH_TOL)]
        return rows.set_index("model")

    def final(self) -> pd.DataFrame:
        """The metrics rows at the last evaluated epoch, indexed by model."""
        return self.at(self.last_epoch)

    def diverged(self) -> dict[str, float]:
        """Models marked diverged, with the first epoch at which they were."""
        flagged = self.metrics[self.metrics["diverged"].astype(str).str.lower() == "true"]
        return {m: float(g["epoch"].min()) for m, g in flagged.groupby("model")}


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run directory (recipe.yaml + metrics.csv, layers.csv if there), or raise ReportError."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: no such run directory")
    for needed in ("recipe.yaml", "metrics.csv"):
        if not (path / needed).is_file():
            raise ReportError(f"{path}: not a run directory (no {needed}); expected the --out "
                              f"folder of a `taylorcli train` run")
    try:
        recipe = load_recipe(path / "recipe.yaml")
    except RecipeError as e:
        raise ReportError(f"{path}: unreadable recipe.yaml ({e})") from None
    metrics = _read_table(path / "metrics.csv", METRICS_COLUMNS)
    if metrics.empty:
        raise ReportError(f"{path / 'metrics.csv'}: no rows yet; the run has not reached its "
                          f"first evaluation")
    layers = None
    if (path / "layers.csv").is_file():
        layers = _read_table(path / "layers.csv", LAYERS_COLUMNS)
    return Run(path, name or path.name, recipe, metrics, layers)


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: not a readable CSV table ({type(e).__name__})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ReportError(f"{path}: missing columns {', '.join(missing)}; expected "
                          f"{', '.join(columns)}")
    return table


def parse_epochs(text: str) -> tuple[float, ...]:
    """'10,80' -> (10.0, 80.0); ReportError naming --epochs otherwise."""
    try:
        epochs = tuple(float(part) for part in str(text).split(","))
    except ValueError:
        epochs = ()
    if not epochs or any(not math.isfinite(e) or e < 0 for e in epochs) \
            or len(set(epochs)) != len(epochs):
        raise ReportError(f"--epochs {text}: expected distinct comma-separated epochs >= 0, "
                          f"e.g. 10,80")
    return epochs


def check_format(fmt: str) -> str:
    """The output format, or ReportError naming --format."""
    if fmt not in FORMATS:
        raise ReportError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    return fmt


def epoch_tag(epoch: float) -> str:
    """Column suffix for an epoch, as in the paper's CSVs: 10 -> 'ep10'."""
    return f"ep{epoch:g}"


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


def recipe_differences(recipes: Sequence[Recipe]) -> list[dict[str, str]]:
    """For each recipe, the settings in which the recipes differ: {'optim.lr': '0.01', ...}."""
    flat = [recipe_to_flat(r) for r in recipes]
    keys = [k for k in flat[0] if not k.startswith(NOT_A_SETTING)]
    differing = [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]
    return [{k: _show(f.get(k)) for k in differing} for f in flat]


def setting_labels(runs: Sequence[Run]) -> list[str]:
    """Label each run by what differs between the recipes ('model.width=128'), else by its name."""
    diffs = recipe_differences([r.recipe for r in runs])
    labels = ["; ".join(f"{k}={v}" for k, v in d.items()) for d in diffs]
    if len(runs) == 1 or len(set(labels)) < len(labels) or not all(labels):
        # Same settings (repeats) or one run: the run's own name is what tells them apart.
        labels = [f"{lab} ({r.name})" if lab else r.name for lab, r in zip(labels, runs)]
    return labels


MODEL_LABELS = {1: "LIN (k=1)", 2: "QUAD (k=2)", 3: "CUBIC (k=3)", 4: "QUARTIC (k=4)"}


def model_label(order: int) -> str:
    """The paper's Table 3/4 name of a model: 'LIN (k=1)' … 'QUARTIC (k=4)', 'FULL NN'."""
    return "FULL NN" if order == 0 else MODEL_LABELS.get(order, f"ORDER {order} (k={order})")


def model_kind(name: str) -> str:
    """A spawned model's name without its spawn epoch: `order1`, `order1/every10`, `child0`, `full`."""
    return name.split("/", 1)[1] if name.startswith("spawn@") else name


def model_display(name: str, order: int) -> str:
    """A model's row label: the paper's name, with what a spawned run adds (`child0`, `every10`)."""
    base = model_kind(name)
    if base in ("full", f"order{order}"):
        return model_label(order)
    if base.startswith(f"order{order}/"):
        return f"{model_label(order)} {base.split('/', 1)[1]}"
    return base


def value_columns(epochs: Sequence[float]) -> list[str]:
    """The Table 3/4 value columns in the paper's order: test_acc_ep10, test_acc_ep80, cos_param_ep10, …"""
    return [f"{m}_{epoch_tag(e)}" for m in METRICS for e in epochs]


@dataclass
class SideBySide:
    """Runs in the Table 3/4 layout, with the epochs actually used and notes on substitutions."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def side_by_side(runs: Sequence[Run], epochs: Sequence[float],
                 settings: Sequence[str] | None = None) -> SideBySide:
    """One row per (run, model): test_acc, cos_param, cos_func at each epoch (nearest earlier if not evaluated).

    The columns epoch_epE say which evaluated epoch stands in for E; a run that never
    reached E shows its last epoch there, and a note says so.
    """
    settings = list(settings) if settings is not None else setting_labels(runs)
    rows, notes = [], []
    for run, setting in zip(runs, settings):
        used = {e: run.nearest_epoch(e) for e in epochs}
        moved = [f"epoch {w:g} shown at epoch {g:g}" for w, g in used.items()
                 if abs(g - w) > EPOCH_TOL]
        if moved:
            ran = f"{run.recipe.train.epochs} epochs" if run.complete else run.status
            notes.append(f"{run.name} ({ran}): {', '.join(moved)}, the nearest earlier "
                         f"evaluation (or the first, for a run that starts later)")
        at = {e: run.at(got) for e, got in used.items()}
        for model in run.models:
            row = {"setting": setting, "run": run.name, "model": model_display(model, run.order_of(model))}
            for metric in METRICS:
                for e in epochs:
                    row[f"{metric}_{epoch_tag(e)}"] = float(at[e].loc[model, metric]) \
                        if model in at[e].index else math.nan
            row |= {f"epoch_{epoch_tag(e)}": used[e] for e in epochs}
            rows.append(row)
        for model, epoch in run.diverged().items():
            notes.append(f"{run.name}: {model} diverged at epoch {epoch:g} (frozen at its last "
                         f"finite parameters from then on)")
    columns = ["setting", "run", "model", *value_columns(epochs),
               *(f"epoch_{epoch_tag(e)}" for e in epochs)]
    return SideBySide(pd.DataFrame(rows, columns=columns), notes)


def compare(paths: Sequence[str | Path], epochs: str = "10,80") -> SideBySide:
    """`taylorcli compare`: read the run directories and lay them out side by side."""
    wanted = parse_epochs(epochs)
    if not paths:
        raise ReportError("RUN_DIR: expected at least one run directory")
    from .merge import merge_runs

    runs, merged = merge_runs([load_run(p) for p in paths])
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name under different parents
        runs = [Run(r.path, str(r.path), r.recipe, r.metrics, r.layers, r.parts) for r in runs]
    result = side_by_side(runs, wanted)
    result.notes = merged + [f"{r.name}: {r.status}" for r in runs if not r.complete] + result.notes
    return result


# ---- rendering: one DataFrame to Markdown, CSV or a rich table ----

def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value)).lower()
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if column == "params" else str(int(value))
    if isinstance(value, (float, np.floating)):
        if "epoch" in column or column in ("lr", "grad_clip", "batch"):
            return f"{value:g}"
        return f"{value:+.4f}" if column.endswith("diff") else f"{value:.4f}"
    return str(value)


def _numeric(table: pd.DataFrame, column: str) -> bool:
    return pd.api.types.is_numeric_dtype(table[column]) and not pd.api.types.is_bool_dtype(
        table[column])


def format_cells(table: pd.DataFrame) -> list[list[str]]:
    """Every cell as display text: 4 decimals for accuracies and cosines, '—' where empty."""
    return [[_cell(c, v) for c, v in zip(table.columns, row)]
            for row in table.astype(object).itertuples(index=False)]


def _esc(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe inside a cell would end it


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table, numbers right-aligned."""
    head = "| " + " | ".join(_esc(c) for c in table.columns) + " |"
    rule = "| " + " | ".join("---:" if _numeric(table, c) else "---" for c in table.columns) + " |"
    body = ["| " + " | ".join(_esc(x) for x in row) + " |" for row in format_cells(table)]
    return "\n".join([head, rule, *body]) + "\n"


def to_csv(table: pd.DataFrame) -> str:
    """CSV with the run's own precision (metrics.csv is written with 8 significant digits)."""
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.8g")
    return buf.getvalue()


def _short_header(column: str) -> str:
    # Terminal headers only: files keep the full column names that scripts rely on.
    if column.endswith("_paper"):
        return "paper"
    for long, short in (("test_acc_", "acc "), ("cos_param_", "cos_p "), ("cos_func_", "cos_f "),
                        ("epoch_ep", "epoch@")):
        column = column.replace(long, short)
    return column.replace("_", " ")


def to_rich(table: pd.DataFrame, title: str) -> RichTable:
    """The same table for the terminal (short headers, numbers never wrapped)."""
    out = RichTable(title=title, title_justify="left")
    for c in table.columns:
        numeric = _numeric(table, c)
        out.add_column(_short_header(c), justify="right" if numeric else "left", no_wrap=numeric)
    for row in format_cells(table):
        out.add_row(*row)
    return out


def comparison_text(result: SideBySide, fmt: str) -> str:
    """The comparison as a Markdown document (table and notes) or as CSV (table only)."""
    if check_format(fmt) == "csv":
        return to_csv(result.table)
    notes = "".join(f"- {n}\n" for n in result.notes)
    return to_markdown(result.table) + (f"\nNotes:\n\n{notes}" if notes else "")


def write_text(path: str | Path, text: str) -> Path:
    """Write a file atomically, or raise ReportError naming --out."""
    path = Path(path)
    try:
        write_atomic(path, text.encode())
    except OSError as e:
        raise ReportError(f"--out {path}: cannot write there ({e.strerror or e})") from None
    return path
