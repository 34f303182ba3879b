"""Pixels as the engine sees them: scaled to [0, 1], standardized per channel, and augmented on
device (random pad-and-crop, horizontal flip) inside the jitted step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def pixel_scale(dtype) -> float:
    """What a stored pixel is multiplied by to lie in [0, 1]: 1/255 for uint8, 1 for floats."""
    return 1.0 / 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of scaled pixels (float64, in chunks)."""
    c = images.shape[-1]
    total, squares, count = np.zeros(c), np.zeros(c), 0
    scale = pixel_scale(images.dtype)
    for i in range(0, len(images), 4096):
        chunk = images[i:i + 4096].astype(np.float64) * scale
        total += chunk.sum(axis=(0, 1, 2))
        squares += (chunk ** 2).sum(axis=(0, 1, 2))
        count += chunk.size // c
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean ** 2, 0.0))
    std = np.where(std > 0, std, 1.0)  # a constant channel is left as it is
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def float_dtype():
    """The floating-point type computations run in: float32, or float64 inside jax.enable_x64."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def standardize(images, *, mean, std, xp=jnp):
    """Scale images to [0,1] (uint8 / 255) and standardize per channel (test time; jittable).
    `xp=np` computes it on the host, where eager device operations would each compile."""
    dtype = float_dtype()
    x = xp.asarray(images)
    x = x.astype(dtype) * dtype.type(pixel_scale(x.dtype))
    return (x - xp.asarray(mean, dtype)) / xp.asarray(std, dtype)


def augment(key, images, *, pad: int, flip: bool, mean, std,
            crop: str = "per_image") -> jnp.ndarray:
    """Random pad-and-crop and horizontal flip per image, then standardize (jittable; pad/flip static).

    `crop="per_batch"` takes one random crop offset for the whole batch (flips stay per image),
    as the authors' code does with `tf.image.random_crop` on the 4-D batch.
    """
    dtype = float_dtype()
    x = jnp.asarray(images).astype(dtype) * pixel_scale(jnp.asarray(images).dtype)
    n, h, w, c = x.shape
    crop_key, flip_key = jax.random.split(key)
    if pad > 0:
        # Padding in [0,1] space means padded pixels are black, as in the usual CIFAR recipe.
        padded = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        if crop == "per_batch":
            o = jax.random.randint(crop_key, (2,), 0, 2 * pad + 1)
            x = jax.lax.dynamic_slice(padded, (0, o[0], o[1], 0), (n, h, w, c))
        else:
            offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
            x = jax.vmap(lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c)))(
                padded, offsets)
    if flip:
        mirror = jax.random.bernoulli(flip_key, 0.5, (n,))
        x = jnp.where(mirror[:, None, None, None], x[:, :, ::-1, :], x)
    return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


