"""scikit-learn's handwritten digits (real data shipped inside scikit-learn: no download), as
12x12 images with a fixed train/test split: taylorcli's offline default.

Loaded with scikit-learn's own `load_digits`, once per scikit-learn version: the arrays are
then kept in taylorcli's cache folder (~/.cache/taylorcli/data, or $XDG_CACHE_HOME), since
importing scikit-learn alone takes longer than the rest of a small run's start.
"""

from __future__ import annotations

import functools
import io
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import OwnershipError
from ..files import OwnedFolder
from .spec import DatasetSpec


def digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and test images and labels (copies: a caller may change them)."""
    return tuple(a.copy() for a in _digits_arrays())


def _cache() -> OwnedFolder:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return OwnedFolder(Path(base) / "taylorcli" / "data", "cache.json")


@functools.cache
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # Read once per process: a plan of many digits runs asks for its shapes many times.
    try:
        name = f"digits-sklearn-{metadata.version('scikit-learn')}.npz"
    except metadata.PackageNotFoundError:
        name = None
    cache = _cache()
    if name is not None and cache.is_owned():
        try:
            with np.load(cache.path / name, allow_pickle=False) as saved:
                return tuple(saved[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        except (OSError, ValueError, KeyError):
            pass  # not there yet, or damaged: loaded again below and written anew
    arrays = _load_digits()
    if name is not None:
        buf = io.BytesIO()
        np.savez(buf, **dict(zip(("x_train", "y_train", "x_test", "y_test"), arrays)))
        try:
            cache.claim({"kind": "cache"}, "taylorcli's cache folder")
            cache.write(name, buf.getvalue())
        except (OSError, OwnershipError):
            pass  # a cache is a convenience: a folder that is not ours stays untouched
    return arrays


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = np.round(bunch.images * 255.0 / 16.0).astype(np.uint8)
    # A 2 px zero border makes 12x12 inputs, so four VALID 3x3 convolutions still leave 4x4.
    images = np.zeros((small.shape[0], 12, 12, 1), np.uint8)
    images[:, 2:10, 2:10, 0] = small
    # The split is fixed (seed 0) so every run and every `seed` sees the same test set.
    order = np.random.default_rng(0).permutation(small.shape[0])
    tr, te = order[:1437], order[1437:]
    labels = bunch.target.astype(np.int32)
    return images[tr], labels[tr], images[te], labels[te]


def digits_spec(arrays: tuple[np.ndarray, ...]) -> DatasetSpec:
    """Shapes, class count and the standardization of the digits' training images."""
    scaled = arrays[0].astype(np.float64) / 255.0
    mean = tuple(float(v) for v in scaled.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in scaled.std(axis=(0, 1, 2)))
    return DatasetSpec("digits", (12, 12, 1), 10, len(arrays[0]), len(arrays[2]), mean, std)


@functools.cache
def digits_dataset_spec() -> DatasetSpec:
    """The digits' spec, computed once per process."""
    return digits_spec(_digits_arrays())
