"""From a recipe's data section to arrays in memory: which source, which limits, which
standardization, checked labels; and the shapes alone, without loading the images."""

from __future__ import annotations

import os

import numpy as np

from ..errors import DataError
from ..names import BUILTIN_DATASETS
from .augment import channel_stats
from .cifar import ARCHIVES, CIFAR_MEAN, CIFAR_STD, load_archive
from .digits import digits_arrays, digits_dataset_spec, digits_spec
from .npz import load_npz, npz_header
from .spec import Dataset, DatasetSpec
from .tfds_source import load_tfds, tfds_header


def _check_name(name: str) -> None:
    if not name or not isinstance(name, str):
        raise DataError(f"unknown dataset {name!r}: choose one of "
                        f"{', '.join(BUILTIN_DATASETS)} or a TFDS dataset name")


def dataset_spec(name: str, *, synthetic_train: int = 512, synthetic_test: int = 256,
                 data_dir: str | None = None, path: str | None = None) -> DatasetSpec:
    """Image shape, class count, split sizes and mean/std of a dataset, without loading its images.

    For npz and TFDS datasets the mean and std are placeholders (0.5, 0.25) until the
    training set is loaded: they do not change shapes, FLOPs or memory.
    """
    _check_name(name)
    if name == "digits":
        return digits_dataset_spec()
    if name == "synthetic":
        return DatasetSpec(name, (32, 32, 3), 10, synthetic_train, synthetic_test,
                           (0.5,) * 3, (0.25,) * 3)
    if name in ARCHIVES:
        classes = 10 if name == "cifar10" else 100
        return DatasetSpec(name, (32, 32, 3), classes, 50000, 10000, CIFAR_MEAN, CIFAR_STD)
    if name == "npz":
        shape, classes, sizes = npz_header(path)
    else:
        shape, classes, sizes = tfds_header(name, data_dir)
    c = shape[-1]
    return DatasetSpec(name, shape, classes, sizes[0], sizes[1], (0.5,) * c, (0.25,) * c)


def load_dataset(name: str, *, data_dir: str | None = None, archive: str | None = None,
                 path: str | None = None, train_limit: int | None = None,
                 test_limit: int | None = None, synthetic_train: int = 512,
                 synthetic_test: int = 256, seed: int = 0, mean=None, std=None) -> Dataset:
    """Load a dataset into memory; CIFAR comes from `archive` when given, else from TFDS.

    The standardization: `mean`/`std` when given; CIFAR's usual constants; digits' own (of
    its whole training split); otherwise computed on the training examples loaded.
    """
    _check_name(name)
    for limit in (train_limit, test_limit):
        if limit is not None and limit < 0:
            raise ValueError(f"dataset limits must be >= 0, got {limit}")
    stats, classes = None, None
    if name == "digits":
        arrays = digits_arrays()
        spec = digits_spec(arrays)
        stats, classes = (spec.mean, spec.std), spec.num_classes
    elif name == "synthetic":
        rng = np.random.default_rng(seed)
        arrays = ()
        for n in (synthetic_train, synthetic_test):
            arrays += (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, n, dtype=np.int32))
        stats, classes = ((0.5,) * 3, (0.25,) * 3), 10
    elif name == "npz":
        arrays, classes = load_npz(path)
    elif name in ARCHIVES and archive is not None:
        arrays = load_archive(name, os.fspath(archive))
    else:
        arrays, classes = load_tfds(name, data_dir, (train_limit, test_limit))
    if name in ARCHIVES:
        stats, classes = (CIFAR_MEAN, CIFAR_STD), 10 if name == "cifar10" else 100
    train_x, train_y, test_x, test_y = (np.ascontiguousarray(a[:lim]) for a, lim in zip(
        arrays, (train_limit, train_limit, test_limit, test_limit)))
    if mean is not None:
        stats = (tuple(mean), tuple(std))
    elif stats is None:
        stats = channel_stats(train_x)
    if len(stats[0]) != train_x.shape[-1]:
        raise DataError(f"data.mean and data.std: {len(stats[0])} values for images of "
                        f"{train_x.shape[-1]} channels; expected one per channel")
    for split, labels in (("train", train_y), ("test", test_y)):
        if len(labels) and (labels.min() < 0 or labels.max() >= classes):
            raise DataError(f"{name}: {split} labels must lie in 0..{classes - 1} "
                            f"({classes} classes), found {int(labels.min())}.."
                            f"{int(labels.max())}")
    return Dataset(name, train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32),
                   classes, tuple(stats[0]), tuple(stats[1]))


def recipe_spec(recipe) -> DatasetSpec:
    """The dataset's shapes, without loading its images (train/test limits applied)."""
    d = recipe.data
    spec = dataset_spec(d.dataset, synthetic_train=d.synthetic_train,
                        synthetic_test=d.synthetic_test, data_dir=d.data_dir, path=d.path)
    train = min(spec.train_size, d.train_limit or spec.train_size)
    test = min(spec.test_size, d.test_limit or spec.test_size)
    mean, std = (tuple(d.mean), tuple(d.std)) if d.mean is not None else (spec.mean, spec.std)
    return DatasetSpec(spec.name, spec.image_shape, spec.num_classes, train, test, mean, std)


def load_for_recipe(recipe) -> Dataset:
    """The dataset a recipe's data section describes (limits and standardization applied)."""
    d = recipe.data
    return load_dataset(d.dataset, data_dir=d.data_dir, archive=d.archive, path=d.path,
                        train_limit=d.train_limit, test_limit=d.test_limit,
                        synthetic_train=d.synthetic_train, synthetic_test=d.synthetic_test,
                        seed=recipe.seed, mean=d.mean, std=d.std)


def with_data_stats(recipe, ds: Dataset):
    """The recipe with its data section's mean and std filled in from the loaded data."""
    if recipe.data.mean is not None:
        return recipe
    data = recipe.data.model_copy(update={"mean": tuple(ds.mean), "std": tuple(ds.std)})
    return recipe.model_copy(update={"data": data})


def spec_of(ds: Dataset) -> DatasetSpec:
    """The shapes and constants of a loaded dataset."""
    return DatasetSpec(name=ds.name, image_shape=tuple(ds.train_x.shape[1:]),
                       num_classes=ds.num_classes, train_size=len(ds.train_y),
                       test_size=len(ds.test_y), mean=ds.mean, std=ds.std)
