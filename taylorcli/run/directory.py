"""A run directory, as the run that writes it sees it (DESIGN.md, "Run directory"):

    run.json        the marker: written when taylorcli creates the run (version, kind, parameter
                    count, dataset); nothing is deleted or overwritten in a folder without it
    recipe.yaml     the resolved recipe, as run
    metrics.csv     one row per (model, evaluation point)
    layers.csv      layer movement per (model, evaluation point, layer)
    *.csv           the analyses' tables (kernels.csv, closed_form.csv, children.csv)
    logits/ params/ kernels/   stepNNNNNNNN.npz arrays, one per model
    checkpoints/    orbax step folders
    tensorboard/    event files, when the recipe asks for them
    .lock           held by the live run

Every write and delete goes through `files.OwnedFolder` (atomic, regular files only, no links
followed). Processes other than 0 of a multi-process run get a `ReadOnlyRunDir`. Reading a
finished run back is `run/reading.py`'s.
"""

from __future__ import annotations

import errno
import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import OwnershipError, RecipeError, RunDirError
from ..files import OwnedFolder
from ..recipe import Recipe, load_recipe
from .tables import TEXT_COLUMNS, table_text

MARKER = "run.json"
ARRAY_FOLDERS = ("logits", "params", "kernels")
OWN_FOLDERS = (*ARRAY_FOLDERS, "checkpoints", "tensorboard")
RESULT_FILES = ("recipe.yaml", "metrics.csv", "layers.csv", "kernels.csv", "closed_form.csv",
                "children.csv")
STEP_FILE = re.compile(r"step(\d{8})\.npz")
CHECKPOINT_STEP = re.compile(r"\d+(\.orbax-checkpoint-tmp.*)?")


def step_file(step: int) -> str:
    """The name of a step's array file: stepNNNNNNNN.npz."""
    return f"step{step:08d}.npz"


def read_step_arrays(folder: Path, step: int) -> dict[str, np.ndarray]:
    """folder/stepNNNNNNNN.npz, by model name ('/' was stored as '__')."""
    with np.load(Path(folder) / step_file(step), allow_pickle=False) as saved:
        return {k.replace("__", "/"): saved[k] for k in saved.files}


