"""Where a run starts: θ0 from the recipe's seed, or a parent run's full network at an epoch.

A spawned run (recipe with `spawn.parent`) starts every model at the parent's full network
θ(E) and its optimizer state, read from the parent's newest checkpoint at or before E and,
when that is earlier, replayed from there on the parent's own data order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from ..engine.lockstep import FULL, ModelSpec, build_engine, epoch_permutation, init_state, \
    lockstep_state, make_train_step
from ..errors import CheckpointError
from ..recipe import Recipe
from .checkpoints import Checkpoints
from .directory import RunDir


def initial_state(engine, recipe: Recipe, spec, ds) -> dict:
    """The state a new run starts from: θ0 from the seed, or a parent's network for a spawned run."""
    if recipe.spawn.parent is None:
        return init_state(engine, recipe, spec)
    return spawned_state(engine, recipe, spec, ds)


def spawned_state(engine, recipe: Recipe, spec, ds) -> dict:
    """Every model of a spawned run at the parent's full network and optimizer state at step E."""
    parent_dir = Path(recipe.spawn.parent)
    parent = RunDir(parent_dir).read_recipe()
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
        like = jax.eval_shape(lambda: init_state(engine, parent, spec))
        found = ckpts.restore_latest(like, at_most=step)
    finally:
        ckpts.close()
    if found is None:  # a run starts from its seed, a spawned one from its own parent
        state = (init_state(engine, parent, spec) if parent.spawn.parent is None
                 else spawned_state(engine, parent, spec, ds))
        return state["params"][FULL], state["opt"][FULL], int(state["step"])
    at, state, _ = found
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
