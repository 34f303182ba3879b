"""Spawning (Fort et al. 2020): new models that start from a parent run's network at an epoch.

A spawned run is an ordinary lockstep run whose recipe is the parent's plus a `spawn` section.
Its models start at the parent's full network θ(E), with the parent's optimizer state, and
train for the rest of the parent's schedule with the parent's data order and augmentation:
`full` (the parent's network, continued), `spawn@E/orderk` (Taylorized around θ(E)), their
re-expanding variants, and `childN` (copies of the network with their own SGD noise).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from .checkpoints import CheckpointError, Checkpoints
from .recipe import Recipe, RecipeError, load_recipe, recipe_from_dict, recipe_to_dict
from .runs import RunDirError
from .train import FULL, ModelSpec, build_engine, epoch_permutation, init_state, \
    lockstep_state, make_optimizer, make_train_step

# What a spawned run may not change: the parent's state would not fit it, or its data order.
FIXED_KEYS = ("seed", "data.", "model.", "train.batch_size", "train.epochs", "spawn.parent",
              "spawn.epoch", "taylor.", "models")


def parent_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a run directory was trained with, or one line saying why it cannot be read."""
    path = Path(run_dir) / "recipe.yaml"
    if not path.is_file():
        raise RunDirError(f"{run_dir}: not a run directory (no recipe.yaml); give the --out of a "
                          f"`taylorcli train` run")
    return load_recipe(path)


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
        keys = [k for k in ("momentum", "nesterov", "weight_decay", "grad_clip")
                if bool(getattr(parent.optim, k)) != bool(getattr(recipe.optim, k))]
        raise RecipeError(f"--set optim.{(keys or ['momentum'])[0]}: a spawned run continues "
                          f"the parent's optimizer state, so momentum, weight decay and "
                          f"clipping may change value but not be switched on or off")


def spawned_state(engine, recipe: Recipe, spec, ds) -> dict:
    """Every model of a spawned run at the parent's full network and optimizer state at step E."""
    parent_dir = Path(recipe.spawn.parent)
    parent = parent_recipe(parent_dir)
    step = engine.start_step
    theta, opt, at = parent_network(parent, parent_dir, spec, step, ds)
    if at < step:
        theta, opt = replay(parent, spec, ds, theta, opt, at, step)
    return lockstep_state(engine, step, theta, opt)


def parent_network(parent: Recipe, parent_dir: Path, spec, step: int, ds=None):
    """The parent's full network and optimizer state at its newest checkpoint at or before `step`."""
    engine = build_engine(parent, spec)
    ckpts = Checkpoints(parent_dir / "checkpoints", read_only=True)
    try:
        usable = [s for s in ckpts.steps() if s <= step]
        if not usable:  # a run starts from its seed, a spawned one from its own parent
            state = (init_state(engine, parent, spec) if parent.spawn.parent is None
                     else spawned_state(engine, parent, spec, ds))
            return state["params"][FULL], state["opt"][FULL], int(state["step"])
        at = usable[-1]
        like = jax.eval_shape(lambda: init_state(engine, parent, spec))
        state, _ = ckpts.restore(at, like)
    finally:
        ckpts.close()
    if bool(state["diverged"][FULL]):
        raise CheckpointError(f"{parent_dir}: the parent's full network had diverged by step "
                              f"{at}; spawn from an earlier epoch")
    return state["params"][FULL], state["opt"][FULL], at


def replay(parent: Recipe, spec, ds, theta, opt, start: int, stop: int):
    """Train the parent's full network alone from step `start` to `stop`, on its own data order.

    This is how spawning works from epochs that were not checkpointed; it equals the parent's
    trajectory up to floating-point reordering (the full network's update ignores the others).
    """
    engine = dataclasses.replace(build_engine(parent, spec), specs=(ModelSpec(FULL),))
    state = lockstep_state(engine, start, theta, opt)
    step_fn = jax.jit(make_train_step(engine, parent.seed), donate_argnums=0)
    train_x, train_y = jnp.asarray(ds.train_x), jnp.asarray(ds.train_y)
    spe, perm = engine.steps_per_epoch, None
    for step in range(start, stop):
        if perm is None or step % spe == 0:
            perm = epoch_permutation(parent.seed, step // spe, len(ds.train_y))
        state, _ = step_fn(state, perm, train_x, train_y)
    if bool(state["diverged"][FULL]):
        raise CheckpointError(f"the parent ({parent.name}) diverged when replayed to step "
                              f"{stop}; spawn from an earlier epoch")
    return state["params"][FULL], state["opt"][FULL]
