"""The papers' networks: CNN-L-C, WideResNet-depth-k-C (no batch norm) and an MLP, in the
standard or the NTK parameterization.

Standard parameterization: Glorot-normal weights, small normal biases (as
`jax.example_libraries.stax`, which the papers' code used: N(0, 1e-6²) for
convolutions, N(0, 1e-2²) for dense layers). NTK parameterization (Lee et al.
2019): W, b ~ N(0, 1) and h = σ_w/√fan_in · W x + σ_b · b.
"""

from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

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


class TwoLayer(nn.Module):
    """Theorem 1's network (Bai et al., Appendix A): f(x) = m^(-1/2) Σ_r a_r σ(w_rᵀx) on
    unit-norm inputs, NTK parameterization, W ~ N(0, 1), one output per class, and a fixed top
    layer a ∈ {±1}^(m×C) drawn from `sign_seed` (a constant, not a parameter: only W trains)."""

    width: int
    num_classes: int
    activation: str = "tanh"
    sign_seed: int = 0

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        # Unit-norm inputs, as the theorem assumes; a zero image stays zero.
        norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
        x = x / jnp.where(norm > 0, norm, 1.0)
        w = self.param("hidden", nn.initializers.normal(1.0), (x.shape[-1], self.width))
        h = ACTIVATIONS[self.activation](x @ w.astype(x.dtype))
        signs = jax.random.rademacher(jax.random.key(self.sign_seed),
                                      (self.width, self.num_classes)).astype(h.dtype)
        return h @ signs / math.sqrt(self.width)


BUILTIN = {"cnn": CNN, "wrn": WideResNet, "mlp": MLP, "twolayer": TwoLayer}


def builtin_module(cfg, num_classes: int, seed: int = 0) -> nn.Module:
    """The built-in flax module a recipe's `model` section describes (cnn, wrn, mlp, twolayer)."""
    if cfg.arch == "twolayer":
        return TwoLayer(width=cfg.width, num_classes=num_classes, activation=cfg.activation,
                        sign_seed=seed)
    common = dict(
        num_classes=num_classes, activation=cfg.activation,
        parameterization=cfg.parameterization, w_std=cfg.w_std, b_std=cfg.b_std,
    )
    if cfg.arch == "wrn":
        return WideResNet(depth=cfg.depth, widen=cfg.widen, width=cfg.width, **common)
    return BUILTIN[cfg.arch](depth=cfg.depth, width=cfg.width, **common)
