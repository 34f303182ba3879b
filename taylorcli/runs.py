"""The run directory: every file a later `compare` or `report` needs, written atomically."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

METRICS_COLUMNS = [
    "model", "order", "epoch", "step", "lr", "train_loss", "train_acc",
    "test_loss", "test_acc", "cos_param", "cos_func", "diverged",
]
LAYERS_COLUMNS = ["model", "epoch", "layer", "distance", "relative_distance"]


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp creates 0600 files; results on shared cluster storage should read like any other file.
FILE_MODE = 0o666 & ~_umask()


class RunDirError(Exception):
    """A run directory that cannot be used; str(e) is one line naming the path."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_step_arrays(folder: Path, step: int, arrays: dict) -> None:
    """folder/stepNNNNNNNN.npz: one array per model name ('/' stored as '__'), atomically."""
    buf = io.BytesIO()
    np.savez(buf, **{k.replace("/", "__"): np.asarray(v) for k, v in arrays.items()})
    write_atomic(Path(folder) / f"step{step:08d}.npz", buf.getvalue())


def read_step_arrays(folder: Path, step: int) -> dict[str, np.ndarray]:
    """The arrays `write_step_arrays` saved in folder at `step`, by model name."""
    with np.load(Path(folder) / f"step{step:08d}.npz") as saved:
        return {k.replace("__", "/"): saved[k] for k in saved.files}


class RunLock:
    """An exclusive lock on a run directory, held by a live run and released by the kernel when it dies."""

    def __init__(self, path: Path):
        self.path = path / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or say in one line which live run holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock, not a pid file: a run killed with SIGKILL cannot leave it stuck.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                # Some cluster filesystems (Lustre without -o flock) cannot lock at all.
                print(f"taylorcli: warning: {self.path}: this filesystem cannot lock files "
                      f"({e.strerror}); nothing stops a second run on the same --out",
                      file=sys.stderr)
                self.fd = fd
                return
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"--out {self.path.parent}: in use by a live run ({holder}); "
                              f"wait for it to end or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd

    def release(self) -> None:
        """Let the next run in."""
        if self.fd is not None:
            with contextlib.suppress(OSError):  # filesystems without locks
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class RunDir:
    """One run's directory: recipe.yaml, metrics.csv, layers.csv, logits/, params/, checkpoints/."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def metrics_path(self) -> Path:
        """metrics.csv of this run."""
        return self.path / "metrics.csv"

    @property
    def layers_path(self) -> Path:
        """layers.csv of this run."""
        return self.path / "layers.csv"

    @property
    def checkpoints_path(self) -> Path:
        """The orbax checkpoints folder of this run."""
        return self.path / "checkpoints"

    def has_run(self) -> bool:
        """Whether a run has already written results here."""
        return self.metrics_path.exists() or (self.path / "recipe.yaml").exists()

    def prepare(self) -> None:
        """Create the directory, or say in one line why it cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"--out {self.path}: cannot write there ({e.strerror or e})") from None

    def clear_results(self) -> None:
        """Remove the results and checkpoints of an earlier run (on an explicit --no-resume)."""
        for table in self.path.glob("*.csv"):  # metrics, layers and the extra analyses' tables
            table.unlink()
        (self.path / "recipe.yaml").unlink(missing_ok=True)
        for folder in ("logits", "params"):
            if (self.path / folder).is_dir():
                for f in (self.path / folder).glob("*.npz"):
                    f.unlink()
        shutil.rmtree(self.checkpoints_path, ignore_errors=True)
        shutil.rmtree(self.path / "kernels", ignore_errors=True)

    def write_recipe(self, text: str) -> None:
        """The fully resolved recipe, as run."""
        write_atomic(self.path / "recipe.yaml", text.encode())

    def write_table(self, path: Path, rows: list[dict], columns: list[str]) -> None:
        """A whole CSV table, atomically."""
        buf = io.StringIO()
        pd.DataFrame(rows, columns=columns).to_csv(buf, index=False, float_format="%.8g")
        write_atomic(path, buf.getvalue().encode())

    def write_metrics(self, rows: list[dict]) -> None:
        """metrics.csv: one row per (model, evaluation point)."""
        self.write_table(self.metrics_path, rows, METRICS_COLUMNS)

    def write_layers(self, rows: list[dict]) -> None:
        """layers.csv: layer movement per (model, evaluation point, layer)."""
        self.write_table(self.layers_path, rows, LAYERS_COLUMNS)

    def write_logits(self, step: int, logits: dict[str, np.ndarray]) -> None:
        """Test logits of every model at one evaluation point."""
        write_step_arrays(self.path / "logits", step, logits)

    def write_params(self, step: int, params: dict[str, np.ndarray]) -> None:
        """Flat parameter displacements θ − θ0 of each model at one evaluation point (subset runs)."""
        write_step_arrays(self.path / "params", step, params)

    def read_metrics(self) -> pd.DataFrame:
        """metrics.csv as a DataFrame."""
        return pd.read_csv(self.metrics_path)
