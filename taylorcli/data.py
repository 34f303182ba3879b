"""Datasets as NHWC image arrays (uint8, or float already scaled) with integer labels, and
jittable augmentation: scikit-learn's digits, CIFAR-10/100 (official archive or TFDS), any TFDS
image-classification dataset by name (array_record, read without TensorFlow), a user's `.npz`
of arrays, and synthetic data. Shapes, class counts and the per-channel standardization come
from the data."""

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

DATASETS = ("digits", "cifar10", "cifar100", "synthetic", "npz")  # and any TFDS name
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
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


def _check_name(name: str) -> None:
    if not name or not isinstance(name, str):
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)} or a "
                        f"TFDS dataset name")


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


def dataset_spec(name: str, *, synthetic_train: int = 512, synthetic_test: int = 256,
                 data_dir: str | None = None, path: str | None = None) -> DatasetSpec:
    """Image shape, class count, split sizes and mean/std of a dataset, without loading its images.

    For npz and TFDS datasets the mean and std are placeholders (0.5, 0.25) until the
    training set is loaded: they do not change shapes, FLOPs or memory.
    """
    _check_name(name)
    if name == "digits":
        return _digits_spec(_digits_arrays())
    if name == "synthetic":
        return DatasetSpec(name, (32, 32, 3), 10, synthetic_train, synthetic_test,
                           (0.5,) * 3, (0.25,) * 3)
    if name in _ARCHIVES:
        classes = 10 if name == "cifar10" else 100
        return DatasetSpec(name, (32, 32, 3), classes, 50000, 10000, _CIFAR_MEAN, _CIFAR_STD)
    if name == "npz":
        shape, classes, sizes = _npz_header(path)
    else:
        shape, classes, sizes = _tfds_header(name, data_dir)
    c = shape[-1]
    return DatasetSpec(name, shape, classes, sizes[0], sizes[1], (0.5,) * c, (0.25,) * c)


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


def _tfds_hints(name: str) -> str:
    hint = f"run 'tfds build {name} --data_dir DIR --file_format array_record' on a machine " \
           f"with internet and set data.data_dir to DIR"
    if name in _ARCHIVES:
        hint += (f", or set data.archive to the CIFAR python archive ({_ARCHIVES[name][4]}) "
                 f"or its extracted folder")
    return hint


def _tfds_builder(name: str, data_dir: str | None):
    """The prepared TFDS copy of `name` (array_record), or one line saying what is missing."""
    import tensorflow_datasets as tfds  # slow to import: only for TFDS datasets
    from etils import epath

    root = data_dir or tfds.core.constants.get_default_data_dir()
    base = name.split(":")[0]
    try:
        # Checking the folder first avoids TFDS logging warnings about a copy that is not there.
        prepared = epath.Path(root, base).is_dir()
        builder = None
        if prepared:
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
    except Exception as e:  # a broken TFDS directory is as unusable as a missing one
        raise DataError(f"{name}: could not open a TFDS copy in {root} ({_one_line(e)}); "
                        f"{_tfds_hints(base)}") from None
    if not prepared:
        given = " and no data.archive was given" if base in _ARCHIVES else ""
        raise DataError(f"{name} not found: looked for a prepared TFDS copy in {root}{given}; "
                        f"{_tfds_hints(base)}")
    random_access = tfds.core.file_adapters.FileFormat.with_random_access()
    if not set(builder.info.available_file_formats()) & random_access:
        # `tfds build` writes tfrecord by default, which needs TensorFlow to read.
        raise DataError(f"{name} TFDS copy in {builder.data_dir} is not in array_record format; "
                        f"rebuild it: {_tfds_hints(base)}")
    return builder


