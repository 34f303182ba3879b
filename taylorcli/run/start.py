"""Where a run starts: θ0 from the recipe's seed, or a parent run's full network at an epoch.

A spawned run (recipe with `spawn.parent`) starts every model at the parent's full network
θ(E) and its optimizer state, read from the parent's newest checkpoint at or before E and,
when that is earlier, replayed from there on the parent's own data order.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..engine.full_alone import train_full_alone
from ..engine.lockstep import lockstep_state
from ..engine.setup import Setup, build_setup
from ..engine.state import LockstepState
from ..errors import CheckpointError
from ..names import FULL
from .checkpoints import Checkpoints
from .directory import RunDir


def initial_state(setup: Setup) -> LockstepState:
    """The state a new run starts from: θ0 from the seed, or a parent's network for a spawned run."""
    if setup.recipe.spawn.parent is None:
        return setup.initial_state()
    return spawned_state(setup)


def parent_setup(setup: Setup) -> Setup:
    """The parent run's setup, on the same loaded data and network (a spawned run keeps both)."""
    parent = RunDir(Path(setup.recipe.spawn.parent)).read_recipe()
    return build_setup(parent, setup.data, setup.model)


def spawned_state(setup: Setup) -> LockstepState:
    """Every model of a spawned run at the parent's full network and optimizer state at step E."""
    parent = parent_setup(setup)
    step = setup.engine.start_step
    theta, opt, at = parent_network(parent, Path(setup.recipe.spawn.parent), step)
    if at < step:
        theta, opt = replay(parent, theta, opt, at, step)
    return lockstep_state(setup.engine, step, theta, opt)


def parent_network(parent: Setup, parent_dir: Path, step: int):
    """The parent's full network and optimizer state at its newest checkpoint at or before `step`."""
    ckpts = Checkpoints(parent_dir / "checkpoints", read_only=True)
    try:
        found = ckpts.restore_latest(parent.abstract_state, at_most=step)
    finally:
        ckpts.close()
    if found is None:  # a run starts from its seed, a spawned one from its own parent
        state = initial_state(parent)
        return state.params[FULL], state.opt[FULL], int(state.step)
    at, state, _ = found
    if bool(state.diverged[FULL]):
        raise CheckpointError(f"{parent_dir}: the parent's full network had diverged by step "
                              f"{at}; spawn from an earlier epoch")
    return state.params[FULL], state.opt[FULL], at


def replay(parent: Setup, theta, opt, start: int, stop: int):
    """Train the parent's full network alone from step `start` to `stop`, on its own data order.

    This is how spawning works from epochs that were not checkpointed; it equals the parent's
    trajectory up to floating-point reordering.
    """
    engine = dataclasses.replace(parent.engine, batch_sharding=None)
    state, _ = train_full_alone(engine, parent.recipe.seed, theta, opt, start, stop,
                                parent.data.train_x, parent.data.train_y)
    if bool(state.diverged[FULL]):
        raise CheckpointError(f"the parent ({parent.recipe.name}) diverged when replayed to "
                              f"step {stop}; spawn from an earlier epoch")
    return state.params[FULL], state.opt[FULL]
