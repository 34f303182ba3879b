"""A user's own data as a .npz of x_train, y_train, x_test, y_test (no pickles: plain arrays)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError
from .spec import one_line

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MAX_CLASSES = 100_000  # a logits layer wider than this is not a classification dataset


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
        raise DataError(f"data.path {p}: not a readable .npz ({one_line(e)}); expected "
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
                        f"({one_line(e)}); expected plain numeric arrays") from None


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
    if y.size and y.max() >= MAX_CLASSES:
        # Checked before the cast: 2**40 would wrap to 0 in int32 and train on a wrong label.
        raise DataError(f"data.path {p}: {key} holds the label {int(y.max())}; expected class "
                        f"labels 0 .. {MAX_CLASSES - 1}")
    return y.astype(np.int32)


def npz_header(path: str | None):
    p, arrays = _npz_file(path)
    shapes = {k: _npz_array(p, arrays, k).shape for k in NPZ_KEYS}
    image = tuple(shapes["x_train"][1:]) + ((1,) if len(shapes["x_train"]) == 3 else ())
    ys = [_npz_labels(p, k, _npz_array(p, arrays, k), shapes[k.replace("y", "x")][0])
          for k in ("y_train", "y_test")]
    classes = int(max((y.max() for y in ys if y.size), default=0)) + 1
    return image, classes, (shapes["x_train"][0], shapes["x_test"][0])


def load_npz(path: str | None):
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


