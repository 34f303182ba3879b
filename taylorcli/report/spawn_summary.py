"""The summary of a spawn sweep: final test accuracy against spawn epoch, and the children.

From the spawned runs in a sweep's folder (OUT/atE, written by `taylorcli spawn`): spawn.csv
(every model's final test accuracy, the parent's same-order model beside it), children.csv
(the children's mean barrier and distances at the final evaluation), spawn.md and spawn.png
(Fort et al. Figure 8 and its order-2 variant). Only runs of the sweep's own settings count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import RunDirError
from ..files import write_owned
from ..names import model_kind, order_name
from ..recipe import sweep_settings
from ..run.directory import RunDir
from ..run.reading import Run, load_run
from .tables import to_csv, to_markdown

SUMMARY_COLUMNS = ["spawn_epoch", "model", "order", "epoch", "test_acc", "test_err",
                   "parent_test_acc", "diverged"]
CHILDREN_COLUMNS = ["spawn_epoch", "epoch", "pairs", "barrier", "function_distance",
                    "relu_distance"]


@dataclass
class SpawnSummary:
    """The sweep's tables and the files written, with notes on incomplete or foreign runs."""

    summary: pd.DataFrame | None = None
    children: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def summary_rows(parent: Run, run: Run) -> list[dict]:
    """Final test accuracy of every model of one spawned run, with the parent's beside it."""
    final, parent_final = run.final(), parent.final()
    rows = []
    for model, row in final.iterrows():
        kind = model_kind(model)
        twin = order_name(int(row["order"]))
        rows.append({
            "spawn_epoch": run.config.spawn.epoch, "model": kind, "order": int(row["order"]),
            "epoch": float(row["epoch"]), "test_acc": float(row["test_acc"]),
            "test_err": 1 - float(row["test_acc"]),
            # The parent's own order-k model is the spawn at epoch 0 trained from scratch.
            "parent_test_acc": float(parent_final.loc[twin, "test_acc"])
            if twin in parent_final.index else np.nan,
            "diverged": bool(str(row["diverged"]).lower() == "true"),
        })
    return rows


def children_rows(run: Run) -> list[dict]:
    """The children's mean barrier and distances at the spawned run's final evaluation."""
    path = run.path / "children.csv"
    if not path.is_file():
        return []
    table = pd.read_csv(path)
    last = table[np.isclose(table["epoch"], table["epoch"].max())]
    return [{"spawn_epoch": run.config.spawn.epoch, "epoch": float(last["epoch"].iloc[0]),
             "pairs": len(last), **{c: float(last[c].mean()) for c in CHILDREN_COLUMNS[3:]}}]


def summarize(parent_dir: str | Path, out: str | Path) -> SpawnSummary:
    """spawn.csv, spawn.md and spawn.png in `out` from the sweep's spawned runs found there."""
    result = SpawnSummary()
    out = Path(out)
    folder = RunDir(out)
    settings = folder.read_info().get("sweep")
    if folder.read_info().get("kind") != "sweep":
        raise RunDirError(f"{out}: not a spawn sweep's folder (no run.json of kind sweep)")
    parent = load_run(parent_dir)
    runs = []
    for path in sorted(out.glob("at*")):
        if not (path / "metrics.csv").is_file():
            continue
        try:
            run = load_run(path)
        except RunDirError as e:
            result.notes.append(f"{path}: skipped ({e})")
            continue
        if settings and sweep_settings(run.config) != settings:
            result.notes.append(f"{path}: skipped, spawned with other settings than this "
                                f"sweep's ({', '.join(f'{k} {v}' for k, v in settings.items() if k != 'parent')})")
            continue
        runs.append(run)
    runs.sort(key=lambda r: r.config.spawn.epoch)
    for r in runs:
        if not r.complete:
            result.notes.append(f"{r.path}: {r.status}; its row shows the latest evaluation")
    summary = pd.DataFrame([row for r in runs for row in summary_rows(parent, r)],
                           columns=SUMMARY_COLUMNS)
    children = pd.DataFrame([row for r in runs for row in children_rows(r)],
                            columns=CHILDREN_COLUMNS)
    result.summary, result.children = summary, children
    write_owned(out / "spawn.csv", to_csv(summary).encode())
    result.files.append(out / "spawn.csv")
    if not children.empty:
        write_owned(out / "children.csv", to_csv(children).encode())
        result.files.append(out / "children.csv")
    write_owned(out / "spawn.md", markdown(parent, summary, children).encode())
    result.files.append(out / "spawn.md")
    if not summary.empty:
        from .figures import spawn_figure

        result.files.append(spawn_figure(parent, summary, children, out / "spawn.png"))
    return result


def accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Final test accuracy: one row per spawn epoch, one column per model kind."""
    if summary.empty:
        return pd.DataFrame()
    wide = summary.pivot_table(index="spawn_epoch", columns="model", values="test_acc",
                               sort=False)
    return wide.reset_index().rename(columns={"spawn_epoch": "spawn epoch"})


def markdown(parent: Run, summary: pd.DataFrame, children: pd.DataFrame) -> str:
    """The sweep as Markdown: accuracies against spawn epoch, the parent's, the children's metrics."""
    parts = [f"# Spawned from {parent.path}\n",
             f"Recipe `{parent.config.name}`; each row trains models spawned at that epoch "
             f"to the parent's last epoch ({parent.config.train.epochs}).\n",
             "## Final test accuracy against spawn epoch\n"]
    if not summary.empty:
        parts.append(to_markdown(accuracy_table(summary)))
        final = parent.final()["test_acc"]
        parent_row = pd.DataFrame([{"model": m, "final test_acc": float(final[m])}
                                   for m in parent.models])
        parts += ["\n## The parent run\n", to_markdown(parent_row)]
    if not children.empty:
        parts += ["\n## Children at the final evaluation (mean over pairs)\n",
                  to_markdown(children)]
    return "\n".join(parts)
