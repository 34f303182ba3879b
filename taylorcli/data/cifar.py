"""CIFAR-10/100 from the official "python version" archive (the .tar.gz or its extracted
folder), unpickled with an allow-list: a crafted archive runs no code."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from ..errors import DataError
from .spec import one_line

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# Official "python version" archives: (folder, train files, test files, label key, tarball name).
ARCHIVES = {
    "cifar10": ("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                ("test_batch",), b"labels", "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ("train",), ("test",), b"fine_labels",
                 "cifar-100-python.tar.gz"),
}


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


def load_archive(name: str, archive: str) -> tuple[np.ndarray, ...]:
    folder, train_files, test_files, label_key, tarball = ARCHIVES[name]
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
                            f"({one_line(e)}); {expected}") from None
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
        raise DataError(f"{name} archive {path} is not a readable tar.gz ({one_line(e)}): "
                        f"{expected}") from None


