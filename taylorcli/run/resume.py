"""Continuing a run: the same recipe or a refusal, and the storage and evaluation changes a
resumed run may make (each recorded in run.json)."""

from __future__ import annotations

from ..errors import RunDirError
from ..recipe import STORAGE_KEYS, Recipe, dump_recipe, recipe_to_dict
from .directory import RunDir

# Recipe keys a resumed run may change: where data and checkpoints live, how and when it
# evaluates, how models are placed on devices, what it logs.
RESUMABLE_CHANGES = STORAGE_KEYS + ("eval.every_epochs", "eval.steps", "log.")


def record_changes(run: RunDir, recipe: Recipe, step: int, changes: list[str]) -> None:
    """A resumed run with changed storage or evaluation settings: say so in run.json and recipe.yaml."""
    info = run.read_info()
    info.setdefault("resumed_with", []).append({"step": step, "changes": changes})
    run.create(info)
    run.write_recipe(dump_recipe(recipe))


def check_same_recipe(run: RunDir, recipe: Recipe) -> list[str]:
    """Refuse to continue a run with another recipe; the allowed changes, as 'key: old -> new'."""
    saved = run.read_recipe()
    diffs = list(_differences(recipe_to_dict(recipe), recipe_to_dict(saved)))
    refused = [d for d in diffs if not d[0].startswith(RESUMABLE_CHANGES)]
    if refused:
        shown = "; ".join(f"{k}: {old!r} there, {new!r} here" for k, new, old in refused[:3])
        raise RunDirError(f"--out {run.path}: holds a run of a different recipe ({shown}); "
                          f"choose another --out, or pass --no-resume to start this one over "
                          f"(it deletes the run's results and checkpoints)")
    return [f"{k}: {old!r} -> {new!r}" for k, new, old in diffs]


def _differences(new: dict, old: dict, prefix: str = ""):
    for key, value in new.items():
        if isinstance(value, dict):
            yield from _differences(value, old.get(key) or {}, f"{prefix}{key}.")
        elif old.get(key) != value:
            yield f"{prefix}{key}", value, old.get(key)


