"""Any TFDS image-classification dataset, read from a prepared array_record copy without
TensorFlow (tensorflow-datasets is imported only when a recipe names such a dataset)."""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .cifar import ARCHIVES
from .spec import one_line


def _tfds_hints(name: str) -> str:
    hint = f"run 'tfds build {name} --data_dir DIR --file_format array_record' on a machine " \
           f"with internet and set data.data_dir to DIR"
    if name in ARCHIVES:
        hint += (f", or set data.archive to the CIFAR python archive ({ARCHIVES[name][4]}) "
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
        raise DataError(f"{name}: could not open a TFDS copy in {root} ({one_line(e)}); "
                        f"{_tfds_hints(base)}") from None
    if not prepared:
        given = " and no data.archive was given" if base in ARCHIVES else ""
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


def tfds_header(name: str, data_dir: str | None):
    builder = _tfds_builder(name, data_dir)
    _, _, shape, classes = _tfds_keys(name, builder)
    sizes = tuple(builder.info.splits[s].num_examples for s in ("train", "test"))
    return shape, classes, sizes


def load_tfds(name: str, data_dir: str | None, limits: tuple[int | None, int | None]):
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
                            f"({one_line(e)}); rebuild it: {_tfds_hints(name.split(':')[0])}"
                            ) from None
        out += [images, labels]
    return tuple(out), classes


