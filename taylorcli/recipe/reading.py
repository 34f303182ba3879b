"""Reading a recipe: a YAML file or a bundled recipe's name, `--set` overrides, validation.

Every failure is one line naming the file or flag, the key, what it accepts and what it got.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Mapping, Sequence

from pydantic import ValidationError

from ..errors import RecipeError
from ..names import BUILTIN_ARCHS
from .bundled import resolve_recipe
from .messages import first_error, unknown_key
from .schema import FIELDS, SECTIONS, TOP_KEYS, Recipe
from .yaml_text import parse_yaml

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few hundred bytes; anything near this is not one


def _parse_override(text: str) -> tuple[str, Any]:
    """Split and check one `--set a.b=value` string into (dotted key, parsed value)."""
    where = f"--set {text}"
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise RecipeError(f"{where}: expected key=value")
    if key in SECTIONS:
        example = next(iter(SECTIONS[key].model_fields))
        raise RecipeError(f"{where}: '{key}' is a section, not a value; set one of its keys, "
                          f"e.g. {key}.{example}=...")
    if key not in FIELDS:
        raise unknown_key(where, key)
    return key, parse_yaml(raw, where) if raw.strip() else None


def _structure(raw: Any, source: str) -> dict:
    """Check the recipe's shape (a mapping of sections, known keys); a copy safe to edit."""
    if raw is None:
        raise RecipeError(f"{source}: recipe is empty; expected a mapping of sections "
                          f"({', '.join(SECTIONS)})")
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: top level must be a mapping of sections, got "
                          f"{type(raw).__name__}")
    raw = dict(raw)
    for key in raw:
        if key in FIELDS and key not in TOP_KEYS:  # dotted paths are --set syntax, not nesting
            section, _, leaf = key.partition(".")
            raise RecipeError(f"{source}: unknown key '{key}' (write it nested: '{section}:' "
                              f"then '  {leaf}: ...')")
        if key not in TOP_KEYS:
            raise unknown_key(source, str(key))
    for name in SECTIONS:
        section = {} if raw.get(name) is None else raw[name]  # every line commented out
        if not isinstance(section, dict):
            raise RecipeError(f"{source}: key {name}: expected a mapping of {name}.* keys, "
                              f"got {section!r}")
        for key in section:
            if f"{name}.{key}" not in FIELDS:
                raise unknown_key(source, f"{name}.{key}")
        raw[name] = dict(section)
    return raw


def recipe_from_dict(raw: Mapping | None, source: str = "<recipe>",
                     overrides: Sequence[str] = ()) -> Recipe:
    """Validate a raw nested dict (plus `--set` overrides) into a Recipe."""
    raw = _structure(raw, source)
    origin: dict[str, str] = {}  # dotted key -> the --set flag that last set it
    for text in overrides:
        key, value = _parse_override(text)
        section, dot, leaf = key.partition(".")
        if dot:
            raw[section][leaf] = value
        else:
            raw[key] = value
        origin.pop(key, None)
        origin[key] = f"--set {text}"

    def where(*keys: str) -> str:
        flags = [flag for key, flag in origin.items() if key in keys]
        return flags[-1] if flags else source

    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise first_error(e, raw, where) from None


def _read_text(path: Path, source: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except FileNotFoundError:
        raise RecipeError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise RecipeError(f"{source}: is a directory, not a recipe file") from None
    except OSError as e:
        raise RecipeError(f"{source}: cannot read ({e.strerror or e})") from None
    if len(data) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{source}: larger than {MAX_RECIPE_BYTES // 1024} KiB; expected a "
                          f"recipe (a few hundred bytes of YAML)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"{source}: not UTF-8 text") from None


@functools.lru_cache(maxsize=64)
def _parsed_once(text: str, source: str) -> Any:
    return parse_yaml(text, source)


def _parsed(text: str, source: str) -> Any:
    """A recipe file's YAML, parsed once per text (a plan of a thousand runs of one recipe
    reads it a thousand times); a deep copy, since the caller edits it."""
    return copy.deepcopy(_parsed_once(text, source))


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Read a recipe YAML file, apply `--set` overrides and validate it."""
    path = Path(path)
    source = str(path)
    raw = _parsed(_read_text(path, source), source)
    if isinstance(raw, dict) and "name" not in raw:
        raw = {"name": path.stem, **raw}
    return with_module_path(recipe_from_dict(raw, source, overrides), path.parent)


def load_named_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """`load_recipe` for a path or a bundled recipe's name."""
    found = resolve_recipe(recipe)
    if isinstance(found, Path):
        return load_recipe(found, overrides)
    source = f"{recipe} (bundled recipe)"
    raw = _parsed(found.read_text(encoding="utf-8"), source)
    if isinstance(raw, dict) and "name" not in raw:
        raw = {"name": str(recipe), **raw}
    return with_module_path(recipe_from_dict(raw, source, overrides),
                             Path(str(found)).parent)


def with_module_path(recipe: Recipe, folder: Path) -> Recipe:
    """A user module's recipe remembers the folder beside it, for resumes and spawns."""
    if recipe.model.arch in BUILTIN_ARCHS or recipe.model.module_path is not None:
        return recipe
    model = recipe.model.model_copy(update={"module_path": str(folder.resolve())})
    return recipe.model_copy(update={"model": model})
