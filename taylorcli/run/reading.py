"""A run read back (`load_run`): its recipe, metrics and layer movement as DataFrames, the object
`report`, `compare` and the Python API work with; and finding runs under a folder."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunDirError
from ..names import FULL, is_model_name
from ..recipe import Recipe, recipe_to_dict
from .directory import ARRAY_FOLDERS, RunDir, read_step_arrays, saved_steps, step_file
from .tables import EPOCH_TOL, LAYERS_COLUMNS, METRICS_COLUMNS, OPTIONAL_METRICS, \
    REQUIRED_METRICS


@dataclass(eq=False)  # eq would compare DataFrames element-wise
class Run:
    """One run directory read back: its recipe, metrics and layer movement as DataFrames.

    `recipe` is the recipe as a plain dict; `config` the same, validated (attribute access).
    `kernels`, `children` and `closed_form` are the analyses' tables (None when not computed),
    `logits(step)` the saved test logits. `notes` says which rows of metrics.csv were skipped.
    A run standing for repeats over seeds (`seeds`) has `<metric>_sd` columns beside its means.
    """

    path: Path
    name: str
    config: Recipe
    metrics: pd.DataFrame
    layers: pd.DataFrame | None
    parts: tuple[Path, ...] = ()  # the subset runs merged into this one (report/merge.py)
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seeds: tuple[int, ...] = ()  # repeats averaged into this one (report/repeats.py)
    members: tuple[Path, ...] = ()  # their run directories

    @property
    def recipe(self) -> dict:
        """The resolved recipe as a nested dict (as in recipe.yaml)."""
        return recipe_to_dict(self.config)

    @cached_property
    def kernels(self) -> pd.DataFrame | None:
        """kernels.csv (eval.kernel_n), or None."""
        return _optional_table(self.path / "kernels.csv")

    @cached_property
    def children(self) -> pd.DataFrame | None:
        """children.csv (a spawned run with two or more children), or None."""
        return _optional_table(self.path / "children.csv")

    @cached_property
    def closed_form(self) -> pd.DataFrame | None:
        """closed_form.csv (eval.closed_form), or None."""
        return _optional_table(self.path / "closed_form.csv")

    def logits(self, step: int) -> dict[str, np.ndarray]:
        """Every model's test logits saved at `step` (logits/stepNNNNNNNN.npz), by model name."""
        folders = [p / "logits" for p in self.parts] or [self.path / "logits"]
        out: dict[str, np.ndarray] = {}
        for folder in folders:
            if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
                raise RunDirError(f"{self.path}: logits(step): expected an integer step, got "
                                  f"{step!r} (saved at: "
                                  f"{', '.join(map(str, saved_steps(folder))) or 'none'})")
            if not (folder / step_file(step)).is_file():
                raise RunDirError(f"{folder}: no logits saved at step {step} (saved at: "
                                  f"{', '.join(map(str, saved_steps(folder))) or 'none'})")
            out |= {k: v for k, v in read_step_arrays(folder, step).items() if k not in out}
        return out

    @property
    def parameters(self) -> int | None:
        """Scalar parameters per model, as recorded when the run started (None if not recorded)."""
        value = self.info.get("parameters")
        return int(value) if isinstance(value, (int, float)) else None

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
        return self.last_epoch >= self.config.train.epochs - EPOCH_TOL

    @property
    def status(self) -> str:
        """'complete', or 'incomplete (epoch E of N)'."""
        if self.complete:
            return "complete"
        return f"incomplete (epoch {self.last_epoch:g} of {self.config.train.epochs})"

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


def _optional_table(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"model": str, "layer": str})
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: not a readable CSV table ({type(e).__name__})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise RunDirError(f"{path}: missing columns {', '.join(missing)}; expected "
                          f"{', '.join(columns)}")
    return table


def clean_metrics(table: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, list[str]]:
    """metrics.csv without rows a run cannot have written (bad numbers, unknown models,
    duplicates), and a note for each kind dropped."""
    notes = []
    table = table.copy()
    for column in ("order", "epoch", "step"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    for column in OPTIONAL_METRICS:  # what older versions did not write
        if column not in table.columns:
            table[column] = np.nan
    for column in [c for c in METRICS_COLUMNS[4:] if c != "diverged"]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    bad_numbers = table[["order", "epoch", "step"]].isna().any(axis=1)
    bad_names = ~table["model"].fillna("").astype(str).map(lambda m: is_model_name(m))
    duplicated = table.duplicated(subset=["model", "step"], keep="first") & ~bad_numbers
    for mask, why in ((bad_numbers, "a non-numeric order, epoch or step"),
                      (bad_names & ~bad_numbers, "an unknown model name"),
                      (duplicated & ~bad_names, "a duplicate of an earlier (model, step) row")):
        if mask.any():
            lines = ", ".join(str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:5])
            notes.append(f"{path}: skipped {int(mask.sum())} row(s) with {why} (line {lines}"
                         f"{', ...' if mask.sum() > 5 else ''})")
    keep = ~(bad_numbers | bad_names | duplicated)
    table = table[keep].reset_index(drop=True)
    table["order"] = table["order"].astype(int)
    table["step"] = table["step"].astype(int)
    return table, notes


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run directory (recipe.yaml + metrics.csv, layers.csv if there), or raise RunDirError."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    for needed in ("recipe.yaml", "metrics.csv"):
        if not (path / needed).is_file():
            raise RunDirError(f"{path}: not a run directory (no {needed}); expected the --out "
                              f"folder of a `taylorcli train` run")
    run_dir = RunDir(path)
    recipe = run_dir.read_recipe()
    metrics, notes = clean_metrics(_read_table(path / "metrics.csv", REQUIRED_METRICS),
                                   path / "metrics.csv")
    if metrics.empty:
        raise RunDirError(f"{path / 'metrics.csv'}: no rows yet; the run has not reached its "
                          f"first evaluation")
    layers = None
    if (path / "layers.csv").is_file():
        layers = _read_table(path / "layers.csv", LAYERS_COLUMNS)
    return Run(path, name or path.name, recipe, metrics, layers, info=run_dir.read_info(),
               notes=notes)


def find_runs(root: Path, skip: Path | None = None) -> list[Path]:
    """Run directories at or under root (folders with recipe.yaml or metrics.csv), spawned runs
    too; linked folders are followed (reading only), each real folder visited once."""
    found, seen = [], set()
    skipped = skip.resolve() if skip is not None else None
    for folder, subdirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        real = here.resolve()
        if real in seen or real == skipped:  # a link back up the tree, or the report's folder
            subdirs[:] = []
            continue
        seen.add(real)
        if "recipe.yaml" in files or "metrics.csv" in files:
            found.append(here)
        # logits/, params/, kernels/, checkpoints/ and tensorboard/ hold no runs; sweeps do
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in
                            (*ARRAY_FOLDERS, "checkpoints", "tensorboard"))
    return sorted(found)
