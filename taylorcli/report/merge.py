"""Subset runs (`--set models=[...]`) of one recipe, merged as if they had run in lockstep.

A model's trajectory depends only on the recipe's seed (θ0, data order, augmentation) and on
its own optimizer state, never on which other models share the step; so runs that each train
a part of the models can be put back together. What cannot be read off one run is agreement
with the full network: cos_param needs both models' displacements θ − θ0 (saved by subset
runs in params/stepNNNNNNNN.npz) and cos_func both models' test logits (logits/). They are
recomputed here at the evaluation points all the runs share.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd

from ..metrics import cos_func, cosine, func_dist
from ..names import FULL, model_names
from ..recipe import Recipe, replace, setting_key, trains_subset
from ..run.directory import read_step_arrays
from ..run.reading import Run

# Keys that may differ between the parts of one merged run: which models, where the data and
# checkpoints live, how evaluation is batched and when; how models are placed on devices.
NOT_COMPARED = ("models", "eval.")  # and the storage keys (recipe.STORAGE_KEYS)


def merge_key(recipe: Recipe) -> str:
    """What subset runs of one recipe have in common: every setting but `models` and storage."""
    return setting_key(recipe, NOT_COMPARED)


def _steps(run: Run) -> set[int]:
    return {int(s) for s in run.metrics["step"].unique()}


def merge_group(runs: Sequence[Run]) -> tuple[Run | None, list[str]]:
    """One run made of subset runs of one recipe, or None (with notes) when they cannot merge."""
    owner: dict[str, Run] = {}
    notes = []
    for run in runs:
        for model in run.metrics["model"].unique():
            if model in owner:
                notes.append(f"{run.name}: {model} is also in {owner[model].name}; merged "
                             f"from {owner[model].name}")
            else:
                owner[model] = run
    steps = [_steps(r) for r in runs]
    shared = sorted(set.intersection(*steps))
    full = owner.get(FULL)
    usable, missing = [], []
    for step in shared:
        files = [r.path / "params" / f"step{step:08d}.npz" for r in runs] + \
                [r.path / "logits" / f"step{step:08d}.npz" for r in runs]
        (usable if all(f.is_file() for f in files) else missing).append(step)
    names = " + ".join(r.name for r in runs)
    if missing:
        notes.append(f"{names}: no saved params/ or logits/ at step(s) "
                     f"{', '.join(map(str, missing[:5]))}; those evaluations are left out")
    if not usable:
        return None, notes + [f"{names}: no evaluation point with saved parameters and logits "
                              f"in all of them; not merged"]
    dropped = sorted(set.union(*steps) - set(usable))
    if dropped and len(dropped) > len(missing):
        notes.append(f"{names}: merged at the {len(usable)} evaluation points all runs share")
    if full is None:
        notes.append(f"{names}: none of them trains the full network, so cos_param and cos_func "
                     f"stay empty")
    rows = []
    for step in usable:
        if full is not None:  # each run's files read once per step
            disp = {m: a for r in runs for m, a in read_step_arrays(r.path / "params", step).items()
                    if owner.get(m) is r}
            logits = {m: a for r in runs for m, a in read_step_arrays(r.path / "logits", step).items()
                      if owner.get(m) is r}
        for model, run in owner.items():
            row = run.metrics[(run.metrics["model"] == model) & (run.metrics["step"] == step)]
            row = row.iloc[0].to_dict()
            if full is None:
                cp = cf = fd = pd_ = math.nan
            else:
                # As in training: the full network against itself is 1 once it has moved.
                cp = 1.0 if model == FULL and step != 0 else cosine(disp[FULL], disp.get(model))
                cf = cos_func(logits[FULL], logits.get(model))
                fd = func_dist(logits[FULL], logits.get(model))
                pd_ = float(np.linalg.norm(np.asarray(disp[FULL], np.float64)
                                           - np.asarray(disp.get(model), np.float64)))
            rows.append({**row, "cos_param": cp, "cos_func": cf, "func_dist": fd,
                         "param_dist": pd_})
    metrics = pd.DataFrame(rows, columns=runs[0].metrics.columns)
    metrics = metrics.sort_values(["step", "order"], kind="stable").reset_index(drop=True)
    layers = None
    parts = [r.layers[r.layers["model"].isin([m for m, o in owner.items() if o is r])]
             for r in runs if r.layers is not None]
    if parts:
        layers = pd.concat(parts, ignore_index=True)
    trained = set(owner)
    recipe = runs[0].config
    every = model_names(recipe.taylor.orders)
    models = None if trained >= set(every) else tuple(m for m in every if m in trained)
    merged = Run(runs[0].path, "+".join(r.name for r in runs), replace(recipe, models=models),
                 metrics, layers, parts=tuple(r.path for r in runs), info=runs[0].info)
    return merged, notes


def merge_runs(runs: Sequence[Run]) -> tuple[list[Run], list[str]]:
    """Merge the subset runs of each recipe into one run; other runs pass through unchanged."""
    groups: dict[str, list[Run]] = {}
    out: list[Run | str] = []
    for run in runs:
        if trains_subset(run.config):
            key = merge_key(run.config)
            if key not in groups:
                out.append(key)  # the merged run takes the place of its first part
            groups.setdefault(key, []).append(run)
        else:
            out.append(run)
    notes: list[str] = []
    merged: dict[str, list[Run]] = {}
    for key, group in groups.items():
        if len(group) == 1:
            merged[key] = group
            continue
        run, why = merge_group(group)
        notes += why
        merged[key] = [run] if run is not None else group
    return [r for item in out for r in (merged[item] if isinstance(item, str) else [item])], notes
