"""The recipe's fields as a table, written from the schema itself (key, what it accepts, the
default, the description), so the documentation cannot drift from the code:
`taylorcli recipes --fields` prints it, and recipes/README.md holds the same table (a test
keeps the two equal)."""

from __future__ import annotations

from pydantic_core import PydanticUndefined

from .messages import expected
from .schema import FIELDS, KEYS, SECTIONS

COLUMNS = ("key", "accepts", "default", "description")


def _default(key: str) -> str:
    value = FIELDS[key].default
    if value is PydanticUndefined:
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value) if value != {} else "{}"


def field_rows() -> list[dict]:
    """One row per settable key, in schema order."""
    return [{"key": key, "accepts": expected(key), "default": _default(key),
             "description": " ".join((FIELDS[key].description or "").split())} for key in KEYS]


def fields_markdown() -> str:
    """The fields as Markdown tables, one per section."""
    parts = []
    rows = field_rows()
    top = [r for r in rows if "." not in r["key"]]
    groups = [("top level", top)] + [
        (name, [r for r in rows if r["key"].startswith(f"{name}.")]) for name in SECTIONS]
    for title, group in groups:
        doc = "" if title == "top level" else f" — {' '.join(SECTIONS[title].__doc__.split())}"
        parts.append(f"### {title}{doc}\n")
        parts.append("| key | accepts | default | description |")
        parts.append("| --- | --- | --- | --- |")
        for r in group:
            cells = [f"`{r['key']}`", r["accepts"], f"`{r['default']}`", r["description"]]
            parts.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts.append("")
    return "\n".join(parts)
