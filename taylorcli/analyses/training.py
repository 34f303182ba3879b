"""Training with every analysis the recipe asks for: the one function every entry point (the
command line, the Python API, `paper --local`, `spawn`) trains through, so none of them can
forget `eval.kernel_n`, `eval.closed_form` or a spawned run's children."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..recipe import Recipe
from ..run.loop import TrainResult, train_run
from .requested import requested


def train_recipe(recipe: Recipe, out: str | Path | None = None, progress=None,
                 resume: bool = True, source: str = "recipe", model: Any = None) -> TrainResult:
    """Train a validated recipe into `out` (default runs/NAME) with the analyses it asks for."""
    out = Path(out) if out is not None else Path("runs") / recipe.name
    return train_run(recipe, str(out), requested, progress, resume=resume, source=source,
                     model=model)
