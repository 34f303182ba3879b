"""One-line recipe errors, worded from the schema: which key, what it accepts, what it got.

What a field accepts is read from its annotation ('a number >= 0 and < 1'); an unknown key
gets a close valid key as a hint; of pydantic's errors the first, in schema order, is said.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types as at
from pydantic import ValidationError

from ..errors import RecipeError
from .fields import Says, SequenceKind
from .schema import FIELDS, KEYS, SECTIONS, TOP_KEYS

_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"),
          str: ("a string", "strings"), bool: ("true or false", "booleans")}
_BOUNDS = ((at.Ge, "ge", ">="), (at.Gt, "gt", ">"), (at.Le, "le", "<="), (at.Lt, "lt", "<"))


def _unwrap(tp: Any) -> tuple[Any, list, bool]:
    """An annotation without its Annotated/Optional wrappers, their metadata, and whether None is allowed."""
    meta: list = []
    optional = False
    while True:
        if get_origin(tp) is Annotated:
            tp, *more = get_args(tp)
            meta += more
        elif get_origin(tp) is not None and type(None) in get_args(tp):
            tp = next(a for a in get_args(tp) if a is not type(None))
            optional = True
        else:
            return tp, meta, optional


def _limits(meta: list) -> str:
    parts = []
    for m in meta:
        for item in getattr(m, "metadata", [m]):  # Field(...) carries its bounds inside
            for cls, attr, op in _BOUNDS:
                if isinstance(item, cls):
                    value = getattr(item, attr)
                    parts.append(f"{op} {value}" if isinstance(value, int) else f"{op} {value:g}")
    return " and ".join(parts)


def expected(key: str) -> str:
    """Human description of what dotted `key` accepts, e.g. 'a number >= 0 and < 1'."""
    info = FIELDS[key]
    tp, meta, optional = _unwrap(info.annotation)
    meta += info.metadata
    seq = next((m.kind for m in meta if isinstance(m, SequenceKind)), None)
    says = next((m.text for m in meta if isinstance(m, Says)), None)
    if says:
        text = says
    elif get_origin(tp) is tuple:
        item, item_meta, _ = _unwrap(get_args(tp)[0])
        text = f"{_NOUNS[item][1]} {_limits(item_meta)}".strip()
        text = {"increasing": "a strictly increasing list of ", "distinct": "a list of distinct ",
                "set": "a list of distinct "}.get(seq, "a list of ") + text
    elif get_origin(tp) is Literal:
        text = "one of " + ", ".join(map(str, get_args(tp)))
    elif get_origin(tp) is dict:
        text = "a mapping of plain values"
    else:
        text = f"{_NOUNS[tp][0]} {_limits(meta)}".strip()
    return text + (" or null" if optional else "")


def unknown_key(where: str, key: str) -> RecipeError:
    """Error for an unknown dotted key, with a close valid key as a hint when there is one."""
    section, dot, rest = key.partition(".")
    if dot and section in SECTIONS:
        names = {n: f"{section}.{n}" for n in SECTIONS[section].model_fields}
        close = difflib.get_close_matches(rest, list(names), n=1)
    else:
        names = {k: k for k in TOP_KEYS}
        close = difflib.get_close_matches(key, list(names), n=1)
        if not close:  # a section key written at top level, e.g. `lr: 0.1`
            names = {k.rpartition(".")[2]: k for k in reversed(KEYS)}
            close = difflib.get_close_matches(key, list(names), n=1)
    hint = f" (did you mean '{names[close[0]]}'?)" if close else ""
    return RecipeError(f"{where}: unknown key '{key}'{hint}")



def first_error(error: ValidationError, raw: dict, where) -> RecipeError:
    """The first of pydantic's errors as one line naming the key, in schema order."""
    e = error.errors()[0]
    if e["type"] == "cross_field":
        ctx = e["ctx"]
        return RecipeError(f"{where(*ctx['keys'])}: key {ctx['key']}: {ctx['text']}")
    if e["type"] == "value":  # a rule of one field, with its own words
        key = ".".join(str(p) for p in e["loc"] if isinstance(p, str))
        return RecipeError(f"{where(key)}: key {key}: {e['msg']}, got {e['input']!r}")
    loc = [str(part) for part in e["loc"] if isinstance(part, str)]
    key = ".".join(loc[:2]) if loc and loc[0] in SECTIONS else loc[0] if loc else "recipe"
    if key not in FIELDS:  # cannot happen after _structure; say what pydantic said
        return RecipeError(f"{where(key)}: key {key}: {e['msg']}")
    section, dot, leaf = key.partition(".")
    value = raw[section].get(leaf) if dot else raw.get(key)
    return RecipeError(f"{where(key)}: key {key}: expected {expected(key)}, got {value!r}")

