"""Runs whose recipes differ only in `seed` are repeats of one setting: averaged, with their spread.

A group of repeats becomes one run for the tables and figures: its metrics are the mean over
the seeds at every (model, evaluation step) all of them reached, with `<metric>_sd` (the sample
standard deviation, ddof 1) beside each metric and `seeds` (how many); its layer movement is the
mean likewise. Tables show mean ± sd and the number of seeds; figures draw the mean with a band.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..recipe import setting_key
from ..run.reading import Run

# Averaged over seeds; the other columns (order, epoch, lr) are the same in every repeat.
AVERAGED = ("train_loss", "train_acc", "test_loss", "test_acc", "cos_param", "cos_func",
            "func_dist", "param_dist")
# Besides the storage keys (recipe.STORAGE_KEYS): the seed itself, the run's name, and a
# spawned run's parent (each seed's spawned runs come from that seed's own parent run).
NOT_A_SETTING = ("seed", "name", "spawn.parent")


def repeat_key(run: Run) -> str:
    """What repeats of one setting have in common: every recipe key but the seed and storage."""
    return setting_key(run.config, NOT_A_SETTING)


def mean_and_sd(tables: Sequence[pd.DataFrame], keys: list[str], columns: Sequence[str]
                ) -> pd.DataFrame:
    """Per key: each column's mean and sample sd over the tables that all have that key."""
    stacked = pd.concat([t.assign(_repeat=i) for i, t in enumerate(tables)], ignore_index=True)
    shared = stacked.groupby(keys)["_repeat"].nunique()
    shared = shared[shared == len(tables)].index
    stacked = stacked.set_index(keys).loc[shared].reset_index()
    grouped = stacked.groupby(keys, sort=False)
    out = grouped.first().reset_index()[keys + [c for c in stacked.columns
                                                if c not in keys and c not in columns
                                                and c != "_repeat"]]
    means = grouped[list(columns)].mean().reset_index()
    sds = grouped[list(columns)].std(ddof=1).reset_index()
    out = out.merge(means, on=keys).merge(sds.rename(columns={c: f"{c}_sd" for c in columns}),
                                         on=keys)
    out["seeds"] = len(tables)
    return out


def combine(runs: Sequence[Run]) -> Run:
    """One run standing for repeats of a setting: their mean, with sd columns and `seeds`."""
    metrics_cols = [c for c in AVERAGED if c in runs[0].metrics.columns]
    metrics = mean_and_sd([r.metrics for r in runs], ["model", "step"], metrics_cols)
    # metrics.csv flags a model diverged; in the average, diverged in any seed
    flags = pd.concat([r.metrics[["model", "step", "diverged"]] for r in runs])
    flags["diverged"] = flags["diverged"].astype(str).str.lower() == "true"
    flags = flags.groupby(["model", "step"])["diverged"].any().reset_index()
    metrics = metrics.drop(columns="diverged").merge(flags, on=["model", "step"], how="left")
    metrics = metrics.sort_values(["step", "order"], kind="stable").reset_index(drop=True)
    layers = None
    if all(r.layers is not None for r in runs):
        layers = mean_and_sd([r.layers for r in runs], ["model", "epoch", "layer"],
                             ["distance", "relative_distance"])
    seeds = tuple(r.config.seed for r in runs)
    first = runs[0]
    return Run(first.path, "+".join(r.name for r in runs), first.config, metrics, layers,
               parts=first.parts, info=first.info,
               notes=[n for r in runs for n in r.notes], seeds=seeds,
               members=tuple(r.path for r in runs))


def group_repeats(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """Repeats (recipes equal but for the seed) replaced by one averaged run; notes on each."""
    groups: dict[str, list[Run]] = {}
    order: list[str] = []
    for run in runs:
        key = repeat_key(run)
        if key not in groups:
            order.append(key)
        groups.setdefault(key, []).append(run)
    out, notes = [], []
    for key in order:
        for group in _by_name_if_seeds_repeat(groups[key]):
            _add_group(group, out, notes)
    return out, notes


def _by_name_if_seeds_repeat(runs: list[Run]) -> list[list[Run]]:
    """The group, or, when a seed appears twice in it, its runs split by recipe name: two
    recipes of one setting (cnnthick and table3_cnnthick) are two settings of the paper, each
    repeated over its own seeds."""
    seeds = [r.config.seed for r in runs]
    if len(set(seeds)) == len(seeds):
        return [runs]
    by_name: dict[str, list[Run]] = {}
    for r in runs:
        by_name.setdefault(r.config.name, []).append(r)
    return list(by_name.values())


def _add_group(group: list[Run], out: list[Run], notes: list[str]) -> None:
    """One group of runs of a setting into `out`: averaged when they are repeats."""
    group = sorted(group, key=lambda r: r.config.seed)
    if len(group) == 1 or len({r.config.seed for r in group}) < len(group):
        out += group  # one run, or the same seed twice: not repeats
        return
    combined = combine(group)
    out.append(combined)
    steps = [set(r.metrics["step"]) for r in group]
    if len(set.intersection(*steps)) < max(len(s) for s in steps):
        notes.append(f"{combined.name}: averaged over {len(group)} seeds at the "
                     f"{len(set.intersection(*steps))} evaluation points all of them reached")

