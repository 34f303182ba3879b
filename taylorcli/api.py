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

from .errors import RecipeError
from .names import is_user_arch
from .recipe import Recipe, load_named_recipe, recipe_from_dict, recipe_to_dict
from .run.reading import Run, load_run

__all__ = ["train", "load_run", "Run", "as_recipe"]


def _override_strings(overrides: Mapping[str, Any] | Sequence[str] | str | None) -> list[str]:
    """`--set` strings from a dict {'optim.lr': 0.01} (values as YAML), a list of 'key=value'
    strings, or one such string."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        # JSON is YAML, so every value reads back as the same value (lists, null, strings).
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    if isinstance(overrides, Sequence) and all(isinstance(s, str) for s in overrides):
        return list(overrides)
    raise RecipeError(f"set: expected a dict {{'optim.lr': 0.01}}, a list of 'key=value' "
                      f"strings or one such string, got {type(overrides).__name__}")


def as_recipe(recipe: str | Path | Mapping | Recipe,
              overrides: Mapping[str, Any] | Sequence[str] | str | None = None) -> Recipe:
    """A validated recipe from a YAML path, a bundled recipe's name, a dict or a Recipe."""
    sets = _override_strings(overrides)
    if isinstance(recipe, Recipe):
        return recipe_from_dict(recipe_to_dict(recipe), recipe.name, sets)
    if isinstance(recipe, Mapping):
        return recipe_from_dict(dict(recipe), "<recipe dict>", sets)
    return load_named_recipe(recipe, sets)


def _model_override(model: Any) -> str:
    """`model.arch=PATH` for the caller's own network, so the run records where it lives (a
    resume or spawn from the command line imports it from there)."""
    path = f"{getattr(model, '__module__', '')}:{getattr(model, '__qualname__', '')}"
    if not is_user_arch(path):
        raise RecipeError(f"model: {type(model).__name__} {getattr(model, '__qualname__', '')}"
                          f" has no import path; pass a class, or a function returning a "
                          f"stax-style (init_fn, apply_fn) pair, defined at the top level of a "
                          f"module (the run records where it lives)")
    return f"model.arch={path}"


def train(recipe: str | Path | Mapping | Recipe, out: str | Path | None = None,
          set: Mapping[str, Any] | Sequence[str] | str | None = None, *, model: Any = None,
          resume: bool = True, progress: bool | Any = True) -> Run:
    """Train a recipe (path, bundled name, dict or Recipe) as `taylorcli train` does; the run, read back.

    `set` overrides fields ({'optim.lr': 0.01}, ['optim.lr=0.01'] or 'optim.lr=0.01'); `model`
    is your own network: a flax linen Module class, an nnx Module class, or a function returning
    a stax-style (init_fn, apply_fn) pair (its arguments from `model.kwargs`); `out` defaults to
    runs/NAME; an existing run there is continued (`resume=False` starts it over). Progress is
    printed as the command line prints it; `progress=False` trains silently.
    """
    from .analyses.training import train_recipe
    from .run.progress import QuietProgress, make_progress

    sets = _override_strings(set) + ([_model_override(model)] if model is not None else [])
    r = as_recipe(recipe, sets)
    shown = make_progress() if progress is True else QuietProgress() if progress is False \
        else progress
    result = train_recipe(r, out, shown, resume=resume, source=str(r.name), model=model)
    return load_run(result.run_dir.path)
