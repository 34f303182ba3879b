"""A recipe written out: as a plain dict, as dotted keys, as YAML, and what makes its setting."""

from __future__ import annotations

from typing import Any, Sequence

from ..names import model_names
from .schema import Recipe
from .yaml_text import dump_yaml

# Keys that say where data, checkpoints and compiled programs live, or how evaluation is
# batched, not what a run learns: runs that differ only in them are the same setting.
STORAGE_KEYS = ("data.data_dir", "data.archive", "checkpoint.", "train.split_models",
                "train.compile_cache", "eval.batch_size", "eval.save_logits")


def setting_key(recipe: "Recipe", ignore: Sequence[str] = ()) -> str:
    """What makes a setting: every key but the storage keys and `ignore` (prefixes allowed)."""
    skip = STORAGE_KEYS + tuple(ignore)
    return repr(sorted((k, repr(v)) for k, v in recipe_to_flat(recipe).items()
                       if not k.startswith(skip)))


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain nested dict of builtins (tuples as lists) that round-trips through recipe_from_dict."""

    def plain(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: plain(v) for k, v in obj.items()}
        return [plain(x) for x in obj] if isinstance(obj, (tuple, list)) else obj

    return plain(recipe.model_dump())


def recipe_to_flat(recipe: Recipe) -> dict:
    """Every field of a recipe under its dotted key, e.g. {'optim.lr': 0.1, ...}."""
    return {key: value for name, section in recipe_to_dict(recipe).items()
            for key, value in (((f"{name}.{k}", v) for k, v in section.items())
                               if isinstance(section, dict) else [(name, section)])}


def dump_recipe(recipe: Recipe) -> str:
    """YAML text of a recipe, sections in schema order."""
    return dump_yaml(recipe_to_dict(recipe))


def replace(recipe: Recipe, **changes: Any) -> Recipe:
    """A copy of `recipe` with top-level fields changed, validated again."""
    return Recipe.model_validate({**recipe.model_dump(), **changes})


def trains_subset(recipe: Recipe) -> bool:
    """Whether a recipe trains only part of its models (its runs save what merging needs)."""
    return recipe.models is not None and set(recipe.models) != set(
        model_names(recipe.taylor.orders))


def sweep_settings(recipe: Recipe) -> dict:
    """What makes spawned runs one sweep (run.json of its folder): parent, orders, children,
    re-expansions."""
    sp = recipe.spawn
    return {"parent": sp.parent, "orders": list(recipe.taylor.orders), "children": sp.children,
            "reexpand_every": list(sp.reexpand_every),
            "reexpand_doubling": list(sp.reexpand_doubling)}
