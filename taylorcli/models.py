"""The networks: the papers' CNN-L-C, WideResNet-16-k-C (no batch norm) and MLP, or any flax
module of the user's, by import path ('package.module:ClassName', arguments in model.kwargs).

Standard parameterization: Glorot-normal weights, small normal biases (as
`jax.example_libraries.stax`, which the papers' code used: N(0, 1e-6²) for
convolutions, N(0, 1e-2²) for dense layers). NTK parameterization (Lee et al.
2019): W, b ~ N(0, 1) and h = σ_w/√fan_in · W x + σ_b · b.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import math
import os
import sys
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from .errors import ModelError

ACTIVATIONS: dict[str, Callable] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": jax.nn.gelu,
    "softplus": jax.nn.softplus,
}


class _Parameterized(nn.Module):
    """Shared weight/bias creation for both parameterizations."""

    features: int
    parameterization: str = "standard"
    w_std: float = math.sqrt(2.0)
    b_std: float = 0.1
    bias_init_std: float = 1e-6

    def _params(self, shape, fan_in):
        ntk = self.parameterization == "ntk"
        w_init = nn.initializers.normal(1.0) if ntk else nn.initializers.glorot_normal()
        b_init = nn.initializers.normal(1.0 if ntk else self.bias_init_std)
        w = self.param("kernel", w_init, shape)
        b = self.param("bias", b_init, (self.features,))
        if ntk:
            return w, self.w_std / math.sqrt(fan_in), b * self.b_std
        return w, 1.0, b


class Conv(_Parameterized):
    """3x3 convolution with bias, in either parameterization."""

    stride: int = 1
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x):
        c_in = x.shape[-1]
        w, scale, b = self._params((3, 3, c_in, self.features), 9 * c_in)
        dtype = jnp.result_type(x, w)  # lax convolutions do not promote mixed dtypes
        y = lax.conv_general_dilated(
            x.astype(dtype), w.astype(dtype), (self.stride, self.stride), self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return (y * scale if scale != 1.0 else y) + b


class Dense(_Parameterized):
    """Fully connected layer with bias, in either parameterization."""

    bias_init_std: float = 1e-2

    @nn.compact
    def __call__(self, x):
        w, scale, b = self._params((x.shape[-1], self.features), x.shape[-1])
        y = x @ w
        return (y * scale if scale != 1.0 else y) + b


class _Network(nn.Module):
    """Fields shared by every architecture: size, activation and parameterization."""

    depth: int
    width: int
    num_classes: int
    activation: str = "relu"
    parameterization: str = "standard"
    w_std: float = math.sqrt(2.0)
    b_std: float = 0.1

    def _layers(self) -> tuple[Callable, dict]:
        """The activation function and the keyword arguments every layer takes."""
        kw = dict(parameterization=self.parameterization, w_std=self.w_std, b_std=self.b_std)
        return self._activate, kw

    def _activate(self, x):
        return ACTIVATIONS[self.activation](x)


class CNN(_Network):
    """CNN-L-C: L VALID 3x3 convolutions of C channels with activation, global average pool, dense."""

    @nn.compact
    def __call__(self, x):
        act, kw = self._layers()
        for i in range(self.depth):
            x = act(Conv(self.width, padding="VALID", name=f"conv{i + 1}", **kw)(x))
        x = x.mean(axis=(1, 2))
        return Dense(self.num_classes, name="dense", **kw)(x)


class WideResNet(_Network):
    """WideResNet-depth-k-C without batch norm: pre-activation blocks, 3x3 conv shortcuts on channel change."""

    widen: int = 4

    @nn.compact
    def __call__(self, x):
        act, kw = self._layers()
        blocks = (self.depth - 4) // 6
        x = Conv(self.width, name="conv0", **kw)(x)
        for g, (mult, stride) in enumerate([(16, 1), (32, 2), (64, 2)], start=1):
            channels = mult * self.widen
            for b in range(1, blocks + 1):
                s = stride if b == 1 else 1
                name = f"group{g}_block{b}"
                h = Conv(channels, stride=s, name=f"{name}_conv1", **kw)(act(x))
                h = Conv(channels, name=f"{name}_conv2", **kw)(act(h))
                if x.shape[-1] != channels:
                    x = Conv(channels, stride=s, name=f"{name}_shortcut", **kw)(x)
                x = x + h
        # The paper's 8x8 average pool on 32x32 inputs is a global pool; smaller inputs pool globally too.
        x = x.mean(axis=(1, 2))
        return Dense(self.num_classes, name="dense", **kw)(x)


class MLP(_Network):
    """Fully connected network: flatten, `depth` hidden layers of `width` units, dense output."""

    @nn.compact
    def __call__(self, x):
        act, kw = self._layers()
        x = x.reshape(x.shape[0], -1)
        for i in range(self.depth):
            x = act(Dense(self.width, name=f"dense{i + 1}", **kw)(x))
        return Dense(self.num_classes, name="dense", **kw)(x)


BUILTIN = {"cnn": CNN, "wrn": WideResNet, "mlp": MLP}


def build_model(cfg, num_classes: int) -> nn.Module:
    """The flax module a recipe's `model` section describes: built in, or the user's by import path."""
    if cfg.arch not in BUILTIN:
        return user_module(cfg, num_classes)
    common = dict(
        num_classes=num_classes, activation=cfg.activation,
        parameterization=cfg.parameterization, w_std=cfg.w_std, b_std=cfg.b_std,
    )
    if cfg.arch == "wrn":
        return WideResNet(depth=cfg.depth, widen=cfg.widen, width=cfg.width, **common)
    return BUILTIN[cfg.arch](depth=cfg.depth, width=cfg.width, **common)


def import_module_class(arch: str, module_path: str | None = None) -> type:
    """The class 'package.module:Name' names, imported from module_path or the working directory."""
    module_name, _, class_name = arch.partition(":")
    where = [p for p in (module_path, os.getcwd()) if p]
    added = [p for p in where if p not in sys.path]
    sys.path[:0] = added  # only while importing: the user's folder must not shadow anything later
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ModelError(f"key model.arch: cannot import {module_name!r} ({e}); looked in "
                         f"{', '.join(where)} and the installed packages") from None
    except Exception as e:  # noqa: BLE001 - the user's module failed while importing
        raise ModelError(f"key model.arch: importing {module_name!r} failed "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)
    found = getattr(module, class_name, None)
    if found is None:
        raise ModelError(f"key model.arch: module {module_name!r} has no attribute "
                         f"{class_name!r}")
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ModelError(f"key model.arch: {arch} is a {type(found).__name__}, not a flax "
                         f"linen Module class")
    return found


def user_module(cfg, num_classes: int) -> nn.Module:
    """`Name(**model.kwargs)`, with num_classes from the data when the module has that field."""
    cls = import_module_class(cfg.arch, cfg.module_path)
    kwargs = dict(cfg.kwargs)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if "num_classes" in fields and "num_classes" not in kwargs:
        kwargs["num_classes"] = num_classes
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ModelError(f"key model.kwargs: {cfg.arch}({', '.join(kwargs)}) cannot be built "
                         f"({' '.join(str(e).split())[:200]})") from None


def inspect_model(model: nn.Module, image_shape, num_classes: int, arch: str = "model") -> list[str]:
    """Check that a module is one a Taylor expansion can follow; its layers, input to output.

    Traced abstractly (nothing is computed): the module must need no randomness besides its
    initialization (no dropout), keep no state besides its parameters (no batch-norm
    statistics), and return logits of shape (batch, num_classes). The layers are its top-level
    submodules in call order: `init` returns them in that order, but any JAX transformation of
    the dict sorts its keys (`dense` before `dense1`, `conv10` before `conv2`).
    """
    seen: dict = {}

    def trace(key):
        x = jnp.zeros((2, *image_shape), jnp.float32)
        variables = model.init({"params": key}, x)
        seen["collections"] = [c for c in variables if c != "params"]
        seen["layers"] = [str(k) for k in variables.get("params", {})]
        return model.apply({"params": variables.get("params", {})}, x)

    try:
        out = jax.eval_shape(trace, jax.random.key(0))
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the user's module raises
        text = " ".join(str(e).split())
        if "rng" in text.lower() or "prng" in text.lower():
            raise ModelError(f"key model.arch: {arch} draws random numbers when applied "
                             f"(dropout?); a Taylorized model is a fixed function of its "
                             f"parameters, so make the module deterministic") from None
        if "mutable" in text.lower() or "batch_stats" in text:
            raise ModelError(f"key model.arch: {arch} updates state when applied (batch norm "
                             f"statistics?), which a Taylor expansion in the parameters cannot "
                             f"follow; use a module without normalization state") from None
        raise ModelError(f"key model.arch: {arch} fails on inputs of shape "
                         f"(batch, {', '.join(map(str, image_shape))}) "
                         f"({type(e).__name__}: {text[:200]})") from None
    if seen["collections"]:
        raise ModelError(f"key model.arch: {arch} keeps state in {', '.join(seen['collections'])} "
                         f"(batch norm statistics?), which a Taylor expansion in the parameters "
                         f"cannot follow; use a module whose only variables are its parameters")
    if not seen["layers"]:
        raise ModelError(f"key model.arch: {arch} has no parameters")
    shape = getattr(out, "shape", None)
    if shape != (2, num_classes):
        raise ModelError(f"key model.arch: {arch} returns {'shape ' + str(shape) if shape else type(out).__name__} "
                         f"for a batch of 2; expected logits of shape (batch, {num_classes})")
    return seen["layers"]


def init_params(model: nn.Module, key, image_shape) -> dict:
    """Initial parameters for inputs of shape (H, W, C)."""
    return model.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]


def abstract_params(model: nn.Module, image_shape) -> dict:
    """Parameter shapes without computing anything."""
    return jax.eval_shape(lambda k: init_params(model, k, image_shape), jax.random.key(0))


def layer_names(model: nn.Module, image_shape) -> list[str]:
    """The network's top-level submodules in the order they are called (no computation)."""
    seen: list[list[str]] = []

    def trace(key):
        seen.append([str(k) for k in init_params(model, key, image_shape)])
        return 0

    jax.eval_shape(trace, jax.random.key(0))
    return seen[0]


