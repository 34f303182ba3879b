"""Theorem 1 measured: runs that differ only in width (and seed), and how far each order strays.

Bai et al. (Appendix A) bound, for a two-layer network trained by gradient flow on the squared
loss over a fixed time, the distance between the network and its order-k Taylorized model in
weight space and on the outputs by a constant times m^(-k/2) in the width m (k = 1: Lee et
al.'s m^(-1/2)). A bound is consistent with any decay at least that fast; a slope steeper than
−k/2 does not confirm it and a shallower one contradicts it only asymptotically.

For each group of runs whose recipes are equal but for `model.width` and `seed`, per distance,
order, width and seed, the largest value over the run of
- func_dist: the RMS over the test set and the outputs of f_k − f (metrics.csv), and
- param_dist: ‖θ_k − θ‖ over all parameters (metrics.csv; runs from before it have none);
then, per seed, the least-squares slope of log(max distance) against log(width) over the widths
that seed has, and over the seeds the mean slope with a two-sided 95% Student t interval (the
per-seed slopes as the sample). The reading compares that interval with −k/2: "steeper than
−k/2" when all of it is below, "shallower than −k/2" when all of it is above, "consistent with
−k/2" when it contains it, "one seed: no interval" otherwise.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..metrics import fit_slope
from ..names import is_child
from ..recipe import setting_key
from ..run.reading import Run
from .intervals import one_sample

DISTANCES = ("func_dist", "param_dist")
COLUMNS = ["group", "distance", "width", "seeds"]  # then orderK, orderK_sd per order
SLOPE_COLUMNS = ["group", "distance", "order", "widths", "seeds", "slope", "slope_sd",
                 "slope_low", "slope_high", "bound_slope", "reading"]
# Besides the storage keys (recipe.STORAGE_KEYS), what may differ within a group.
IGNORED = ("model.width", "name", "seed", "data.mean", "data.std")


def width_groups(runs: Sequence[Run]) -> list[list[Run]]:
    """Groups of runs spanning two or more widths whose recipes are otherwise equal (any seeds)."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        if run.seeds or run.config.spawn.parent is not None:
            continue  # averaged repeats (the seeds are read one by one) and spawned runs
        if "func_dist" not in run.metrics or run.metrics["func_dist"].notna().sum() == 0:
            continue  # runs of taylorcli 0.1, or a subset run without the full network
        groups.setdefault(setting_key(run.config, IGNORED), []).append(run)
    out = []
    for group in groups.values():
        widths = {r.config.model.width for r in group}
        pairs = {(r.config.model.width, r.config.seed) for r in group}
        if len(widths) >= 2 and len(pairs) == len(group):  # no width and seed twice
            out.append(sorted(group, key=lambda r: (r.config.model.width, r.config.seed)))
    return out


def group_name(group: Sequence[Run]) -> str:
    """A group's label: its recipe name and the widths it spans."""
    widths = [r.config.model.width for r in group]
    return f"{group[0].config.name} (width {min(widths)}..{max(widths)})"


def max_distances(group: Sequence[Run]) -> pd.DataFrame:
    """One row per run, order and distance: the largest value over the run."""
    rows = []
    for run in group:
        m = run.metrics
        taylor = m[(m["order"] > 0) & ~m["model"].astype(str).map(is_child)]
        for distance in DISTANCES:
            if distance not in m or m[distance].notna().sum() == 0:
                continue
            for order, values in taylor.groupby("order"):
                v = values[distance].astype(float)
                rows.append({"distance": distance, "order": int(order),
                             "width": run.config.model.width, "seed": run.config.seed,
                             "max": float(v.max()) if v.notna().any() else math.nan})
    return pd.DataFrame(rows, columns=["distance", "order", "width", "seed", "max"])


def t_interval(values: Sequence[float]) -> tuple[float, float, float, float]:
    """(mean, sample sd, low, high) with a two-sided 95% t interval; NaNs below two values."""
    iv = one_sample(values)
    return iv.mean, iv.sd, iv.low, iv.high


def reading(low: float, high: float, bound: float) -> str:
    """What a slope's interval says against the bound's slope."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "one seed: no interval"
    if high < bound:
        return f"steeper than {bound:g}"
    if low > bound:
        return f"shallower than {bound:g}"
    return f"consistent with {bound:g}"


def per_seed_slopes(maxima: pd.DataFrame) -> pd.DataFrame:
    """Per distance, order and seed: the log-log slope over that seed's widths."""
    rows = []
    for (distance, order, seed), g in maxima.groupby(["distance", "order", "seed"]):
        if g["width"].nunique() >= 2:
            rows.append({"distance": distance, "order": int(order), "seed": int(seed),
                         "widths": int(g["width"].nunique()),
                         "slope": fit_slope(g["width"], g["max"])})
    return pd.DataFrame(rows, columns=["distance", "order", "seed", "widths", "slope"])


def seed_slopes(runs: Sequence[Run]) -> list[tuple[str, pd.DataFrame]]:
    """Per width group: its label and the per-seed slopes (per_seed_slopes)."""
    return [(group_name(g), per_seed_slopes(max_distances(g))) for g in width_groups(runs)]


def scaling_tables(group: Sequence[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(distances: per distance and width, each order's largest distance as mean ± sd over the
    seeds, columns orderK and orderK_sd; slopes with their intervals)."""
    name = group_name(group)
    maxima = max_distances(group)
    rows = []
    for (distance, width), g in maxima.groupby(["distance", "width"]):
        row = {"group": name, "distance": distance, "width": int(width),
               "seeds": int(g["seed"].nunique())}
        for order, v in g.groupby("order"):
            row[f"order{order}"] = float(v["max"].mean())
            row[f"order{order}_sd"] = float(v["max"].std(ddof=1)) if len(v) > 1 else math.nan
        rows.append(row)
    dist = pd.DataFrame(rows)
    rows = []
    for (distance, order), g in per_seed_slopes(maxima).groupby(["distance", "order"]):
        mean, sd, low, high = t_interval(g["slope"].tolist())
        rows.append({"group": name, "distance": distance, "order": int(order),
                     "widths": int(g["widths"].max()), "seeds": len(g), "slope": mean,
                     "slope_sd": sd, "slope_low": low, "slope_high": high,
                     "bound_slope": -order / 2, "reading": reading(low, high, -order / 2)})
    return dist, pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def theorem1_tables(runs: Sequence[Run]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every width group's distance and slope tables, stacked (empty when no group is found)."""
    parts = [scaling_tables(g) for g in width_groups(runs)]
    if not parts:
        return pd.DataFrame(columns=COLUMNS), pd.DataFrame(columns=SLOPE_COLUMNS)
    return (pd.concat([p[0] for p in parts], ignore_index=True),
            pd.concat([p[1] for p in parts], ignore_index=True))


def for_people(distances: pd.DataFrame) -> pd.DataFrame:
    """The distance table with each orderK as 'x ± sd' in 3 significant digits: the distances
    span six decades, where a fixed number of decimals shows 0.0000."""
    out = distances.copy()
    for c in [c for c in distances.columns if c.startswith("order") and not c.endswith("_sd")]:
        sd = distances.get(f"{c}_sd", pd.Series(math.nan, index=distances.index))
        out[c] = [("—" if not np.isfinite(v) else f"{v:.3g}" if not np.isfinite(e)
                   else f"{v:.3g} ± {e:.2g}") for v, e in zip(distances[c], sd)]
    return out.drop(columns=[c for c in distances.columns if c.endswith("_sd")])
