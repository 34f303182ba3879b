"""Several devices: each batch is split across them, parameters are replicated.

jit's SPMD partitioner does the rest: the augmentation and every model's forward and backward
pass run on each device's slice of the batch, and gradients are summed across devices. With
several processes (engine/processes.py) the mesh spans every process's devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..errors import RecipeError

DATA_AXIS = "data"


def data_mesh() -> Mesh | None:
    """A one-axis mesh over every device of the job (all processes), or None on a single device."""
    devices = jax.devices()
    return Mesh(devices, (DATA_AXIS,)) if len(devices) > 1 else None


def batch_sharding(mesh: Mesh | None) -> NamedSharding | None:
    """Split the leading (batch) axis across the mesh."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh | None):
    """The same arrays, a full copy on every device of the mesh."""
    if mesh is None:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # device_put would first check that every process passes equal values (an all-gather of
    # the whole training set); every process computes them from the same seed anyway.
    return jax.tree.map(lambda x: x if getattr(x, "sharding", None) == sharding else
                        jax.make_array_from_callback(np.shape(x), sharding,
                                                     lambda idx, x=x: np.asarray(x)[idx]),
                        tree)


def check_batch(recipe, ds, source: str = "recipe") -> None:
    """The batch size against the devices it is split across and the training set."""
    devices = 1 if recipe.train.split_models else jax.device_count()  # split: whole batches
    if recipe.train.batch_size % devices:
        raise RecipeError(f"{source}: key train.batch_size: expected a multiple of the {devices} "
                          f"devices the batch is split across, got {recipe.train.batch_size}")
    if recipe.train.batch_size > len(ds.train_y):
        raise RecipeError(f"{source}: key train.batch_size: expected at most the training set "
                          f"size {len(ds.train_y)} of {recipe.data.dataset}, got "
                          f"{recipe.train.batch_size}")
