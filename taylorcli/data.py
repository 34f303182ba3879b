"""Datasets (digits, CIFAR-10/100, synthetic) as uint8 NHWC arrays, plus jittable augmentation."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .errors import DataError

DATASETS = ("digits", "cifar10", "cifar100", "synthetic")
_CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
_CIFAR_STD = (0.2023, 0.1994, 0.2010)
# Official "python version" archives: (folder, train files, test files, label key, tarball name).
_ARCHIVES = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), b"labels", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels",
                 "cifar-100-python.tar.gz"),
}


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
    """A loaded dataset: uint8 NHWC images, int32 labels, and standardization constants."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
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


def _digits_spec(arrays: tuple[np.ndarray, ...]) -> DatasetSpec:
    scaled = arrays[0].astype(np.float64) / 255.0
    mean = tuple(float(v) for v in scaled.mean(axis=(0, 1, 2)))
    std = tuple(float(v) for v in scaled.std(axis=(0, 1, 2)))
    return DatasetSpec("digits", (12, 12, 1), 10, len(arrays[0]), len(arrays[2]), mean, std)


def dataset_spec(name: str, *, synthetic_train: int = 512, synthetic_test: int = 256) -> DatasetSpec:
    """Return image shape, class count, split sizes and mean/std of a dataset without loading CIFAR."""
    _check_name(name)
    if name == "digits":
        return _digits_spec(_digits_arrays())
    if name == "synthetic":
        return DatasetSpec(name, (32, 32, 3), 10, synthetic_train, synthetic_test,
                           (0.5,) * 3, (0.25,) * 3)
    classes = 10 if name == "cifar10" else 100
    return DatasetSpec(name, (32, 32, 3), classes, 50000, 10000, _CIFAR_MEAN, _CIFAR_STD)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _rows_to_nhwc(rows: np.ndarray) -> np.ndarray:
    # Official rows are 1024 R, then G, then B values, each plane row-major 32x32.
    return np.ascontiguousarray(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


# What the official CIFAR "python version" batches hold: dicts of lists, bytes and one numpy
# array. Anything else in a pickle (a crafted archive) could run code while it loads.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor"),
    ("builtins", "object"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 carry an array's bytes
}


class _DataUnpickler(pickle.Unpickler):
    """Unpickles the plain containers and numpy arrays of a CIFAR batch, and nothing else."""

    def find_class(self, module: str, name: str):
        """Only the numpy array constructors the official batches use."""
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of a CIFAR "
                                     f"batch (only dicts, lists, strings and numpy arrays are)")


MAX_BATCH_BYTES = 200 << 20  # the largest official batch (CIFAR-100 train) is 155 MB
MAX_ARCHIVE_BYTES = 2 << 30  # the official tarballs are about 170 MB


def _unpickle(f) -> dict:
    data = f.read(MAX_BATCH_BYTES + 1)
    if len(data) > MAX_BATCH_BYTES:
        raise ValueError(f"larger than {MAX_BATCH_BYTES >> 20} MB")
    batch = _DataUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(batch, dict):
        raise ValueError(f"a {type(batch).__name__}, not a dict")
    return batch


