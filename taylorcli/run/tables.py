"""A run's CSV tables: their columns, their text, and the rows a live run keeps in memory.

Every table is rewritten whole (atomically) when it grows; a checkpoint records each table's
row count and digest, so a resumed run takes its rows back from its own files, cut at the
restored step, and refuses files that were damaged or edited since.
"""

from __future__ import annotations

import hashlib
import io

import pandas as pd

from ..errors import RunDirError

METRICS_COLUMNS = [
    "model", "order", "epoch", "step", "lr", "train_loss", "train_acc",
    "test_loss", "test_acc", "cos_param", "cos_func", "diverged", "func_dist", "wall_time",
    "param_dist",
]
# what earlier versions wrote (no func_dist before 0.2, no wall_time or param_dist before
# 0.3): still read
REQUIRED_METRICS = METRICS_COLUMNS[:12]
OPTIONAL_METRICS = METRICS_COLUMNS[12:]
LAYERS_COLUMNS = ["model", "epoch", "layer", "distance", "relative_distance"]
EPOCH_TOL = 1e-6  # metrics.csv rounds epochs to 6 decimals
TEXT_COLUMNS = ("model", "layer", "child_a", "child_b")


def table_text(rows: list[dict], columns: list[str]) -> str:
    """CSV text of rows, 8 significant digits: what every table of a run is written as."""
    buf = io.StringIO()
    pd.DataFrame(rows, columns=columns).to_csv(buf, index=False, float_format="%.8g")
    return buf.getvalue()


def digest(text: str) -> str:
    """A short fingerprint of a table's text, stored in checkpoints to detect damage."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def rows_until(rows: list[dict], step: int | None = None, epoch: float | None = None) -> list[dict]:
    """The rows up to and including `step` (or `epoch`, for tables without a step column)."""
    if step is not None:
        return [r for r in rows if r["step"] <= step]
    return [r for r in rows if r["epoch"] <= epoch + EPOCH_TOL]


class Tables:
    """The run's CSV tables as rows in memory, each rewritten whole (atomically) when it grows."""

    def __init__(self, run, tables: list[tuple[str, list[str]]]):
        self.run = run
        self.columns = dict(tables)
        self.rows: dict[str, list[dict]] = {name: [] for name in self.columns}
        self.texts: dict[str, str] = {}

    def extend(self, name: str, rows: list[dict]) -> None:
        """Add rows to a table and write it."""
        self.rows[name] += rows
        self.texts[name] = self.run.write_table(name, self.rows[name], self.columns[name])

    def fingerprints(self) -> dict[str, dict]:
        """Each written table's row count and digest, for the checkpoint."""
        return {name: {"rows": len(self.rows[name]), "digest": digest(text)}
                for name, text in self.texts.items()}

    def restore(self, recorded: dict | None, step: int, steps_per_epoch: int) -> None:
        """The rows up to `step` from the run's own files, checked against the checkpoint's digests."""
        for name, columns in self.columns.items():
            found = self.run.read_rows(name, columns)
            path = self.run.path / name
            expected = (recorded or {}).get(name)
            if found is None:
                if expected:
                    raise RunDirError(f"{path}: missing; its rows up to step {step} cannot be "
                                      f"rebuilt from the checkpoint; restore the file, or start "
                                      f"over with --no-resume (it deletes this run's results "
                                      f"and checkpoints)")
                continue
            rows, written = found  # written: the columns the file has (an older run: fewer)
            cut = rows_until(rows, epoch=step / steps_per_epoch) if "step" not in columns \
                else rows_until(rows, step=step)
            text = table_text(cut, written)
            if expected and (len(cut) != expected["rows"] or digest(text) != expected["digest"]):
                raise RunDirError(f"{path}: differs from what the run had written by step "
                                  f"{step} (damaged or edited); restore it, or start over with "
                                  f"--no-resume (it deletes this run's results and checkpoints)")
            self.rows[name] = cut
            if expected:
                self.texts[name] = text
