"""The paper's learning-rate protocol: the largest rate of a grid at which the full network trains stably.

Bai et al. chose, for each architecture, the largest learning rate in a grid under which the full
network's training loss decreases smoothly. Each rate trains the full network alone, from the
recipe's θ0 on its data order and augmentation, for a few epochs at that constant rate; its
minibatch losses are judged by `metrics.loss_curve_verdict` (finite; no tenth of the steps,
averaged, above the initial loss or the tenth before it by more than 5% of the initial loss;
lower at the end than at the start; and clear of chance by the middle of the trial: the tenth
of the steps that holds its middle at most 75% of the smaller of the initial loss and the
chance-level loss, ln C for cross-entropy over C classes). The last rule is issue 21's: a
loss that decreases at all let rates through at which the network sits near chance for half
the trial (a WideResNet for hundreds of steps). Rises are on the initial loss's scale, not
relative to the window before: a loss of 0.03 that reads 0.04 in the next tenth is noise, not
an instability. A trial as long as the run it chooses for (`--epochs`) judges the rate where
it will be used. Writes lr_search.csv (the verdict per rate) and lr_curves.csv (every step's
loss) into its own folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .. import data as data_lib
from ..engine.costs import check_fits
from ..engine.devices import check_batch
from ..engine.full_alone import train_full_alone
from ..engine.setup import Setup, build_setup
from ..errors import OwnershipError, RecipeError, RunDirError
from ..metrics import loss_curve_verdict
from ..names import FULL
from ..recipe import Recipe, recipe_from_dict, recipe_to_dict
from .directory import RunDir

COLUMNS = ["lr", "stable", "reason", "initial_loss", "mid_window_loss", "clear_threshold",
           "last_window_loss", "largest_rise", "diverged_at_step", "chosen"]
DEFAULT_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class LRSearch:
    """The verdict per rate, every step's loss, the chosen rate (None: none was stable)."""

    recipe: Recipe
    table: pd.DataFrame
    curves: pd.DataFrame
    chosen: float | None
    out: Path
    files: list[Path] = field(default_factory=list)


def trial_recipe(recipe: Recipe, lr: float, epochs: int) -> Recipe:
    """The recipe of one trial: the full network alone, `epochs` epochs at constant rate `lr`."""
    raw = recipe_to_dict(recipe)
    raw["optim"].update(lr=lr, schedule="constant", decay_epochs=[], warmup_epochs=0)
    raw["train"]["epochs"] = epochs
    raw["taylor"]["orders"] = []
    raw["models"] = None
    raw["checkpoint"]["keep_epochs"] = []
    raw["eval"].update(kernel_n=0, closed_form=False)
    raw["spawn"] = {}
    return recipe_from_dict(raw, f"--lrs {lr:g}")


def initial_loss(setup: Setup, theta0) -> float:
    """The loss at θ0 over the whole training set (standardized, not augmented)."""
    ds, engine = setup.data, setup.engine
    x = data_lib.standardize(jnp.asarray(ds.train_x), mean=ds.mean, std=ds.std)
    total = 0.0
    for i in range(0, len(ds.train_y), 1000):
        logits = engine.apply(theta0, x[i:i + 1000])
        total += float(engine.loss(logits, jnp.asarray(ds.train_y[i:i + 1000]))) * len(logits)
    return total / len(ds.train_y)


def losses_at(setup: Setup) -> tuple[float, np.ndarray]:
    """The loss at θ0, and every step's minibatch training loss of the full network trained by
    the setup's recipe (alone)."""
    state = setup.initial_state()
    start = initial_loss(setup, state.theta0)
    recipe = setup.recipe
    _, losses = train_full_alone(setup.engine, recipe.seed, state.params[FULL],
                                 state.opt[FULL], 0, recipe.train.epochs *
                                 setup.engine.steps_per_epoch, setup.data.train_x,
                                 setup.data.train_y)
    return start, losses


def chance_loss(recipe: Recipe, num_classes: int) -> float | None:
    """The loss of a predictor at chance level: ln C for cross-entropy; None for MSE (its
    reference is the initial loss)."""
    return math.log(num_classes) if recipe.train.loss == "cross_entropy" else None


def claim_folder(out: Path) -> RunDir:
    """`out` as this search's folder: new, empty, or an earlier search's (marked by run.json)."""
    folder = RunDir(out)
    if folder.is_run():
        if folder.read_info().get("kind") != "lr_search":
            raise RunDirError(f"--out {out}: holds a taylorcli run, not a learning-rate search; "
                              f"choose another --out")
        return folder
    try:
        folder.folder.claim({"kind": "lr_search"}, "a learning-rate search's folder")
    except OwnershipError as e:
        raise RunDirError(str(e)) from None
    return folder


def lr_search(recipe: Recipe, lrs=DEFAULT_GRID, epochs: int = 3, out: str | Path | None = None,
              report=print) -> LRSearch:
    """Try every rate on the full network for `epochs` epochs; choose the largest stable one."""
    lrs = sorted(set(float(v) for v in lrs))
    if not lrs or any(not v > 0 for v in lrs):
        raise RecipeError(f"--lrs {','.join(map(str, lrs))}: expected rates > 0")
    if epochs > recipe.train.epochs:
        raise RecipeError(f"--epochs {epochs}: expected at most the recipe's train.epochs "
                          f"({recipe.train.epochs})")
    out = Path(out) if out is not None else Path("runs") / f"{recipe.name}_lr_search"
    ds = data_lib.load_for_recipe(recipe)
    recipe = data_lib.with_data_stats(recipe, ds)
    trials = [trial_recipe(recipe, lr, epochs) for lr in lrs]
    check_batch(trials[0], ds, "recipe")
    rows, curves = [], []
    with jax.enable_x64(recipe.train.precision == "float64"):
        first = build_setup(trials[0], ds)  # the network built once; each rate its own optimizer
        check_fits(first, "recipe")
        folder = claim_folder(out)  # only once the recipe and data are known to work
        for trial in trials:
            setup = first.with_recipe(trial)
            start, losses = losses_at(setup)
            v = loss_curve_verdict(losses, start, chance=chance_loss(trial, ds.num_classes))
            rows.append({"lr": trial.optim.lr, "stable": v["stable"], "reason": v["reason"],
                         "initial_loss": v["first"], "mid_window_loss": v["clear_window_loss"],
                         "clear_threshold": v["clear_threshold"], "last_window_loss": v["last"],
                         "largest_rise": v["largest_rise"], "diverged_at_step": v["diverged_at"]})
            curves += [{"lr": trial.optim.lr, "step": i + 1, "loss": float(x)}
                       for i, x in enumerate(losses)]
            report(f"lr {trial.optim.lr:g}: {'stable' if v['stable'] else 'unstable'} "
                   f"({v['reason']})")
    stable = [r["lr"] for r in rows if r["stable"]]
    chosen = max(stable) if stable else None
    for r in rows:
        r["chosen"] = r["lr"] == chosen
    table = pd.DataFrame(rows, columns=COLUMNS)
    curve_table = pd.DataFrame(curves, columns=["lr", "step", "loss"])
    result = LRSearch(recipe, table, curve_table, chosen, out)
    for name, t in (("lr_search.csv", table), ("lr_curves.csv", curve_table)):
        folder.write_table(name, t.to_dict("records"), list(t.columns))
        result.files.append(out / name)
    return result