def _load_archive(name: str, archive: str) -> tuple[np.ndarray, ...]:
    folder, train_files, test_files, label_key, tarball = _ARCHIVES[name]
    path = Path(archive).expanduser()
    expected = f"expected {tarball} or its extracted {folder} folder"
    if not path.exists():
        raise DataError(f"{name} archive not found at {path}: {expected}")
    if not path.is_dir() and not path.is_file():
        raise DataError(f"{name} archive {path} is not a regular file: {expected}")
    if path.is_file() and path.stat().st_size > MAX_ARCHIVE_BYTES:
        raise DataError(f"{name} archive {path} is larger than {MAX_ARCHIVE_BYTES >> 30} GB: "
                        f"{expected} (about 170 MB)")

    def parse(read, member: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            with read(member) as f:
                batch = _unpickle(f)
            rows = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[label_key], dtype=np.int32)
            if rows.ndim != 2 or rows.shape[1] != 3072 or len(rows) != len(labels):
                raise ValueError(f"data {rows.shape} / labels {labels.shape}")
        except DataError:
            raise
        except Exception as e:  # any failure here means the file is not the official format
            raise DataError(f"{name} archive at {path}: cannot read {folder}/{member} "
                            f"({_one_line(e)}); {expected}") from None
        return _rows_to_nhwc(rows), labels

    def load_all(read) -> tuple[np.ndarray, ...]:
        parts = [[parse(read, m) for m in files] for files in (train_files, test_files)]
        return tuple(np.concatenate([p[i] for p in split]) for split in parts for i in (0, 1))

    if path.is_dir():
        root = path if (path / train_files[0]).exists() else path / folder
        if not (root / train_files[0]).exists():
            raise DataError(f"{name} archive folder {path} has no {train_files[0]} "
                            f"(nor {folder}/{train_files[0]}): {expected}")

        def read_file(member: str):
            if not (root / member).is_file():
                raise DataError(f"{name} archive folder {root} is missing {member}: {expected}")
            return open(root / member, "rb")

        return load_all(read_file)
    try:
        with tarfile.open(path, "r:*") as tar:
            members = {m.name.lstrip("./"): m for m in tar.getmembers() if m.isfile()}

            def read_member(member: str):
                info = members.get(f"{folder}/{member}")
                if info is None:
                    raise DataError(f"{name} archive {path} has no member {folder}/{member}: "
                                    f"{expected}")
                return tar.extractfile(info)

            return load_all(read_member)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{name} archive {path} is not a readable tar.gz ({_one_line(e)}): "
                        f"{expected}") from None


def _load_tfds(name: str, data_dir: str | None, limits: tuple[int | None, int | None]):
    import tensorflow_datasets as tfds  # slow to import, so only when CIFAR comes from TFDS
    from etils import epath

    root = data_dir or tfds.core.constants.get_default_data_dir()
    build_hint = f"'tfds build {name} --data_dir DIR --file_format array_record'"
    archive_hint = (f"set data.archive to the CIFAR python archive ({_ARCHIVES[name][4]}) "
                    "or its extracted folder")
    try:
        # Checking the folder first avoids TFDS logging warnings about a copy that is not there.
        prepared = epath.Path(root, name).is_dir()
        if prepared:
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
    except Exception as e:  # a broken TFDS directory is as unusable as a missing one
        raise DataError(f"{name}: could not open a TFDS copy in {root} ({_one_line(e)}); run "
                        f"{build_hint} on a machine with internet, or {archive_hint}") from None
    if not prepared:
        raise DataError(f"{name} not found: looked for a prepared TFDS copy in {root} and no "
                        f"data.archive was given; run {build_hint} on a machine with internet, "
                        f"or {archive_hint}")
    random_access = tfds.core.file_adapters.FileFormat.with_random_access()
    if not set(builder.info.available_file_formats()) & random_access:
        # `tfds build` writes tfrecord by default, which needs TensorFlow to read.
        raise DataError(f"{name} TFDS copy in {builder.data_dir} is not in array_record format; "
                        f"rebuild it with {build_hint}, or {archive_hint}")
    out = []
    for split, limit in zip(("train", "test"), limits):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            keys = list(range(len(source) if limit is None else min(limit, len(source))))
            # Batched reads decode records in one call, about twice as fast as indexing one by one.
            records = source.__getitems__(keys) if keys else []
            images = np.zeros((len(records), 32, 32, 3), np.uint8)
            for i, record in enumerate(records):
                images[i] = record["image"]
            labels = np.asarray([r["label"] for r in records], np.int32)
        except Exception as e:  # shards that do not decode into CIFAR records are unusable
            raise DataError(f"{name} TFDS copy in {builder.data_dir}: cannot read split {split} "
                            f"({_one_line(e)}); rebuild it with {build_hint}, or "
                            f"{archive_hint}") from None
        out += [images, labels]
    return tuple(out)


