"""Datasets as NHWC image arrays (uint8, or float already scaled) with integer labels, and the
jittable augmentation the engine applies on device.

    spec.py         Dataset (loaded arrays) and DatasetSpec (shapes only)
    loading.py      a recipe's data section to arrays: source, limits, standardization
    digits.py       scikit-learn's digits, the offline default
    cifar.py        CIFAR-10/100 archives, unpickled with an allow-list
    tfds_source.py  any TFDS image-classification dataset (array_record, no TensorFlow)
    npz.py          a user's .npz of arrays
    augment.py      scaling, standardization, pad-and-crop and flips; the compute dtype
"""

from ..errors import DataError
from .augment import augment, channel_stats, float_dtype, pixel_scale, standardize
from .loading import dataset_spec, load_dataset, load_for_recipe, recipe_spec, spec_of, \
    with_data_stats
from .npz import NPZ_KEYS
from .spec import Dataset, DatasetSpec

__all__ = ["Dataset", "DatasetSpec", "DataError", "NPZ_KEYS", "augment", "channel_stats",
           "dataset_spec", "float_dtype", "load_dataset", "load_for_recipe", "pixel_scale",
           "recipe_spec", "spec_of", "standardize", "with_data_stats"]
