"""Checkpoints of the lockstep state with orbax: keep-last-N plus the epochs marked for spawning."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from orbax.checkpoint import checkpoint_managers as policies

from .devices import data_mesh


class CheckpointError(Exception):
    """A checkpoint that is missing or cannot be read; str(e) is one line naming the file."""


class Checkpoints:
    """The run directory's checkpoints/ folder, one orbax step folder per saved step."""

    def __init__(self, directory: str | Path, keep: int = 1, keep_steps=(), read_only=False):
        self.directory = Path(directory).absolute()
        policy = policies.AnyPreservationPolicy(
            [policies.LatestN(keep), policies.CustomSteps(list(keep_steps))])
        # A parent run read by `spawn` is opened read-only: nothing of it is ever deleted.
        absl = logging.getLogger("absl")
        level = absl.level
        if read_only:  # orbax warns that a read-only manager will not save, which is the point
            absl.setLevel(logging.ERROR)
        try:
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policy, create=not read_only, read_only=read_only,
                # Every process calls save and restore (they are collective); process 0 writes
                # the metadata and creates and deletes the step folders.
                multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=0))
            self.manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl.setLevel(level)

    def steps(self) -> list[int]:
        """Every complete checkpoint's step, oldest first."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest complete checkpoint (orbax skips unfinished ones)."""
        return self.manager.latest_step()

    def save(self, step: int, state, meta: dict) -> None:
        """Start saving `state` at `step` (asynchronously; `wait` makes it durable)."""
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)

    def wait(self) -> None:
        """Block until every started save is on disk."""
        self.manager.wait_until_finished()

    def restore(self, step: int, like) -> tuple[dict, dict]:
        """The state and metadata saved at `step`, shaped like the pytree `like`."""
        # With several processes the arrays come back as global arrays, replicated on the mesh.
        sharding = (NamedSharding(data_mesh(), PartitionSpec()) if jax.process_count() > 1
                    else None)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=sharding), like)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # orbax raises many types for damaged files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} cannot be read ({first[:200]}); "
                f"remove that folder to resume from an older checkpoint, or pass --no-resume"
            ) from None
        return out["state"], out["meta"]

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()
