"""Flax modules a user might bring (tests/test_user_models.py names them by import path)."""

import flax.linen as nn
import jax.numpy as jnp


class TinyResNet(nn.Module):
    """A conv stem, one residual block with a tanh and a relu, a dense head."""

    num_classes: int
    channels: int = 4

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.channels, (3, 3))(x)
        h = nn.Conv(self.channels, (3, 3))(nn.relu(x))
        x = x + nn.Conv(self.channels, (3, 3))(jnp.tanh(h))
        return nn.Dense(self.num_classes)(nn.relu(x).mean(axis=(1, 2)))


class WithBatchNorm(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.BatchNorm(use_running_average=False)(nn.Conv(4, (3, 3))(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class WithDropout(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        x = nn.Dropout(0.5, deterministic=False)(nn.Conv(4, (3, 3))(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


class WrongShape(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes + 1)(x.reshape(x.shape[0], -1))


class NoClasses(nn.Module):
    """A module without a num_classes field: its width comes from kwargs."""

    outputs: int = 10

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.outputs)(nn.relu(nn.Dense(8)(x.reshape(x.shape[0], -1))))


not_a_module = 3


class IntegerLogits(nn.Module):
    """Returns its logits as integers (a Taylor expansion cannot differentiate them)."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1)).astype(jnp.int32)


class ExitsOnCall(nn.Module):
    """Calls sys.exit(0) when applied: a module must not end taylorcli silently."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        import sys

        sys.exit(0)


class TooSmallInput(nn.Module):
    """Four unpadded 3x3 convolutions: an 8x8 image is gone after the fourth."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        for _ in range(4):
            x = nn.relu(nn.Conv(4, (3, 3), padding="VALID")(x))
        return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


# ---- flax nnx: the API flax's documentation teaches now ----

from flax import nnx  # noqa: E402


class NnxMLP(nnx.Module):
    """A two-layer nnx MLP over flattened images."""

    def __init__(self, din: int, hidden: int, num_classes: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        return self.out(jnp.tanh(self.hidden(x)))


class NnxWithBatchNorm(nnx.Module):
    def __init__(self, din: int, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, num_classes, rngs=rngs)
        self.norm = nnx.BatchNorm(num_classes, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.linear(x.reshape(x.shape[0], -1)))


class NnxWithDropout(nnx.Module):
    def __init__(self, din: int, num_classes: int, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(din, num_classes, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.drop(self.linear(x.reshape(x.shape[0], -1)))


# ---- stax: (init_fn, apply_fn) pairs, as jax.example_libraries.stax and neural-tangents ----


def StaxCNN(num_classes: int = 10, channels: int = 4):
    """A small stax CNN: conv, relu, conv, relu, global average pool, dense."""
    from jax.example_libraries import stax

    return stax.serial(stax.Conv(channels, (3, 3)), stax.Relu, stax.Conv(channels, (3, 3)),
                       stax.Tanh, stax.GeneralConv(("NHWC", "HWIO", "NHWC"), channels, (1, 1)),
                       stax.Relu, stax.Flatten, stax.Dense(num_classes))


def StaxWithDropout(num_classes: int = 10):
    from jax.example_libraries import stax

    return stax.serial(stax.Flatten, stax.Dense(16), stax.Dropout(0.5, mode="train"),
                       stax.Dense(num_classes))