def load_dataset(name: str, *, data_dir: str | None = None, archive: str | None = None,
                 train_limit: int | None = None, test_limit: int | None = None,
                 synthetic_train: int = 512, synthetic_test: int = 256, seed: int = 0) -> Dataset:
    """Load a dataset into memory; CIFAR comes from `archive` when given, else from TFDS."""
    _check_name(name)
    for limit in (train_limit, test_limit):
        if limit is not None and limit < 0:
            raise ValueError(f"dataset limits must be >= 0, got {limit}")
    spec = None
    if name == "digits":
        arrays = _digits_arrays()
        spec = _digits_spec(arrays)
    elif name == "synthetic":
        rng = np.random.default_rng(seed)
        arrays = ()
        for n in (synthetic_train, synthetic_test):
            arrays += (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, n, dtype=np.int32))
    elif archive is not None:
        arrays = _load_archive(name, os.fspath(archive))
    else:
        arrays = _load_tfds(name, data_dir, (train_limit, test_limit))
    spec = spec or dataset_spec(name, synthetic_train=synthetic_train,
                                synthetic_test=synthetic_test)
    train_x, train_y, test_x, test_y = (np.ascontiguousarray(a[:lim]) for a, lim in zip(
        arrays, (train_limit, train_limit, test_limit, test_limit)))
    for split, labels in (("train", train_y), ("test", test_y)):
        if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
            raise DataError(f"{name}: {split} labels must lie in 0..{spec.num_classes - 1} "
                            f"({spec.num_classes} classes), found {int(labels.min())}.."
                            f"{int(labels.max())}")
    return Dataset(name, train_x, train_y.astype(np.int32), test_x, test_y.astype(np.int32),
                   spec.num_classes, spec.mean, spec.std)


def standardize(images_uint8, *, mean, std) -> jnp.ndarray:
    """Scale uint8 images to [0,1] and standardize per channel (test-time transform; jittable)."""
    x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def augment(key, images_uint8, *, pad: int, flip: bool, mean, std,
            crop: str = "per_image") -> jnp.ndarray:
    """Random pad-and-crop and horizontal flip per image, then standardize (jittable; pad/flip static).

    `crop="per_batch"` takes one random crop offset for the whole batch (flips stay per image),
    as the authors' code does with `tf.image.random_crop` on the 4-D batch.
    """
    x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
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
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def recipe_spec(recipe) -> DatasetSpec:
    """The dataset's shapes, without loading it (train/test limits applied)."""
    d = recipe.data
    spec = dataset_spec(d.dataset, synthetic_train=d.synthetic_train,
                        synthetic_test=d.synthetic_test)
    train = min(spec.train_size, d.train_limit or spec.train_size)
    test = min(spec.test_size, d.test_limit or spec.test_size)
    return DatasetSpec(spec.name, spec.image_shape, spec.num_classes, train, test, spec.mean,
                       spec.std)


def load_for_recipe(recipe) -> Dataset:
    """The dataset a recipe's data section describes (limits applied)."""
    d = recipe.data
    return load_dataset(d.dataset, data_dir=d.data_dir, archive=d.archive,
                        train_limit=d.train_limit, test_limit=d.test_limit,
                        synthetic_train=d.synthetic_train, synthetic_test=d.synthetic_test,
                        seed=recipe.seed)


def spec_of(ds: Dataset) -> DatasetSpec:
    """The shapes and constants of a loaded dataset."""
    return DatasetSpec(name=ds.name, image_shape=tuple(ds.train_x.shape[1:]),
                       num_classes=ds.num_classes, train_size=len(ds.train_y),
                       test_size=len(ds.test_y), mean=ds.mean, std=ds.std)