def count_params(params) -> int:
    """Number of scalar parameters."""
    return sum(math.prod(x.shape) for x in jax.tree.leaves(params))


def apply_fn(model: nn.Module) -> Callable:
    """`f(params, x) -> logits`, the function every Taylorized model expands."""
    return lambda params, x: model.apply({"params": params}, x)


def relu_inputs(apply: Callable, params, x) -> list[jax.Array]:
    """The input of every ReLU (`jax.nn.relu`) that `apply(params, x)` computes, batch first.

    Read off the computation itself (its jaxpr), so it works for any module, built in or not.
    """
    from jax.extend import core as jcore

    from .taylor import CALL_PRIMITIVES, is_relu

    closed = jax.make_jaxpr(apply)(params, x)
    found: list[jax.Array] = []

    def run(jaxpr, consts, args):
        env = dict(zip(jaxpr.constvars, consts)) | dict(zip(jaxpr.invars, args))
        read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if name == "custom_jvp_call" and is_relu(eqn):
                found.append(vals[0])
            sub = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
            if name in CALL_PRIMITIVES | {"custom_jvp_call"} and sub is not None:
                inner = sub.jaxpr if isinstance(sub, jcore.ClosedJaxpr) else sub
                outs = run(inner, sub.consts if isinstance(sub, jcore.ClosedJaxpr) else [], vals)
            else:
                with eqn.ctx.manager:
                    outs = eqn.primitive.bind(*vals, **eqn.primitive.get_bind_params(eqn.params))
                outs = outs if eqn.primitive.multiple_results else [outs]
            for var, val in zip(eqn.outvars, outs):
                env[var] = val
        return [read(v) for v in jaxpr.outvars]

    run(closed.jaxpr, closed.consts, jax.tree.leaves((params, x)))
    return [a.reshape(a.shape[0], -1) for a in found]
