"""The run directory, written and read in one place: every file a later `compare` or `report` needs.

    run.json        the marker: written when taylorcli creates the run (version, kind, parameter
                    count, dataset); nothing is deleted or overwritten in a folder without it
    recipe.yaml     the resolved recipe, as run
    metrics.csv     one row per (model, evaluation point)
    layers.csv      layer movement per (model, evaluation point, layer)
    *.csv           the analyses' tables (kernels.csv, closed_form.csv, children.csv)
    logits/ params/ kernels/   stepNNNNNNNN.npz arrays, one per model
    checkpoints/    orbax step folders
    .lock           held by the live run

Every file is written atomically (temp file + rename). `RunDir` writes and reads a run in
progress; `Run` is a run read back (`load_run`), the object `report`, `compare` and the
Python API work with. Processes other than 0 of a multi-process run get a `ReadOnlyRunDir`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import RecipeError, RunDirError
from ..recipe import Recipe, load_recipe, recipe_to_dict

FULL = "full"
MARKER = "run.json"
METRICS_COLUMNS = [
    "model", "order", "epoch", "step", "lr", "train_loss", "train_acc",
    "test_loss", "test_acc", "cos_param", "cos_func", "diverged", "func_dist",
]
# what runs of taylorcli 0.1 wrote (no func_dist): still read, the new column left empty
REQUIRED_METRICS = METRICS_COLUMNS[:-1]
LAYERS_COLUMNS = ["model", "epoch", "layer", "distance", "relative_distance"]
ARRAY_FOLDERS = ("logits", "params", "kernels")
RESULT_FILES = ("recipe.yaml", "metrics.csv", "layers.csv", "kernels.csv", "closed_form.csv",
                "children.csv")
EPOCH_TOL = 1e-6  # metrics.csv rounds epochs to 6 decimals
# model names taylorcli writes: full, orderK, childN, spawn@E/orderK[/everyM|/doublingM]
MODEL_NAME = re.compile(r"full|order\d+|child\d+|spawn@[0-9.e+-]+/order\d+(/(every|doubling)\d+)?")
_STEP_FILE = re.compile(r"step(\d{8})\.npz")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# mkstemp creates 0600 files; results on shared cluster storage should read like any other file.
FILE_MODE = 0o666 & ~_umask()


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a part."""
    path = Path(path)
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


def table_text(rows: list[dict], columns: list[str]) -> str:
    """CSV text of rows, 8 significant digits: what every table of a run is written as."""
    buf = io.StringIO()
    pd.DataFrame(rows, columns=columns).to_csv(buf, index=False, float_format="%.8g")
    return buf.getvalue()