def _tfds_keys(name: str, builder) -> tuple[str, str, tuple[int, int, int], int]:
    """(image key, label key, image shape, classes) of an image-classification TFDS dataset."""
    info = builder.info
    keys = info.supervised_keys or ("image", "label")
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        raise DataError(f"{name}: not an image-classification dataset (its supervised keys are "
                        f"{keys!r}); expected an (image, label) pair")
    image_key, label_key = keys
    features = info.features
    image, label = features[image_key], features[label_key]
    shape = tuple(getattr(image, "shape", ()) or ())
    if len(shape) != 3 or any(d is None for d in shape):
        raise DataError(f"{name}: images of shape {shape}; expected one fixed (height, width, "
                        f"channels) shape for every image")
    classes = getattr(label, "num_classes", None)
    if not classes:
        raise DataError(f"{name}: its label {label_key!r} is not a class label; expected an "
                        f"image-classification dataset")
    missing = [s for s in ("train", "test") if s not in info.splits]
    if missing:
        raise DataError(f"{name}: has no {' or '.join(missing)} split (it has "
                        f"{', '.join(info.splits)}); expected train and test")
    return image_key, label_key, tuple(int(d) for d in shape), int(classes)


def _tfds_header(name: str, data_dir: str | None):
    builder = _tfds_builder(name, data_dir)
    _, _, shape, classes = _tfds_keys(name, builder)
    sizes = tuple(builder.info.splits[s].num_examples for s in ("train", "test"))
    return shape, classes, sizes


def _load_tfds(name: str, data_dir: str | None, limits: tuple[int | None, int | None]):
    import tensorflow_datasets as tfds

    builder = _tfds_builder(name, data_dir)
    image_key, label_key, shape, classes = _tfds_keys(name, builder)
    out = []
    for split, limit in zip(("train", "test"), limits):
        try:
            source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
            keys = list(range(len(source) if limit is None else min(limit, len(source))))
            # Batched reads decode records in one call, about twice as fast as indexing one by one.
            records = source.__getitems__(keys) if keys else []
            images = np.zeros((len(records), *shape), np.uint8)
            for i, record in enumerate(records):
                images[i] = np.asarray(record[image_key]).reshape(shape)
            labels = np.asarray([r[label_key] for r in records], np.int32)
        except Exception as e:  # shards that do not decode into its records are unusable
            raise DataError(f"{name} TFDS copy in {builder.data_dir}: cannot read split {split} "
                            f"({_one_line(e)}); rebuild it: {_tfds_hints(name.split(':')[0])}"
                            ) from None
        out += [images, labels]
    return tuple(out), classes


def _npz_file(path: str | None):
    if not path:
        raise DataError("data.path: expected the .npz file of x_train, y_train, x_test, y_test "
                        "with data.dataset: npz")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"data.path {p}: no such file; expected a .npz of "
                        f"{', '.join(NPZ_KEYS)}")
    try:
        # allow_pickle=False: arrays of Python objects would run code while they load
        arrays = np.load(p, allow_pickle=False, mmap_mode="r")
    except Exception as e:  # noqa: BLE001 - not an npz, a zip of something else, ...
        raise DataError(f"data.path {p}: not a readable .npz ({_one_line(e)}); expected "
                        f"{', '.join(NPZ_KEYS)}") from None
    if not hasattr(arrays, "files"):
        raise DataError(f"data.path {p}: holds one array, not a .npz archive of "
                        f"{', '.join(NPZ_KEYS)}")
    missing = [k for k in NPZ_KEYS if k not in arrays.files]
    if missing:
        raise DataError(f"data.path {p}: has no {', '.join(missing)} (it has "
                        f"{', '.join(arrays.files) or 'nothing'}); expected {', '.join(NPZ_KEYS)}")
    return p, arrays


def _npz_array(p: Path, arrays, key: str) -> np.ndarray:
    try:
        return np.asarray(arrays[key])
    except Exception as e:  # noqa: BLE001 - object arrays (pickles), a damaged member
        raise DataError(f"data.path {p}: {key} is not a readable .npz array "
                        f"({_one_line(e)}); expected plain numeric arrays") from None


