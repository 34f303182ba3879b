"""Recipe field types: each constraint lives in the annotation, and the error text is read from it."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

INT32 = 2**31 - 1  # steps and sizes live in int32 arrays on the device

class SequenceKind:
    """Marks a list field: 'increasing', 'distinct' (kept in order) or 'set' (distinct, sorted)."""

    def __init__(self, kind: str):
        self.kind = kind


class Says:
    """What a field accepts, in words, where its type alone does not say it."""

    def __init__(self, text: str):
        self.text = text


def _number_from_text(value: Any) -> Any:
    if isinstance(value, str):
        try:  # pyyaml reads `1e-3` as a string, and researchers write it that way
            return float(value)
        except ValueError:
            return value
    return value


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, (int, float, str)):  # `decay_epochs: 5` means [5]
        return (value,)
    return value


def _check_sequence(kind: str):
    def check(value: tuple) -> tuple:
        if kind == "increasing" and any(a >= b for a, b in zip(value, value[1:])):
            raise PydanticCustomError("sequence", "not increasing")
        if kind in ("distinct", "set") and len(set(value)) != len(value):
            raise PydanticCustomError("sequence", "not distinct")
        return tuple(sorted(value)) if kind == "set" else value
    return check


def Int(ge: int = 0, le: int = INT32) -> Any:
    """An integer field within [ge, le] (booleans and floats refused)."""
    return Annotated[int, Field(ge=ge, le=le)]


def Num(**bounds) -> Any:
    """A finite number field with bounds (gt/ge/lt/le); integers and '1e-3' text accepted."""
    return Annotated[float, BeforeValidator(_number_from_text), Field(allow_inf_nan=False, **bounds)]


def Seq(item: Any, kind: str | None = None) -> Any:
    """A list field of `item`s (a single value counts as a list of one)."""
    marks: list = [BeforeValidator(_as_tuple)]
    if kind:
        marks += [AfterValidator(_check_sequence(kind)), SequenceKind(kind)]
    return Annotated[tuple[item, ...], *marks]


class Section(BaseModel):
    """One recipe section: unknown keys refused, values immutable and strictly typed."""

    # The string under each field is its description: `taylorcli recipes --fields` prints them.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True,
                              use_attribute_docstrings=True)