def digest(text: str) -> str:
    """A short fingerprint of a table's text, stored in checkpoints to detect damage."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class RunLock:
    """An exclusive lock on a run directory, held by a live run and released by the kernel when it dies."""

    def __init__(self, path: Path):
        self.path = Path(path) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or say in one line which live run holds it."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot open the run's lock file ({e.strerror or e})"
                              ) from None
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
        with contextlib.suppress(OSError):  # who holds it is a courtesy, not a requirement
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


class NoLock:
    """The lock of a process that does not own the run directory (processes other than 0)."""

    def acquire(self) -> None:
        """Nothing: process 0 holds RUN_DIR/.lock for the whole job."""

    def release(self) -> None:
        """Nothing to release."""


class RunDir:
    """One run's directory, for the run that writes it (see the module docstring for its files)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # ---- paths ----

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

    @property
    def marker_path(self) -> Path:
        """run.json: the proof that taylorcli created this folder's run."""
        return self.path / MARKER

    # ---- what the folder holds ----

    def is_run(self) -> bool:
        """Whether taylorcli created a run here (its marker is there)."""
        return self.marker_path.is_file()

    def check_usable(self) -> str:
        """'new' for a missing or empty folder, 'run' for a taylorcli run; else one line why not."""
        p = self.path
        if not p.exists():
            return "new"
        if not p.is_dir():
            raise RunDirError(f"--out {p}: is a file, not a folder; choose a new folder")
        if self.is_run():
            info = self.read_info()
            if info.get("kind") == "sweep":
                raise RunDirError(f"--out {p}: holds a spawn sweep (atE/ runs and its summary), "
                                  f"not a run; choose another --out")
            return "run"
        entries = [e.name for e in p.iterdir() if not e.name.startswith(".")]
        if not entries:
            return "new"
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise RunDirError(f"--out {p}: exists and is not a taylorcli run (no {MARKER}; it holds "
                          f"{shown}); taylorcli writes only into a new or empty folder or one of "
                          f"its own runs, so choose another --out")

    def prepare(self) -> None:
        """Create the directory, or say in one line why it cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise RunDirError(f"--out {self.path}: cannot write there ({e.strerror or e})") from None

    # ---- writing ----

    def _write(self, path: Path, data: bytes) -> None:
        """Every file of the run goes through here (atomically), with one line if it cannot."""
        try:
            write_atomic(path, data)
        except OSError as e:
            cause = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise RunDirError(f"{path}: cannot write ({cause}); the run stays resumable from its "
                              f"last checkpoint once this is fixed") from None

    def create(self, info: dict) -> None:
        """Mark the folder as a taylorcli run (run.json), before anything else is written."""
        self._write(self.marker_path, (json.dumps(info, indent=1) + "\n").encode())

    def read_info(self) -> dict:
        """run.json as a dict ({} when missing or unreadable)."""
        try:
            info = json.loads(self.marker_path.read_text())
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def clear_results(self) -> None:
        """Remove what taylorcli wrote for this run (on an explicit --no-resume), nothing else."""
        if not self.is_run():
            return
        for name in RESULT_FILES:
            (self.path / name).unlink(missing_ok=True)
        for folder in ARRAY_FOLDERS:
            for f in self.saved_files(folder):
                f.unlink()
            with contextlib.suppress(OSError):  # kept if it holds something of the user's
                (self.path / folder).rmdir()
        ckpt = self.checkpoints_path
        if ckpt.is_dir():
            for entry in ckpt.iterdir():
                # orbax's step folders (and its temporaries): digits, maybe with a suffix
                if entry.is_dir() and re.fullmatch(r"\d+(\.orbax-checkpoint-tmp.*)?", entry.name):
                    shutil.rmtree(entry)
            with contextlib.suppress(OSError):
                ckpt.rmdir()

    def write_recipe(self, text: str) -> None:
        """The fully resolved recipe, as run."""
        self._write(self.path / "recipe.yaml", text.encode())

    def write_table(self, name: str, rows: list[dict], columns: list[str]) -> str:
        """A whole CSV table of the run (metrics.csv, an analysis's table), atomically; its text."""
        text = table_text(rows, columns)
        self._write(self.path / name, text.encode())
        return text

    def write_step_arrays(self, folder: str, step: int, arrays: dict) -> None:
        """folder/stepNNNNNNNN.npz: one array per model name ('/' stored as '__')."""
        buf = io.BytesIO()
        np.savez(buf, **{k.replace("/", "__"): np.asarray(v) for k, v in arrays.items()})
        self._write(self.path / folder / f"step{step:08d}.npz", buf.getvalue())

    # ---- reading (also what a resumed run reads back) ----

    def read_step_arrays(self, folder: str, step: int) -> dict[str, np.ndarray]:
        """The arrays `write_step_arrays` saved in folder at `step`, by model name."""
        return read_step_arrays(self.path / folder, step)

    def saved_files(self, folder: str) -> list[Path]:
        """folder's stepNNNNNNNN.npz files, oldest first (nothing else in it)."""
        where = self.path / folder
        if not where.is_dir():
            return []
        return sorted(p for p in where.iterdir() if _STEP_FILE.fullmatch(p.name))

    def saved_steps(self, folder: str) -> list[int]:
        """Steps with arrays saved in folder, oldest first."""
        return [int(_STEP_FILE.fullmatch(p.name).group(1)) for p in self.saved_files(folder)]

    def read_rows(self, name: str, columns: list[str]) -> list[dict] | None:
        """A table of the run as rows of Python values, or None when the file is missing."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            table = pd.read_csv(path, dtype={c: str for c in ("model", "layer", "child_a",
                                                              "child_b") if c in columns},
                                keep_default_na=True)
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path}: not a readable CSV table ({type(e).__name__})") from None
        if list(table.columns) != list(columns):
            raise RunDirError(f"{path}: expected the columns {', '.join(columns)}")
        return [{k: _plain(v) for k, v in row.items()} for row in table.to_dict("records")]

    def read_recipe(self) -> Recipe:
        """The recipe this run was made with (recipe.yaml), or one line why it cannot be read."""
        path = self.path / "recipe.yaml"
        if not path.is_file():
            raise RunDirError(f"{self.path}: not a run directory (no recipe.yaml); expected the "
                              f"--out folder of a `taylorcli train` run")
        try:
            return load_recipe(path)
        except RecipeError as e:
            raise RunDirError(f"{self.path}: unreadable recipe.yaml ({e})") from None


class ReadOnlyRunDir(RunDir):
    """The run directory as seen by processes other than 0: read it, never write it."""

    def prepare(self) -> None:
        """Nothing: process 0 creates the directory."""

    def _write(self, path: Path, data: bytes) -> None:
        """Nothing: process 0 writes every file."""

    def clear_results(self) -> None:
        """Nothing: process 0 clears it."""


def _plain(value: Any) -> Any:
    """numpy scalars from pandas as Python values (so re-written tables are byte-identical)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_step_arrays(folder: Path, step: int) -> dict[str, np.ndarray]:
    """folder/stepNNNNNNNN.npz, by model name."""
    with np.load(Path(folder) / f"step{step:08d}.npz") as saved:
        return {k.replace("__", "/"): saved[k] for k in saved.files}


def rows_until(rows: list[dict], step: int | None = None, epoch: float | None = None) -> list[dict]:
    """The rows up to and including `step` (or `epoch`, for tables without a step column)."""
    if step is not None:
        return [r for r in rows if r["step"] <= step]
    return [r for r in rows if r["epoch"] <= epoch + EPOCH_TOL]


def trains_subset(recipe: Recipe) -> bool:
    """Whether a recipe trains only part of its models (its runs save what merging needs)."""
    every = {FULL} | {f"order{k}" for k in recipe.taylor.orders}
    return recipe.models is not None and set(recipe.models) != every


def sweep_settings(recipe: Recipe) -> dict:
    """What makes spawned runs one sweep (run.json of its folder): parent, orders, children,
    re-expansions."""
    sp = recipe.spawn
    return {"parent": sp.parent, "orders": list(recipe.taylor.orders), "children": sp.children,
            "reexpand_every": list(sp.reexpand_every),
            "reexpand_doubling": list(sp.reexpand_doubling)}


def flat_displacement(params, theta0) -> np.ndarray:
    """θ − θ0 of one model as one float vector, leaves in pytree order (as metrics.cos_param)."""
    import jax

    return np.concatenate([np.ravel(np.asarray(p) - np.asarray(p0)) for p, p0 in
                           zip(jax.tree.leaves(params), jax.tree.leaves(theta0))])


# ---- a run read back ----

@dataclass(eq=False)  # eq would compare DataFrames element-wise
class Run:
    """One run directory read back: its recipe, metrics and layer movement as DataFrames.

    `recipe` is the recipe as a plain dict; `config` the same, validated (attribute access).
    `kernels`, `children` and `closed_form` are the analyses' tables (None when not computed),
    `logits(step)` the saved test logits. `notes` says which rows of metrics.csv were skipped.
    A run standing for repeats over seeds (`seeds`) has `<metric>_sd` columns beside its means.
    """

    path: Path
    name: str
    config: Recipe
    metrics: pd.DataFrame
    layers: pd.DataFrame | None
    parts: tuple[Path, ...] = ()  # the subset runs merged into this one (report/merge.py)
    info: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seeds: tuple[int, ...] = ()  # repeats averaged into this one (report/repeats.py)
    members: tuple[Path, ...] = ()  # their run directories

    @property
    def recipe(self) -> dict:
        """The resolved recipe as a nested dict (as in recipe.yaml)."""
        return recipe_to_dict(self.config)

    @cached_property
    def kernels(self) -> pd.DataFrame | None:
        """kernels.csv (eval.kernel_n), or None."""
        return _optional_table(self.path / "kernels.csv")

    @cached_property
    def children(self) -> pd.DataFrame | None:
        """children.csv (a spawned run with two or more children), or None."""
        return _optional_table(self.path / "children.csv")

    @cached_property
    def closed_form(self) -> pd.DataFrame | None:
        """closed_form.csv (eval.closed_form), or None."""
        return _optional_table(self.path / "closed_form.csv")

    def logits(self, step: int) -> dict[str, np.ndarray]:
        """Every model's test logits saved at `step` (logits/stepNNNNNNNN.npz), by model name."""
        folders = [p / "logits" for p in self.parts] or [self.path / "logits"]
        out: dict[str, np.ndarray] = {}
        for folder in folders:
            if not (folder / f"step{step:08d}.npz").is_file():
                raise RunDirError(f"{folder}: no logits saved at step {step} (saved at: "
                                  f"{', '.join(map(str, _steps_in(folder))) or 'none'})")
            out |= {k: v for k, v in read_step_arrays(folder, step).items() if k not in out}
        return out

    @property
    def parameters(self) -> int | None:
        """Scalar parameters per model, as recorded when the run started (None if not recorded)."""
        value = self.info.get("parameters")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def _anchor(self) -> pd.Series:
        # The full network's rows; a subset run without it goes by whatever it trained.
        is_full = self.metrics["model"] == FULL
        return is_full if is_full.any() else self.metrics["model"].notna()

    @property
    def last_epoch(self) -> float:
        """The latest epoch the full network (or, without it, any model) was evaluated at."""
        return float(self.metrics.loc[self._anchor, "epoch"].max())

    @property
    def complete(self) -> bool:
        """Whether metrics.csv reaches the recipe's final epoch."""
        return self.last_epoch >= self.config.train.epochs - EPOCH_TOL

    @property
    def status(self) -> str:
        """'complete', or 'incomplete (epoch E of N)'."""
        if self.complete:
            return "complete"
        return f"incomplete (epoch {self.last_epoch:g} of {self.config.train.epochs})"

    @property
    def models(self) -> list[str]:
        """Model names in table order: order1 … orderK, then the full network (as in the paper)."""
        orders = self.metrics.groupby("model")["order"].first()
        return sorted(orders.index, key=lambda m: (orders[m] == 0, orders[m]))

    def order_of(self, model: str) -> int:
        """Taylor order of a model of this run (0 for the full network)."""
        return int(self.metrics.loc[self.metrics["model"] == model, "order"].iloc[0])

    def epochs(self) -> np.ndarray:
        """Evaluated epochs of the full network (or, without it, any model), ascending."""
        return np.sort(self.metrics.loc[self._anchor, "epoch"].unique())

    def nearest_epoch(self, wanted: float) -> float:
        """The evaluated epoch equal to `wanted`, else the nearest one before it."""
        epochs = self.epochs()
        before = epochs[epochs <= wanted + EPOCH_TOL]
        return float(before.max()) if len(before) else float(epochs.min())

    def at(self, epoch: float) -> pd.DataFrame:
        """The metrics rows at one evaluated epoch, indexed by model."""
        rows = self.metrics[np.isclose(self.metrics["epoch"], epoch, rtol=0, atol=EPOCH_TOL)]
        return rows.set_index("model")

    def final(self) -> pd.DataFrame:
        """The metrics rows at the last evaluated epoch, indexed by model."""
        return self.at(self.last_epoch)

    def diverged(self) -> dict[str, float]:
        """Models marked diverged, with the first epoch at which they were."""
        flagged = self.metrics[self.metrics["diverged"].astype(str).str.lower() == "true"]
        return {m: float(g["epoch"].min()) for m, g in flagged.groupby("model")}


def _steps_in(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_FILE.fullmatch(p.name)))


