"""The recipe: what one run trains, validated before anything is built.

    schema.py     the pydantic schema (one section per part of a run) and its cross-field rules
    fields.py     the field types, whose annotations carry their bounds and words
    messages.py   one-line errors worded from the schema
    yaml_text.py  safe YAML in and out (no objects, no duplicate keys, no alias bombs)
    reading.py    a YAML file or a bundled name, `--set` overrides, validation
    bundled.py    the recipes that ship inside taylorcli
    writing.py    a recipe as a dict, as dotted keys, as YAML; what makes its setting
"""

from ..errors import RecipeError
from .bundled import bundled_recipes, recipe_description, resolve_recipe
from .reading import MAX_RECIPE_BYTES, load_named_recipe, load_recipe, recipe_from_dict
from .schema import KEYS, SECTIONS, Recipe
from .writing import STORAGE_KEYS, dump_recipe, recipe_to_dict, recipe_to_flat, replace, \
    setting_key, sweep_settings, trains_subset
from .yaml_text import parse_yaml

__all__ = ["Recipe", "RecipeError", "load_recipe", "load_named_recipe", "recipe_from_dict",
           "recipe_to_dict", "recipe_to_flat", "dump_recipe", "bundled_recipes",
           "recipe_description", "resolve_recipe", "replace", "setting_key", "STORAGE_KEYS",
           "KEYS", "SECTIONS", "MAX_RECIPE_BYTES", "parse_yaml", "sweep_settings", "trains_subset"]
