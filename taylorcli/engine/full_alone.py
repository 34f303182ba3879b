"""The full network trained alone, on the run's own data order and augmentation: how a spawn
reaches an epoch that was not checkpointed, and what each learning-rate trial trains."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..names import FULL
from .lockstep import Engine, epoch_permutation, lockstep_state, make_train_step


def train_full_alone(engine: Engine, seed: int, theta, opt_state, start: int, stop: int,
                     train_x, train_y):
    """The full network from step `start` to `stop`: its last state and every step's loss.

    The full network's update ignores the other models, so this equals its trajectory in the
    lockstep run up to floating-point reordering.
    """
    solo = engine.only([FULL])
    state = lockstep_state(solo, start, theta, opt_state)
    step_fn = jax.jit(make_train_step(solo, seed), donate_argnums=0)
    x, y = jnp.asarray(train_x), jnp.asarray(train_y)
    spe, perm, losses = solo.steps_per_epoch, None, []
    for step in range(start, stop):
        if perm is None or step % spe == 0:
            perm = epoch_permutation(seed, step // spe, len(y))
        state, stats = step_fn(state, perm, x, y)
        losses.append(stats[FULL][0])
    return state, np.asarray(jax.device_get(losses), np.float64)
