"""Checkpoints of the lockstep state with orbax: keep-last-N plus the epochs marked for spawning.

Each finished checkpoint gets a digest of its files (DIGEST, beside orbax's own files in the
step folder), so a damaged checkpoint is detected before it is restored: the newest intact
one is used instead, and the caller is told which were skipped and why.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import zlib
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec
from orbax.checkpoint import checkpoint_managers as policies

from ..engine.devices import data_mesh
from ..engine.state import LockstepState
from ..errors import CheckpointError

DIGEST = "taylorcli_digest.json"


class _OrbaxErrors(logging.Filter):
    """Orbax logs a failed save (a full disk) with tracebacks from its threads, then raises the
    same error to the caller; taylorcli says it in one line, so the log records are dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


class _UnretrievedWrites(logging.Filter):
    """A save that failed part-way leaves orbax's other write futures failing with the same
    error, which asyncio logs as 'never retrieved'; the caller already has that error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "orbax" not in record.getMessage() and "OCDBT" not in record.getMessage()


def _add_filter(logger: logging.Logger, kind: type[logging.Filter]) -> None:
    if not any(isinstance(f, kind) for f in logger.filters):
        logger.addFilter(kind())


_add_filter(logging.getLogger("absl"), _OrbaxErrors)
_add_filter(logging.getLogger("asyncio"), _UnretrievedWrites)

# Room a save needs beyond its arrays (orbax's metadata, our digest), before it may start.
_SAVE_OVERHEAD = 1 << 20


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != DIGEST)


def folder_digest(folder: Path) -> dict[str, str]:
    """CRC-32 of every file under a step folder, by relative path (damage, not tampering)."""
    out = {}
    for path in _files(folder):
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                crc = zlib.crc32(chunk, crc)
        out[path.relative_to(folder).as_posix()] = f"{crc:08x}"
    return out


class Checkpoints:
    """The run directory's checkpoints/ folder, one orbax step folder per saved step."""

    def __init__(self, directory: str | Path, keep: int = 1, keep_steps=(), read_only=False,
                 primary: bool = True):
        self.directory = Path(directory).absolute()
        self.read_only = read_only
        self.primary = primary
        self.skipped: list[str] = []  # damaged checkpoints passed over by `restore_latest`
        self._unsigned: list[int] = []
        self._lock = threading.Lock()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: is a file, not the run's checkpoints "
                                  f"folder; move it away to resume from nothing")
        if not read_only and primary:
            _check_writable(self.directory)
        policy = policies.AnyPreservationPolicy(
            [policies.LatestN(keep), policies.CustomSteps(list(keep_steps))])
        absl = logging.getLogger("absl")
        level = absl.level
        if read_only:  # orbax warns that a read-only manager will not save, which is the point
            absl.setLevel(logging.ERROR)
        try:
            # Each save is signed in orbax's own thread right after it is committed: off the
            # training loop's critical path, and with no gap until the next save.
            signing = None if read_only or not primary else ocp.options.AsyncOptions(
                post_finalization_callback=self._sign_committed)
            options = ocp.CheckpointManagerOptions(
                preservation_policy=policy, create=not read_only, read_only=read_only,
                async_options=signing,
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
        self.wait()  # the previous save, signed before the next begins
        # Stored in the dict layout of earlier versions, so their runs still resume.
        state = state.as_dict() if isinstance(state, LockstepState) else state
        self._check_room(state)
        with self._lock:
            self._unsigned.append(step)
        try:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # noqa: BLE001 - orbax raises many types for a failed write
            raise _save_error(self.directory, e) from None

    def _check_room(self, state) -> None:
        """Refuse a save the disk cannot hold before it starts: orbax's writers, failing
        part-way, leave a half-written step and noise from their threads."""
        needed = sum(getattr(leaf, "nbytes", 8) for leaf in jax.tree.leaves(state)) + _SAVE_OVERHEAD
        try:
            disk = os.statvfs(self.directory)
            free = disk.f_bavail * disk.f_frsize
        except OSError:
            return  # not a local filesystem we can ask; orbax's own error will say it
        if free < needed:
            raise CheckpointError(
                f"{self.directory}: cannot save a checkpoint (the disk is full: {free} bytes "
                f"free, {needed} needed); the run stays resumable from its last complete "
                f"checkpoint")

    def _sign_committed(self) -> None:
        """Write the digest of every committed, unsigned step (orbax's thread, after a commit)."""
        with self._lock:
            pending = list(self._unsigned)
        for step in pending:
            folder = self.directory / str(step)
            if folder.is_dir():
                try:
                    _write_json(folder / DIGEST, folder_digest(folder))
                except OSError:  # deleted meanwhile by the keep policy, or no space: unsigned
                    pass
                with self._lock:
                    self._unsigned.remove(step)

    def wait(self) -> None:
        """Block until every started save is on disk and signed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - the saving thread's error, re-raised here
            with self._lock:
                self._unsigned.clear()
            raise _save_error(self.directory, e) from None
        if self.primary and self._unsigned:  # a save that committed without the callback
            self._sign_committed()

    def damage(self, step: int) -> str | None:
        """Why the checkpoint at `step` is damaged (a file differs from its digest), or None."""
        folder = self.directory / str(step)
        try:
            recorded = json.loads((folder / DIGEST).read_text())
        except FileNotFoundError:
            return None  # finished but killed before its digest: orbax's own check has to do
        except (OSError, ValueError):
            return f"its digest file {DIGEST} is unreadable"
        actual = folder_digest(folder)
        for name, crc in recorded.items():
            if name not in actual:
                return f"{name} is missing"
            if actual[name] != crc:
                return f"{name} differs from its digest"
        return None

    def restore(self, step: int, like) -> tuple[dict, dict]:
        """The state and metadata saved at `step`, shaped like `like` (a pytree or a LockstepState)."""
        if isinstance(like, LockstepState):
            state, meta = self.restore(step, like.as_dict())
            return LockstepState.from_dict(state), meta
        # With several processes the arrays come back as global arrays, replicated on the mesh.
        sharding = (NamedSharding(data_mesh(), PartitionSpec()) if jax.process_count() > 1
                    else None)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                               sharding=sharding), like)
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - orbax raises many types for damaged files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"checkpoint {self.directory / str(step)} cannot be read "
                                  f"({first[:200]})") from None
        return out["state"], out["meta"]

    def restore_latest(self, like, at_most: int | None = None):
        """(step, state, meta) of the newest intact checkpoint (at or before `at_most`), or None.

        Damaged ones are passed over and named in `self.skipped`.
        """
        for step in reversed(self.steps()):
            if at_most is not None and step > at_most:
                continue
            why = self.damage(step)
            if why is None:
                try:
                    state, meta = self.restore(step, like)
                    return step, state, meta
                except CheckpointError as e:
                    why = str(e)
            self.skipped.append(f"checkpoint {self.directory / str(step)} is damaged ({why})")
        if self.skipped:
            raise CheckpointError(f"{self.skipped[-1]}, and no earlier intact checkpoint is "
                                  f"left; start over with --no-resume (it deletes this run's "
                                  f"results and checkpoints)")
        return None

    def delete_after(self, step: int) -> None:
        """Remove checkpoints newer than `step` (a resumed run recomputes and saves them again)."""
        for s in self.steps():
            if s > step:
                self.manager.delete(s)

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        try:
            self.wait()
        finally:
            with contextlib.suppress(Exception):
                self.manager.close()


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise CheckpointError(f"{directory}: cannot write checkpoints there ({e.strerror or e})"
                              ) from None


def _write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _save_error(directory: Path, e: BaseException) -> CheckpointError:
    whole = " ".join(str(e).split())
    full = any(sign in whole for sign in ("No space left", "ENOSPC", "os_error_code='28'"))
    cause = "the disk is full" if full else (whole[:200] or type(e).__name__)
    return CheckpointError(f"{directory}: cannot save a checkpoint ({cause}); the run stays "
                           f"resumable from its last complete checkpoint")
