"""The recipes that ship inside taylorcli (the package `taylorcli.recipes`, the checkout's
recipes/ folder): found by name in any install, listed by `taylorcli recipes`."""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import RecipeError

def bundled_recipes() -> dict[str, Any]:
    """Name -> file of every recipe that ships with taylorcli, sorted by name."""
    folder = resources.files("taylorcli.recipes")
    found = {p.name[:-5]: p for p in folder.iterdir() if p.name.endswith(".yaml")}
    return dict(sorted(found.items()))


def recipe_description(path: Any) -> str:
    """A recipe's one-line description: the first line of its opening comment."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.lstrip("#").strip():
            return line.lstrip("#").strip()
        if line.strip() and not line.startswith("#"):
            break
    return "(no description)"


def resolve_recipe(recipe: str | Path) -> Path | Any:
    """A recipe argument as a file: a YAML path, or the name of a bundled recipe."""
    path = Path(recipe)
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in str(recipe):
        return path  # load_recipe says what is wrong with it
    bundled = bundled_recipes()
    if str(recipe) in bundled:
        return bundled[str(recipe)]
    close = difflib.get_close_matches(str(recipe), list(bundled), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise RecipeError(f"RECIPE {recipe}: no such file, and no bundled recipe of that "
                      f"name{hint}; bundled: {', '.join(bundled)} (see `taylorcli recipes`)")
