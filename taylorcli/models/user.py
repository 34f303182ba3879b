"""The user's own network, named by import path in `model.arch` ('package.module:Name') or given
as an object to `taylorcli.train(..., model=...)`: a flax linen Module class, a flax nnx Module
class, or a callable returning a stax-style `(init_fn, apply_fn)` pair. Constructor arguments
come from `model.kwargs`; `num_classes` is filled in from the data when the constructor takes
it and kwargs does not set it."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect as pyinspect
import os
import sys
from typing import Any

from ..errors import ModelError
from .network import Network, linen_network, nnx_network, stax_network

KINDS_TEXT = ("a flax linen Module class, a flax nnx Module class, or a function returning a "
              "stax-style (init_fn, apply_fn) pair")


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"


def import_object(arch: str, module_path: str | None = None) -> Any:
    """The object 'package.module:Name' names, imported from module_path or the working directory."""
    module_name, _, attr = arch.partition(":")
    where = [p for p in (module_path, os.getcwd()) if p]
    added = [p for p in where if p not in sys.path]
    sys.path[:0] = added  # only while importing: the user's folder must not shadow anything later
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModelError(f"key model.arch: cannot import {module_name!r} ({e}); looked in "
                         f"{', '.join(where)} and the installed packages") from None
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's module failed importing
        raise ModelError(f"key model.arch: importing {module_name!r} failed "
                         f"({_one_line(e)})") from None
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)
    found = getattr(module, attr, None)
    if found is None:
        raise ModelError(f"key model.arch: module {module_name!r} has no attribute {attr!r}")
    return found


def _kind(obj: Any) -> str | None:
    """'linen', 'nnx', 'stax' (a callable that may return a pair), or None."""
    import flax.linen as nn
    from flax import nnx

    if isinstance(obj, type) and issubclass(obj, nn.Module):
        return "linen"
    if isinstance(obj, type) and issubclass(obj, nnx.Module):
        return "nnx"
    if isinstance(obj, nn.Module):
        return "linen-instance"
    if isinstance(obj, nnx.Module):
        return "nnx-instance"
    if isinstance(obj, tuple) and len(obj) >= 2 and all(callable(f) for f in obj[:2]):
        return "stax-pair"
    if callable(obj) and not isinstance(obj, type):
        return "stax"
    return None


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = pyinspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _kwargs(target: Any, kwargs: dict, num_classes: int, fields: set | None = None) -> dict:
    kwargs = dict(kwargs)
    takes = ("num_classes" in fields) if fields is not None else _accepts(target, "num_classes")
    if takes and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    return kwargs


def _built(label: str, kwargs: dict, build):
    try:
        return build()
    except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's constructor
        raise ModelError(f"key model.kwargs: {label}({', '.join(kwargs)}) cannot be built "
                         f"({_one_line(e)})") from None


def user_network(obj: Any, kwargs: dict, num_classes: int, label: str) -> Network:
    """A Network from the user's object (class, pair or function), with its constructor arguments."""
    kind = _kind(obj)
    if kind == "linen":
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) \
            else set()
        kw = _kwargs(obj, kwargs, num_classes, fields)
        return linen_network(_built(label, kw, lambda: obj(**kw)), label)
    if kind == "linen-instance":
        return linen_network(obj, label)
    if kind == "nnx":
        kw = _kwargs(obj, kwargs, num_classes)
        if not _accepts(obj, "rngs"):
            raise ModelError(f"key model.arch: {label} is an nnx Module class whose constructor "
                             f"takes no rngs; expected __init__(..., rngs: nnx.Rngs) so that "
                             f"taylorcli draws its initial parameters from the run's seed")
        return nnx_network(lambda rngs: obj(**kw, rngs=rngs), label)
    if kind == "nnx-instance":
        raise ModelError(f"model: {label} is an nnx Module instance; pass its class (and its "
                         f"arguments as model.kwargs) so that taylorcli initializes it from the "
                         f"run's seed")
    if kind == "stax-pair":
        return stax_network(obj, label)
    if kind == "stax":
        kw = _kwargs(obj, kwargs, num_classes)
        pair = _built(label, kw, lambda: obj(**kw))
        if not (isinstance(pair, (tuple, list)) and len(pair) >= 2
                and all(callable(f) for f in pair[:2])):
            raise ModelError(f"key model.arch: {label} is a function that returned "
                             f"{type(pair).__name__}; expected {KINDS_TEXT}")
        return stax_network(tuple(pair), label)
    raise ModelError(f"key model.arch: {label} is a {type(obj).__name__}; expected "
                     f"{KINDS_TEXT}")
