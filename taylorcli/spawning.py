"""`taylorcli spawn`: one spawned run per spawn epoch, then the sweep's table and figure.

Each spawned run is an ordinary run directory (OUT/atE, resumable with the same command, or
with `taylorcli train OUT/atE/recipe.yaml --out OUT/atE`). The summary (Fort et al. Figure 8
and its order-2 variant) puts every model's final test accuracy against the spawn epoch, next
to the parent's, and the children's barrier and distances against the spawn epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .compare import FULL, Run, load_run, model_kind, to_csv, to_markdown
from .recipe import RecipeError
from .runs import write_atomic
from .spawn import parent_recipe, spawn_recipe

SUMMARY_COLUMNS = ["spawn_epoch", "model", "order", "epoch", "test_acc", "test_err",
                   "parent_test_acc", "diverged"]
CHILDREN_COLUMNS = ["spawn_epoch", "epoch", "pairs", "barrier", "function_distance",
                    "relu_distance"]


@dataclass
class SpawnSweep:
    """What `taylorcli spawn` made: the spawned runs, the summary tables and the files written."""

    runs: list[Path] = field(default_factory=list)
    summary: pd.DataFrame | None = None
    children: pd.DataFrame | None = None
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_list(text: str, flag: str, kind=float, minimum: float = 0) -> list:
    """'0,2.5,5' as a list of numbers >= minimum, or one line naming the flag."""
    out = []
    noun = "integers" if kind is int else "numbers"
    for part in (p.strip() for p in text.split(",")):
        try:
            value = kind(part)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise RecipeError(f"{flag} {text}: expected comma-separated {noun} >= {minimum:g}, "
                              f"got {part!r}")
        out.append(value)
    return sorted(set(out))


def reexpansion(text: str | None) -> tuple[list[int], list[int]]:
    """`--reexpand-every 1,10,inf,doubling:10` as (every-K intervals, doubling schedules)."""
    if not text:
        return [], []
    every, doubling = [], []
    for part in (p.strip() for p in text.split(",")):
        kind, _, k = part.rpartition(":")
        if kind not in ("", "doubling") or not k.isdigit() and k.lower() != "inf":
            raise RecipeError(f"--reexpand-every {text}: expected steps K >= 1, inf, or "
                              f"doubling:K (intervals K, 2K, 4K, ...), got {part!r}")
        if k.lower() == "inf":
            if kind:
                raise RecipeError(f"--reexpand-every {text}: doubling needs a first interval "
                                  f"K >= 1, got {part!r}")
            continue  # never re-expanding is the plain spawned Taylor model, always trained
        if int(k) < 1:
            raise RecipeError(f"--reexpand-every {text}: expected K >= 1, got {part!r}")
        (doubling if kind else every).append(int(k))
    return sorted(set(every)), sorted(set(doubling))


def spawn(parent_dir: str | Path, at: list[float], orders: list[int], *, children: int = 0,
          reexpand: str | None = None, overrides=(), out: str | Path | None = None,
          progress=None, resume: bool = True, source: str = "spawn") -> SpawnSweep:
    """Spawn from `parent_dir` at each epoch in `at`, train each spawned run, then summarize."""
    from .trainer import train

    parent = parent_recipe(parent_dir)
    every, doubling = reexpansion(reexpand)
    out = Path(out) if out is not None else Path(parent_dir) / "spawn"
    # Every recipe is checked before anything trains: a typo in the last epoch fails at once.
    recipes = [spawn_recipe(parent, parent_dir, e, orders, children=children,
                            reexpand_every=every, reexpand_doubling=doubling,
                            overrides=overrides) for e in at]
    sweep = SpawnSweep()
    for recipe in recipes:
        run = out / f"at{recipe.spawn.epoch:g}"
        train(recipe, str(run), progress, resume=resume, source=source)
        sweep.runs.append(run)
    return summarize(parent_dir, out, sweep)


def summary_rows(parent: Run, run: Run) -> list[dict]:
    """Final test accuracy of every model of one spawned run, with the parent's beside it."""
    final, parent_final = run.final(), parent.final()
    rows = []
    for model, row in final.iterrows():
        kind = model_kind(model)
        twin = FULL if row["order"] == 0 else f"order{int(row['order'])}"
        rows.append({
            "spawn_epoch": run.recipe.spawn.epoch, "model": kind, "order": int(row["order"]),
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
    return [{"spawn_epoch": run.recipe.spawn.epoch, "epoch": float(last["epoch"].iloc[0]),
             "pairs": len(last), **{c: float(last[c].mean()) for c in CHILDREN_COLUMNS[3:]}}]


def summarize(parent_dir: str | Path, out: str | Path, sweep: SpawnSweep | None = None
              ) -> SpawnSweep:
    """spawn.csv, spawn.md and spawn.png in `out` from every spawned run found there."""
    sweep = sweep or SpawnSweep()
    out = Path(out)
    parent = load_run(parent_dir)
    runs = [load_run(p) for p in sorted(out.glob("at*")) if (p / "metrics.csv").is_file()]
    runs.sort(key=lambda r: r.recipe.spawn.epoch)
    for r in runs:
        if not r.complete:
            sweep.notes.append(f"{r.path}: {r.status}; its row shows the latest evaluation")
    summary = pd.DataFrame([row for r in runs for row in summary_rows(parent, r)],
                           columns=SUMMARY_COLUMNS)
    children = pd.DataFrame([row for r in runs for row in children_rows(r)],
                            columns=CHILDREN_COLUMNS)
    sweep.summary, sweep.children = summary, children
    write_atomic(out / "spawn.csv", to_csv(summary).encode())
    sweep.files.append(out / "spawn.csv")
    if not children.empty:
        write_atomic(out / "children.csv",
                     to_csv(children).encode())
        sweep.files.append(out / "children.csv")
    write_atomic(out / "spawn.md", markdown(parent, summary, children).encode())
    sweep.files.append(out / "spawn.md")
    if not summary.empty:
        from .spawn_figure import spawn_figure

        sweep.files.append(spawn_figure(parent, summary, children, out / "spawn.png"))
    return sweep


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
             f"Recipe `{parent.recipe.name}`; each row trains models spawned at that epoch "
             f"to the parent's last epoch ({parent.recipe.train.epochs}).\n",
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
