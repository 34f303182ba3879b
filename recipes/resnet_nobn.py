"""A small residual network without normalization: an example of your own flax module.

`recipes/resnet_digits.yaml` trains it with `model.arch: resnet_nobn:ResNetNoBN` (this file
sits beside the recipe, whose folder is importable) and `model.kwargs` for its fields.
"""

import flax.linen as nn


class Block(nn.Module):
    """Pre-activation residual block: relu, 3x3 conv, relu, 3x3 conv, plus the input."""

    channels: int

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels, (3, 3))(nn.relu(x))
        h = nn.Conv(self.channels, (3, 3))(nn.relu(h))
        if x.shape[-1] != self.channels:  # a 1x1 projection when the width changes
            x = nn.Conv(self.channels, (1, 1))(x)
        return x + h


class ResNetNoBN(nn.Module):
    """A 3x3 stem, `blocks` residual blocks of `channels`, global average pool, dense logits."""

    num_classes: int
    channels: int = 16
    blocks: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.channels, (3, 3))(x)
        for _ in range(self.blocks):
            x = Block(self.channels)(x)
        return nn.Dense(self.num_classes)(nn.relu(x).mean(axis=(1, 2)))
