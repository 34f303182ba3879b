"""The small interface between the training loop and the optional analyses it runs.

At every evaluation point the loop calls each analysis with the state and the point; the
analysis returns its table's rows, and writes any arrays through the run directory it was
given. The loop writes the table (`analysis.file`, `analysis.columns`) and, on resume, hands
back the rows it already had. Which analyses a recipe asks for is decided by the caller of
the loop (`taylorcli.analyses.requested`), so this layer never imports them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

from .directory import RunDir


@dataclass(frozen=True)
class RunContext:
    """What an analysis may use: the run's recipe, data, engine, evaluator and directory."""

    recipe: Any  # the Recipe
    ds: Any  # the loaded Dataset
    spec: Any  # its DatasetSpec
    engine: Any  # the lockstep Engine
    evaluator: Any  # the Evaluator (test set, logits)
    run: RunDir
    points: list[int]  # evaluation steps
    schedule: Callable[[int], float]  # learning rate per step


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

    def __call__(self, state: dict, point: Point) -> list[dict]:
        """The table's new rows at this point."""


AnalysisFactory = Callable[[RunContext], list[Analysis]]


def no_analyses(context: RunContext) -> list[Analysis]:
    """For recipes that ask for none (and for callers that only train)."""
    return []
