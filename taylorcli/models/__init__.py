"""The networks: the papers' CNN, WideResNet and MLP, or the user's own (linen, nnx, stax),
each as a `Network` the engine expands and trains.

    builtin.py   CNN-L-C, WideResNet-depth-k-C (no batch norm), MLP, both parameterizations
    network.py   the Network shape (init, apply) for linen, nnx and stax; its inspection
    user.py      the user's network by import path or as an object
    relu.py      the inputs of every ReLU, read off the computation
"""

from __future__ import annotations

from typing import Any

from ..names import BUILTIN_ARCHS
from .builtin import ACTIVATIONS, CNN, MLP, TwoLayer, WideResNet, builtin_module
from .network import Network, count_params, inspect, linen_network
from .relu import relu_inputs
from .user import import_object, user_network

__all__ = ["CNN", "MLP", "WideResNet", "TwoLayer", "ACTIVATIONS", "Network", "build_network",
           "count_params", "inspect", "relu_inputs", "abstract_params", "init_params"]


def build_network(cfg, num_classes: int, obj: Any = None, seed: int = 0) -> Network:
    """The network a recipe's `model` section describes: built in, the user's by import path,
    or `obj` (a class, pair or function the caller hands over, `taylorcli.train(model=...)`);
    `seed` is the run's (twolayer draws its fixed top layer from it)."""
    if obj is not None:
        return user_network(obj, dict(cfg.kwargs), num_classes, _label(obj))
    if cfg.arch in BUILTIN_ARCHS:
        return linen_network(builtin_module(cfg, num_classes, seed), cfg.arch)
    found = import_object(cfg.arch, cfg.module_path)
    return user_network(found, dict(cfg.kwargs), num_classes, cfg.arch)


def _label(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{getattr(obj, '__module__', '?')}:{name}"


def _as_network(model) -> Network:
    return model if isinstance(model, Network) else linen_network(model)


def init_params(model, key, image_shape) -> Any:
    """Initial parameters of a Network (or a linen module) for inputs of shape (H, W, C)."""
    return _as_network(model).init(key, tuple(image_shape))


def abstract_params(model, image_shape) -> Any:
    """Parameter shapes of a Network (or a linen module) without computing anything."""
    return _as_network(model).abstract_params(image_shape)