def _npz_images(p: Path, key: str, x) -> tuple[np.ndarray, tuple[int, int, int]]:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]  # grayscale without a channel axis
    if x.ndim != 4 or min(x.shape[1:]) < 1:
        raise DataError(f"data.path {p}: {key} has shape {x.shape}; expected images "
                        f"(N, height, width[, channels])")
    if x.dtype == np.uint8:
        return x, x.shape[1:]
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"data.path {p}: {key} holds integers from {x.min()} to {x.max()}; "
                            f"expected pixel values 0..255 (or floats)")
        return x.astype(np.uint8), x.shape[1:]
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError(f"data.path {p}: {key} holds NaN or infinite values")
        return x, x.shape[1:]
    raise DataError(f"data.path {p}: {key} has dtype {x.dtype}; expected uint8 pixels or floats")


def _npz_labels(p: Path, key: str, y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise DataError(f"data.path {p}: {key} has shape {y.shape} and dtype {y.dtype}; "
                        f"expected {n} integer class labels, one per image")
    if y.size and y.min() < 0:
        raise DataError(f"data.path {p}: {key} has negative labels; expected 0, 1, ...")
    return y.astype(np.int32)


def _npz_header(path: str | None):
    p, arrays = _npz_file(path)
    shapes = {k: _npz_array(p, arrays, k).shape for k in NPZ_KEYS}
    image = tuple(shapes["x_train"][1:]) + ((1,) if len(shapes["x_train"]) == 3 else ())
    ys = [_npz_array(p, arrays, k) for k in ("y_train", "y_test")]
    classes = int(max((y.max() for y in ys if y.size), default=0)) + 1
    return image, classes, (shapes["x_train"][0], shapes["x_test"][0])


def _load_npz(path: str | None):
    p, arrays = _npz_file(path)
    out, shapes = [], []
    for xk, yk in (("x_train", "y_train"), ("x_test", "y_test")):
        x, shape = _npz_images(p, xk, _npz_array(p, arrays, xk))
        out += [x, _npz_labels(p, yk, _npz_array(p, arrays, yk), len(x))]
        shapes.append(shape)
    if shapes[0] != shapes[1]:
        raise DataError(f"data.path {p}: x_train images are {shapes[0]}, x_test images "
                        f"{shapes[1]}; expected one image shape")
    if out[0].dtype != out[2].dtype:
        raise DataError(f"data.path {p}: x_train is {out[0].dtype}, x_test {out[2].dtype}; "
                        f"expected the same pixel type")
    if len(out[0]) == 0:
        raise DataError(f"data.path {p}: x_train holds no images")
    classes = int(max(y.max() for y in (out[1], out[3]) if y.size)) + 1
    if classes < 2:
        raise DataError(f"data.path {p}: every label is 0; expected two classes or more")
    return tuple(out), classes


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
        arrays = _digits_arrays()
        spec = _digits_spec(arrays)
        stats, classes = (spec.mean, spec.std), spec.num_classes
    elif name == "synthetic":
        rng = np.random.default_rng(seed)
        arrays = ()
        for n in (synthetic_train, synthetic_test):
            arrays += (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                       rng.integers(0, 10, n, dtype=np.int32))
        stats, classes = ((0.5,) * 3, (0.25,) * 3), 10
    elif name == "npz":
        arrays, classes = _load_npz(path)
    elif name in _ARCHIVES and archive is not None:
        arrays = _load_archive(name, os.fspath(archive))
    else:
        arrays, classes = _load_tfds(name, data_dir, (train_limit, test_limit))
    if name in _ARCHIVES:
        stats, classes = (_CIFAR_MEAN, _CIFAR_STD), 10 if name == "cifar10" else 100
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


def float_dtype():
    """The floating-point type computations run in: float32, or float64 inside jax.enable_x64."""
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def standardize(images, *, mean, std) -> jnp.ndarray:
    """Scale images to [0,1] (uint8 / 255) and standardize per channel (test time; jittable)."""
    dtype = float_dtype()
    x = jnp.asarray(images).astype(dtype) * pixel_scale(jnp.asarray(images).dtype)
    return (x - jnp.asarray(mean, dtype)) / jnp.asarray(std, dtype)


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
