"""Theorem 1 measured: runs that differ only in width, and how far each order's model strays.

Bai et al. (Section 6, Appendix A) bound the distance between a wide network trained by gradient
flow and its order-k Taylorized model, over a fixed time horizon, by O(m^(-k/2)) in the width m
(for k = 1, Lee et al.'s m^(-1/2)). For each group of runs whose recipes are equal but for
`model.width`, the table has, per order and width, the largest function-space distance over the
run (metrics.csv's func_dist: the RMS of the test-logit difference from the full network), and
per order the slope of the least-squares line through (log width, log max distance), beside
the bound's slope −k/2.
"""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from ..metrics import fit_slope
from ..recipe import setting_key
from ..names import is_child
from ..run.reading import Run

COLUMNS = ["group", "order", "width", "max_func_dist", "slope", "bound_slope"]
# Besides the storage keys (recipe.STORAGE_KEYS), what may differ within a group.
IGNORED = ("model.width", "name")


def width_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """Groups of two or more runs of distinct widths whose recipes are otherwise equal."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.metrics["func_dist"].notna().sum() == 0:
            continue  # runs of taylorcli 0.1, or a subset run without the full network
        groups.setdefault(setting_key(run.config, IGNORED), []).append(run)
    out = []
    for group in groups.values():
        widths = [r.config.model.width for r in group]
        if len(set(widths)) >= 2 and len(set(widths)) == len(widths):
            out.append(sorted(group, key=lambda r: r.config.model.width))
    return out


def group_name(group: Sequence[Run]) -> str:
    """A group's label: its recipe name and the widths it spans."""
    widths = [r.config.model.width for r in group]
    return f"{group[0].config.name} (width {min(widths)}..{max(widths)})"


def scaling_table(group: Sequence[Run]) -> pd.DataFrame:
    """Per order and width the run's largest func_dist; per order the fitted log-log slope."""
    name = group_name(group)
    rows = []
    for run in group:
        m = run.metrics
        for order in sorted(o for o in m["order"].unique() if o > 0):
            dist = m.loc[(m["order"] == order) & ~m["model"].astype(str).map(is_child),
                         "func_dist"]
            rows.append({"group": name, "order": int(order), "width": run.config.model.width,
                         "max_func_dist": float(dist.max()) if len(dist) else math.nan})
    table = pd.DataFrame(rows, columns=COLUMNS[:4])
    slopes = {k: fit_slope(g["width"], g["max_func_dist"]) for k, g in table.groupby("order")}
    table["slope"] = table["order"].map(slopes)
    table["bound_slope"] = -table["order"] / 2
    return table[COLUMNS]


def theorem1_tables(runs: Sequence[Run]) -> pd.DataFrame:
    """Every width group's scaling table, stacked (empty when no group is found)."""
    tables = [scaling_table(g) for g in width_groups(runs)]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=COLUMNS)
