"""Several devices on one host: each batch is split across them, parameters are replicated.

jit's SPMD partitioner does the rest: the augmentation and every model's forward and backward
pass run on each device's slice of the batch, and gradients are summed across devices.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh() -> Mesh | None:
    """A one-axis mesh over every local device, or None on a single device."""
    devices = jax.devices()
    return Mesh(devices, (DATA_AXIS,)) if len(devices) > 1 else None


def batch_sharding(mesh: Mesh | None) -> NamedSharding | None:
    """Split the leading (batch) axis across the mesh."""
    return None if mesh is None else NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicate(tree, mesh: Mesh | None):
    """The same arrays, a full copy on every device of the mesh."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
