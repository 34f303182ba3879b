"""The Python API: `train` runs exactly what `taylorcli train` runs; `load_run` reads any run back.

    import taylorcli
    run = taylorcli.train("digits", out="runs/digits", set={"train.epochs": 5})
    run.metrics                      # a pandas DataFrame, one row per (model, evaluation)
    taylorcli.load_run("runs/digits").logits(0)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from .recipe import Recipe, load_named_recipe, recipe_from_dict, recipe_to_dict
from .run.directory import Run, load_run

__all__ = ["train", "load_run", "Run", "as_recipe", "run_training"]


def _override_strings(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    """`--set` strings from a dict {'optim.lr': 0.01} (values as YAML) or a list of 'k=v'."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        # JSON is YAML, so every value reads back as the same value (lists, null, strings).
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return [str(text) for text in overrides]


def as_recipe(recipe: str | Path | Mapping | Recipe,
              overrides: Mapping[str, Any] | Sequence[str] | None = None) -> Recipe:
    """A validated recipe from a YAML path, a bundled recipe's name, a dict or a Recipe."""
    sets = _override_strings(overrides)
    if isinstance(recipe, Recipe):
        return recipe_from_dict(recipe_to_dict(recipe), recipe.name, sets)
    if isinstance(recipe, Mapping):
        return recipe_from_dict(dict(recipe), "<recipe dict>", sets)
    return load_named_recipe(recipe, sets)


def run_training(recipe: Recipe, out: str | Path | None = None, progress=None,
                 resume: bool = True, source: str = "recipe"):
    """Train a validated recipe with the analyses it asks for; the loop's TrainResult."""
    from .analyses.requested import requested
    from .run.loop import train as train_loop

    out = Path(out) if out is not None else Path("runs") / recipe.name
    return train_loop(recipe, str(out), progress, resume=resume, source=source,
                      analyses=requested)


def train(recipe: str | Path | Mapping | Recipe, out: str | Path | None = None,
          set: Mapping[str, Any] | Sequence[str] | None = None, *, resume: bool = True,
          progress: bool | Any = False) -> Run:
    """Train a recipe (path, bundled name, dict or Recipe) as `taylorcli train` does; the run, read back.

    `set` overrides fields ({'optim.lr': 0.01} or ['optim.lr=0.01']); `out` defaults to
    runs/NAME; an existing run there is continued (`resume=False` starts it over).
    `progress=True` shows the same progress as the command line.
    """
    r = as_recipe(recipe, set)
    if progress is True:
        from .run.progress import make_progress

        progress = make_progress()
    result = run_training(r, out, progress or None, resume=resume, source=str(r.name))
    return load_run(result.run_dir.path)
