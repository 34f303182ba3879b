"""The recipe of a spawned run (Fort et al. 2020): a parent run's recipe plus a `spawn` section.

A spawned run is an ordinary lockstep run whose recipe is the parent's plus a `spawn` section.
Its models start at the parent's full network θ(E), with the parent's optimizer state, and
train for the rest of the parent's schedule with the parent's data order and augmentation:
`full` (the parent's network, continued), `spawn@E/orderk` (Taylorized around θ(E)), their
re-expanding variants, and `childN` (copies of the network with their own SGD noise).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp

from ..engine.optimizer import make_optimizer
from ..errors import RecipeError
from ..recipe import Recipe, recipe_from_dict, recipe_to_dict
from ..names import FULL
from ..run.directory import RunDir

# What a spawned run may not change: the parent's state would not fit it, or its data order.
FIXED_KEYS = ("seed", "data.", "model.", "train.batch_size", "train.epochs", "spawn.parent",
              "spawn.epoch", "taylor.", "models")


def parent_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run directory was trained with, or one line saying why it cannot be read."""
    return RunDir(run_dir).read_recipe()


def spawn_recipe(parent: Recipe, parent_dir: str | Path, epoch: float, orders, *,
                 children: int = 0, reexpand_every=(), reexpand_doubling=(),
                 overrides=()) -> Recipe:
    """The recipe of the run spawned from `parent` at `epoch` (the parent's own recipe plus `spawn`)."""
    for text in overrides:
        key = text.partition("=")[0].strip()
        if any(key == k or (k.endswith(".") and key.startswith(k)) for k in FIXED_KEYS):
            raise RecipeError(f"--set {text}: a spawned run keeps the parent's {key}; allowed "
                              f"are optim.*, eval.*, checkpoint.*, train.loss and the spawn flags")
    first = parent.spawn.epoch if parent.spawn.parent is not None else 0
    if not first <= epoch <= parent.train.epochs:
        raise RecipeError(f"--at {epoch:g}: expected epochs from {first:g} (where the parent "
                          f"starts) to the parent's train.epochs ({parent.train.epochs})")
    if parent.models is not None and FULL not in parent.models:
        raise RecipeError(f"{parent_dir}: trained only {', '.join(parent.models)}; spawning needs "
                          f"a run of the full network")
    raw = recipe_to_dict(parent)
    raw["name"] = f"{parent.name}_spawn{epoch:g}"
    raw["models"] = None
    raw["taylor"]["orders"] = list(orders)
    raw["spawn"] = {"parent": str(Path(parent_dir).resolve()), "epoch": float(epoch),
                    "children": children, "child_seeds": [],
                    "reexpand_every": list(reexpand_every),
                    "reexpand_doubling": list(reexpand_doubling)}
    # The parent's own spawn section (a spawn of a spawn) is replaced, not merged.
    recipe = recipe_from_dict(raw, f"spawn from {parent_dir}", overrides)
    check_optimizer_state(parent, recipe)
    return recipe


def check_optimizer_state(parent: Recipe, recipe: Recipe) -> None:
    """Refuse optimizer overrides whose state the parent's optimizer state cannot fill."""
    probe = {"w": jnp.zeros(1)}
    layout = lambda r: jax.tree.structure(make_optimizer(r.optim, 1).init(probe))
    if layout(parent) != layout(recipe):
        keys = [k for k in ("name", "momentum", "nesterov", "weight_decay", "grad_clip")
                if bool(getattr(parent.optim, k)) != bool(getattr(recipe.optim, k))
                or k == "name" and parent.optim.name != recipe.optim.name]
        raise RecipeError(f"--set optim.{(keys or ['momentum'])[0]}: a spawned run continues "
                          f"the parent's optimizer state, so the optimizer stays the parent's "
                          f"and momentum, weight decay and clipping may change value but not "
                          f"be switched on or off")
