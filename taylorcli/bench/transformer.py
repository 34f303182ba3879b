"""A small vision transformer for the benchmark: patches of an image as tokens, pre-LayerNorm blocks.

Everything a transformer's Taylor expansion meets: LayerNorm (square, mean, rsqrt, products of
two series), multi-head softmax attention (products of two series QKᵀ and AV, exp, division)
and a GELU MLP (tanh, or erf with `exact_gelu`), with residual connections. The defaults on an
8x8 image in 2x2 patches (16 tokens of 32 features, 2 blocks) have about 18k parameters.
Use it in a recipe as `model: {arch: "taylorcli.bench.transformer:ViT", kwargs: {...}}`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LN x), then x + MLP(LN x)."""

    dim: int
    heads: int
    mlp_dim: int
    exact_gelu: bool = False

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln1")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attention")(h, h)
        h = nn.LayerNorm(name="ln2")(x)
        h = nn.Dense(self.mlp_dim, name="mlp1")(h)
        h = nn.gelu(h, approximate=not self.exact_gelu)
        return x + nn.Dense(self.dim, name="mlp2")(h)


class ViT(nn.Module):
    """Patch embedding, learned position embedding, `depth` blocks, mean over tokens, LN, dense."""

    num_classes: int = 10
    patch: int = 2
    dim: int = 32
    depth: int = 2
    heads: int = 2
    mlp_dim: int = 64
    exact_gelu: bool = False

    @nn.compact
    def __call__(self, x):
        p = self.patch
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", name="embed")(x)
        x = x.reshape(x.shape[0], -1, self.dim)
        pos = self.param("pos", nn.initializers.normal(0.02), x.shape[1:], x.dtype)
        x = x + pos
        for i in range(self.depth):
            x = Block(self.dim, self.heads, self.mlp_dim, self.exact_gelu, name=f"block{i + 1}")(x)
        x = nn.LayerNorm(name="ln")(jnp.mean(x, axis=1))
        return nn.Dense(self.num_classes, name="head")(x)
