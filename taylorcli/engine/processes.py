"""Several processes (SLURM tasks, nodes): JAX's own distributed runtime.

Under `srun` with more than one task, or with JAX_COORDINATOR_ADDRESS set, `train` calls
`jax.distributed.initialize()` before any other JAX use. From then on `jax.devices()` lists
every process's devices, the data mesh spans them all, and every jitted step is one SPMD
program over the whole job. Every process loads the same data and derives the same batches
from the seed; only process 0 writes the run directory and holds its lock, while checkpoint
saves are collective (orbax writes each array once, the primary host writes the metadata).
Everything read back to the host for metrics (logits, cosines, running statistics) is an
output replicated over the mesh, so each process reads its own local copy: no gathering.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import DistributedError

# How often (in steps) the processes agree on whether a stop signal arrived: each agreement
# is a host-level all-gather, and one every step would stall the asynchronous dispatch.
STOP_CHECK_EVERY = 10


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"environment variable {name}: expected an integer, got "
                               f"{value!r}") from None


def launch_settings() -> dict | None:
    """Arguments for jax.distributed.initialize from the environment, or None for one process.

    JAX_COORDINATOR_ADDRESS (host:port of process 0) with JAX_NUM_PROCESSES and JAX_PROCESS_ID,
    or a SLURM job step with more than one task (srun), which JAX detects itself.
    TAYLORCLI_DISTRIBUTED=0 turns both off.
    """
    if os.environ.get("TAYLORCLI_DISTRIBUTED", "1") == "0":
        return None
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        count, index = _int_env("JAX_NUM_PROCESSES"), _int_env("JAX_PROCESS_ID")
        if (count is None) != (index is None):
            raise DistributedError("environment variables JAX_NUM_PROCESSES and JAX_PROCESS_ID: "
                                   "expected both or neither with JAX_COORDINATOR_ADDRESS")
        if count is not None and not 0 <= index < count:
            raise DistributedError(f"environment variable JAX_PROCESS_ID: expected 0 .. "
                                   f"{count - 1} (JAX_NUM_PROCESSES={count}), got {index}")
        # Without the counts JAX asks the cluster (SLURM, Open MPI, ...) for them.
        return {"num_processes": count, "process_id": index}
    # SLURM_STEP_NUM_TASKS is set by srun; the batch script itself (one process, however many
    # tasks the allocation has) must not wait for peers that were never launched.
    tasks = _int_env("SLURM_STEP_NUM_TASKS")
    if tasks is not None and tasks > 1 and "SLURM_PROCID" in os.environ:
        return {}
    return None


def initialize() -> bool:
    """Join the job's other processes when launched as one of several; True if it did."""
    settings = launch_settings()
    if settings is None:
        return False
    import jax

    if jax.distributed.is_initialized():
        return True
    jax.distributed.initialize(**{k: v for k, v in settings.items() if v is not None})
    return True


def process_index() -> int:
    """This process's index in the job (0 with one process)."""
    import jax

    return jax.process_index()


def is_primary() -> bool:
    """Whether this process writes the run directory and prints the progress."""
    return process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process of the job reaches the same point (no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(f"taylorcli:{name}")


def agree_to_stop(asked: bool, step: int) -> bool:
    """Whether every process stops at this step: any process's stop signal, seen by all at once.

    With one process that is `asked`; with several the processes compare notes every
    STOP_CHECK_EVERY steps, so that they all checkpoint (a collective) at the same step.
    """
    import jax

    if jax.process_count() == 1:
        return asked
    if step % STOP_CHECK_EVERY:
        return False
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.asarray(asked))))