def _optional_table(path: Path) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):
        return None


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype={"model": str, "layer": str})
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: not a readable CSV table ({type(e).__name__})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise RunDirError(f"{path}: missing columns {', '.join(missing)}; expected "
                          f"{', '.join(columns)}")
    return table


def clean_metrics(table: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, list[str]]:
    """metrics.csv without rows a run cannot have written (bad numbers, unknown models,
    duplicates), and a note for each kind dropped."""
    notes = []
    table = table.copy()
    for column in ("order", "epoch", "step"):
        table[column] = pd.to_numeric(table[column], errors="coerce")
    if "func_dist" not in table.columns:
        table["func_dist"] = np.nan
    for column in [c for c in METRICS_COLUMNS[4:] if c != "diverged"]:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    bad_numbers = table[["order", "epoch", "step"]].isna().any(axis=1)
    bad_names = ~table["model"].fillna("").astype(str).map(lambda m: bool(MODEL_NAME.fullmatch(m)))
    duplicated = table.duplicated(subset=["model", "step"], keep="first") & ~bad_numbers
    for mask, why in ((bad_numbers, "a non-numeric order, epoch or step"),
                      (bad_names & ~bad_numbers, "an unknown model name"),
                      (duplicated & ~bad_names, "a duplicate of an earlier (model, step) row")):
        if mask.any():
            lines = ", ".join(str(i + 2) for i in np.flatnonzero(mask.to_numpy())[:5])
            notes.append(f"{path}: skipped {int(mask.sum())} row(s) with {why} (line {lines}"
                         f"{', ...' if mask.sum() > 5 else ''})")
    keep = ~(bad_numbers | bad_names | duplicated)
    table = table[keep].reset_index(drop=True)
    table["order"] = table["order"].astype(int)
    table["step"] = table["step"].astype(int)
    return table, notes


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run directory (recipe.yaml + metrics.csv, layers.csv if there), or raise RunDirError."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}: no such run directory")
    for needed in ("recipe.yaml", "metrics.csv"):
        if not (path / needed).is_file():
            raise RunDirError(f"{path}: not a run directory (no {needed}); expected the --out "
                              f"folder of a `taylorcli train` run")
    run_dir = RunDir(path)
    recipe = run_dir.read_recipe()
    metrics, notes = clean_metrics(_read_table(path / "metrics.csv", REQUIRED_METRICS),
                                   path / "metrics.csv")
    if metrics.empty:
        raise RunDirError(f"{path / 'metrics.csv'}: no rows yet; the run has not reached its "
                          f"first evaluation")
    layers = None
    if (path / "layers.csv").is_file():
        layers = _read_table(path / "layers.csv", LAYERS_COLUMNS)
    return Run(path, name or path.name, recipe, metrics, layers, info=run_dir.read_info(),
               notes=notes)


def find_runs(root: Path, skip: Path | None = None) -> list[Path]:
    """Run directories at or under root (folders with recipe.yaml or metrics.csv), spawned runs too."""
    found = []
    for folder, subdirs, files in os.walk(root):
        here = Path(folder)
        if skip is not None and here.resolve() == skip.resolve():
            subdirs[:] = []
            continue
        if "recipe.yaml" in files or "metrics.csv" in files:
            found.append(here)
        # logits/, params/, kernels/ and checkpoints/ hold no runs; spawn sweeps do
        subdirs[:] = sorted(d for d in subdirs if not d.startswith(".") and d not in
                            (*ARRAY_FOLDERS, "checkpoints"))
    return sorted(found)

