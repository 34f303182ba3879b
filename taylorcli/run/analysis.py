"""The small interface between the training loop and the optional analyses it runs.

At every evaluation point the loop calls each analysis with the state and the point; the
analysis returns its table's rows, and writes any arrays through the run directory it was
given. The loop writes the table (`analysis.file`, `analysis.columns`) and, on resume, hands
back the rows it already had. Which analyses a recipe asks for is decided one layer up
(`taylorcli.analyses.training`, the one function every entry point trains through), so this
layer never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from ..data import Dataset, DatasetSpec
from ..engine.evaluation import Evaluator
from ..engine.lockstep import Engine
from ..engine.setup import Setup
from ..engine.state import LockstepState
from ..recipe import Recipe
from .directory import RunDir


@dataclass(frozen=True)
class RunContext:
    """What an analysis may use: the run's setup, the engine as placed on the devices, the
    evaluator (test set, logits), the run directory, the evaluation steps and the schedule."""

    setup: Setup
    engine: Engine
    evaluator: Evaluator
    run: RunDir
    points: list[int]  # evaluation steps
    schedule: Callable[[int], float]  # learning rate per step

    @property
    def recipe(self) -> Recipe:
        """The run's resolved recipe."""
        return self.setup.recipe

    @property
    def ds(self) -> Dataset:
        """The loaded dataset."""
        return self.setup.data

    @property
    def spec(self) -> DatasetSpec:
        """The dataset's shapes and constants."""
        return self.setup.spec


@dataclass(frozen=True)
class Point:
    """One evaluation point: its step and epoch, and every model's test logits there."""

    step: int
    epoch: float
    logits: dict


class Analysis(Protocol):
    """An optional measurement: one table of rows, extended at every evaluation point."""

    file: str  # its table in the run directory, e.g. "kernels.csv"
    columns: list[str]

    def __call__(self, state: LockstepState, point: Point) -> list[dict]:
        """The table's new rows at this point."""


AnalysisFactory = Callable[[RunContext], list[Analysis]]

