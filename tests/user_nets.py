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
