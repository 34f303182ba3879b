"""Runs side by side in the layout of the paper's Tables 3 and 4, labelled by what differs.

`side_by_side` lays runs (read back by `run.directory.load_run`) out per setting and model:
test accuracy, cos_param and cos_func at a few epochs. `compare` is `taylorcli compare`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import OwnershipError, ReportError
from ..files import write_output_file
from ..recipe import STORAGE_KEYS, Recipe, recipe_to_flat
from ..names import model_kind, parse_model_name
from ..run.reading import Run, load_run
from ..run.tables import EPOCH_TOL
from .tables import check_format, to_csv, to_markdown

METRICS = ("test_acc", "cos_param", "cos_func")
# Recipe keys that change how a run is stored or evaluated, not what it learns: never a label.
NOT_A_SETTING = ("name", "eval.", *STORAGE_KEYS)


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
    diffs = recipe_differences([r.config for r in runs])
    labels = ["; ".join(f"{k}={v}" for k, v in d.items()) for d in diffs]
    if len(runs) == 1 or len(set(labels)) < len(labels) or not all(labels):
        # Same settings (repeats) or one run: the run's own name is what tells them apart.
        labels = [f"{lab} ({r.name})" if lab else r.name for lab, r in zip(labels, runs)]
    return labels


MODEL_LABELS = {1: "LIN (k=1)", 2: "QUAD (k=2)", 3: "CUBIC (k=3)", 4: "QUARTIC (k=4)"}


def model_label(order: int) -> str:
    """The paper's Table 3/4 name of a model: 'LIN (k=1)' … 'QUARTIC (k=4)', 'FULL NN'."""
    return "FULL NN" if order == 0 else MODEL_LABELS.get(order, f"ORDER {order} (k={order})")


def model_display(name: str, order: int) -> str:
    """A model's row label: the paper's name, with what a spawned run adds (`child0`, `every10`)."""
    parsed = parse_model_name(name)
    if parsed is None or parsed.child is not None:
        return model_kind(name)
    if parsed.reexpand is not None:
        return f"{model_label(parsed.order)} {parsed.reexpand[0]}{parsed.reexpand[1]}"
    return model_label(parsed.order)


def value_columns(epochs: Sequence[float]) -> list[str]:
    """The Table 3/4 value columns in the paper's order: test_acc_ep10, test_acc_ep80, cos_param_ep10, …"""
    return [f"{m}_{epoch_tag(e)}" for m in METRICS for e in epochs]


@dataclass
class SideBySide:
    """Runs in the Table 3/4 layout, with the epochs actually used and notes on substitutions."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    epochs: tuple[float, ...] = ()

    @property
    def epochs_text(self) -> str:
        """The epochs shown, as `--epochs` takes them: '10,80'."""
        return ",".join(f"{e:g}" for e in self.epochs)


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
            ran = f"{run.config.train.epochs} epochs" if run.complete else run.status
            notes.append(f"{run.name} ({ran}): {', '.join(moved)}, the nearest earlier "
                         f"evaluation (or the first, for a run that starts later)")
        at = {e: run.at(got) for e, got in used.items()}
        for model in run.models:
            row = {"setting": setting, "run": run.name, "model": model_display(model, run.order_of(model))}
            for metric in METRICS:
                for e in epochs:
                    for col, tag in ((metric, ""), (f"{metric}_sd", "_sd")):
                        if tag and not run.seeds:
                            continue
                        row[f"{metric}_{epoch_tag(e)}{tag}"] = float(at[e].loc[model, col]) \
                            if model in at[e].index else math.nan
            row |= {f"epoch_{epoch_tag(e)}": used[e] for e in epochs}
            if run.seeds:
                row["seeds"] = len(run.seeds)
            rows.append(row)
        for model, epoch in run.diverged().items():
            notes.append(f"{run.name}: {model} diverged at epoch {epoch:g} (frozen at its last "
                         f"finite parameters from then on)")
    spread = any(r.seeds for r in runs)
    columns = ["setting", "run", "model",
               *(c for v in value_columns(epochs) for c in ((v, f"{v}_sd") if spread else (v,))),
               *(f"epoch_{epoch_tag(e)}" for e in epochs), *(["seeds"] if spread else [])]
    return SideBySide(pd.DataFrame(rows, columns=columns), notes, tuple(epochs))


def default_epochs(runs: Sequence[Run]) -> tuple[float, ...]:
    """The paper table's epochs when every run is one of its settings (Table 3: 10 and 80,
    Table 4: 10 and 100), else epoch 10 and the last epoch evaluated."""
    from .reference import load_paper

    paper = load_paper()
    for key in ("table3", "table4"):
        settings = paper.settings(key)
        if runs and all(r.config.name in settings for r in runs) and paper.epochs(key):
            return paper.epochs(key)
    last = max(r.last_epoch for r in runs)
    return tuple(sorted({min(10.0, last), last}))


def compare(paths: Sequence[str | Path], epochs: str | None = None) -> SideBySide:
    """`taylorcli compare`: read the run directories and lay them out side by side."""
    wanted = parse_epochs(epochs) if epochs is not None else None
    if not paths:
        raise ReportError("RUN_DIR: expected at least one run directory")
    from .merge import merge_runs

    loaded = [load_run(p) for p in paths]
    runs, merged = merge_runs(loaded)
    from .repeats import group_repeats

    runs, repeated = group_repeats(runs)  # the same setting over seeds: mean ± sd
    merged += repeated
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # same folder name under different parents
        for r in runs:
            r.name = str(r.path)
    result = side_by_side(runs, wanted or default_epochs(runs))
    skipped = [note for r in loaded for note in r.notes]
    result.notes = skipped + merged + [f"{r.name}: {r.status}" for r in runs if not r.complete] \
        + result.notes
    return result


MD_SIGNATURE = "<!-- written by taylorcli compare -->\n"


def comparison_text(result: SideBySide, fmt: str) -> str:
    """The comparison as a Markdown document (table and notes) or as CSV (table only)."""
    if check_format(fmt) == "csv":
        return to_csv(result.table)
    notes = "".join(f"- {n}\n" for n in result.notes)
    return MD_SIGNATURE + to_markdown(result.table) + (f"\nNotes:\n\n{notes}" if notes else "")


def write_comparison(path: Path, result: SideBySide, fmt: str) -> Path:
    """`compare --out FILE`: a new file, or one an earlier `compare` wrote (never the user's,
    never a device or a link)."""
    text = comparison_text(result, fmt)
    signature = MD_SIGNATURE if fmt == "md" else text.split("\n", 1)[0].split(",", 2)
    if fmt != "md":  # a CSV is recognised by its first two columns, as compare writes them
        signature = ",".join(signature[:2]) + ","
    try:
        return write_output_file(path, text.encode(), signature.encode())
    except OwnershipError as e:
        raise ReportError(str(e)) from None