def saved_steps(folder: Path) -> list[int]:
    """Steps with arrays saved in `folder`, oldest first (nothing else in it counts)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := STEP_FILE.fullmatch(p.name)))


class RunDir:
    """One run's directory, for the run that writes it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.folder = OwnedFolder(self.path, MARKER)

    # ---- paths ----

    @property
    def metrics_path(self) -> Path:
        """metrics.csv of this run."""
        return self.path / "metrics.csv"

    @property
    def checkpoints_path(self) -> Path:
        """The orbax checkpoints folder of this run."""
        return self.path / "checkpoints"

    @property
    def marker_path(self) -> Path:
        """run.json: the proof that taylorcli created this folder's run."""
        return self.folder.marker_path

    # ---- what the folder holds ----

    def is_run(self) -> bool:
        """Whether taylorcli created a run here (its marker is there)."""
        return self.folder.is_owned()

    def check_usable(self) -> str:
        """'new' for a missing or empty folder, 'run' for a taylorcli run; else one line why not."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunDirError(f"--out {p}: is a file, not a folder; choose a new folder")
        if self.is_run():
            kind = self.read_info().get("kind")
            if kind in ("sweep", "lr_search"):
                what = "a spawn sweep (atE/ runs and its summary)" if kind == "sweep" else \
                    "a learning-rate search"
                raise RunDirError(f"--out {p}: holds {what}, not a run; choose another --out")
            self.folder.check_no_links(OWN_FOLDERS)
            return "run"
        if self.folder.is_new():
            return "new"
        raise RunDirError(str(self.folder.refusal("a taylorcli run")))

    def prepare(self) -> None:
        """Create the directory, or say in one line why it cannot be written."""
        try:
            self.folder.check_writable()
        except OwnershipError as e:
            raise RunDirError(str(e)) from None

    # ---- writing ----

    def _write(self, relative: str, data: bytes) -> None:
        """Every file of the run goes through here, with one line if it cannot be written."""
        try:
            self.folder.write(relative, data)
        except OwnershipError as e:
            raise RunDirError(str(e)) from None
        except OSError as e:
            cause = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise RunDirError(f"{self.path / relative}: cannot write ({cause}); the run stays "
                              f"resumable from its last checkpoint once this is fixed") from None

    def create(self, info: dict) -> None:
        """Mark the folder as a taylorcli run (run.json), before anything else is written."""
        import json

        self._write(MARKER, (json.dumps(info, indent=1) + "\n").encode())

    def read_info(self) -> dict:
        """run.json as a dict ({} when missing or unreadable)."""
        return self.folder.read_marker()

    def clear_results(self) -> None:
        """Remove what taylorcli wrote for this run (on an explicit --no-resume), nothing else."""
        if not self.is_run():
            return
        self.folder.check_no_links(OWN_FOLDERS)
        for name in RESULT_FILES:
            self.folder.remove(name)
        for folder in ARRAY_FOLDERS:
            for step in saved_steps(self.path / folder):
                self.folder.remove(f"{folder}/{step_file(step)}")
            self.folder.remove_empty(folder)  # kept if it holds something of the user's
        ckpt = self.checkpoints_path
        if ckpt.is_dir():
            for entry in ckpt.iterdir():
                # orbax's step folders (and its temporaries): digits, maybe with a suffix
                if CHECKPOINT_STEP.fullmatch(entry.name):
                    self.folder.remove_tree(f"checkpoints/{entry.name}")
            self.folder.remove_empty("checkpoints")

    def write_recipe(self, text: str) -> None:
        """The fully resolved recipe, as run."""
        self._write("recipe.yaml", text.encode())

    def write_table(self, name: str, rows: list[dict], columns: list[str]) -> str:
        """A whole CSV table of the run (metrics.csv, an analysis's table), atomically; its text."""
        text = table_text(rows, columns)
        self._write(name, text.encode())
        return text

    def write_step_arrays(self, folder: str, step: int, arrays: dict) -> None:
        """folder/stepNNNNNNNN.npz: one array per model name ('/' stored as '__')."""
        buf = io.BytesIO()
        np.savez(buf, **{k.replace("/", "__"): np.asarray(v) for k, v in arrays.items()})
        self._write(f"{folder}/{step_file(step)}", buf.getvalue())

    # ---- reading (also what a resumed run reads back) ----

    def read_step_arrays(self, folder: str, step: int) -> dict[str, np.ndarray]:
        """The arrays `write_step_arrays` saved in folder at `step`, by model name."""
        return read_step_arrays(self.path / folder, step)

    def saved_steps(self, folder: str) -> list[int]:
        """Steps with arrays saved in folder, oldest first."""
        return saved_steps(self.path / folder)

    def read_rows(self, name: str, columns: list[str]) -> tuple[list[dict], list[str]] | None:
        """A table of the run as rows of Python values and the columns the file has (an older
        run's table may lack the newest trailing columns), or None when the file is missing."""
        path = self.path / name
        if not path.is_file():
            return None
        try:
            table = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS if c in columns},
                                keep_default_na=True)
        except (OSError, ValueError) as e:
            raise RunDirError(f"{path}: not a readable CSV table ({type(e).__name__})") from None
        written = list(table.columns)
        if written != list(columns)[:len(written)] or len(written) < _required(columns):
            raise RunDirError(f"{path}: expected the columns {', '.join(columns)}")
        return [{k: _plain(v) for k, v in row.items()} for row in table.to_dict("records")], \
            written

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


def _required(columns: list[str]) -> int:
    from .tables import METRICS_COLUMNS, REQUIRED_METRICS

    return len(REQUIRED_METRICS) if list(columns) == METRICS_COLUMNS else len(columns)


class ReadOnlyRunDir(RunDir):
    """The run directory as seen by processes other than 0: read it, never write it."""

    def prepare(self) -> None:
        """Nothing: process 0 creates the directory."""

    def _write(self, relative: str, data: bytes) -> None:
        """Nothing: process 0 writes every file."""

    def clear_results(self) -> None:
        """Nothing: process 0 clears it."""


def _plain(value):
    """numpy scalars from pandas as Python values (so re-written tables are byte-identical)."""
    if isinstance(value, np.generic):
        return value.item()
    return value
