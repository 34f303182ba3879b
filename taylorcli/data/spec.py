"""What a dataset is to the rest of taylorcli: its loaded arrays, or only its shapes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

@dataclass(frozen=True)


class DatasetSpec:
    """Shapes and normalization constants of a dataset, known without loading it."""

    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    train_size: int
    test_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)


class Dataset:
    """A loaded dataset: NHWC images (uint8, or float32 already scaled), int32 labels, and
    standardization constants of the scaled pixels."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and its message."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
