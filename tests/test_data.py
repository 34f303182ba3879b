"""Tests for taylorcli.data: CIFAR archives, TFDS array_record copies, digits, synthetic, augmentation."""

import functools
import io
import pickle
import sys
import tarfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

# Lets the tests run from any working directory without installing the package.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from taylorcli.data import (  # noqa: E402
    DataError,
    Dataset,
    augment,
    dataset_spec,
    load_dataset,
    standardize,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _to_rows(images):
    # Written element by element from the documented layout, independent of the loader's reshape.
    rows = np.zeros((len(images), 3072), np.uint8)
    for i, img in enumerate(images):
        for c in range(3):
            for h in range(32):
                for w in range(32):
                    rows[i, c * 1024 + h * 32 + w] = img[h, w, c]
    return rows


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _make_cifar10(tmp_path):
    """Write a tiny cifar-10 python archive (tarball and folder); return paths and the truth."""
    folder = tmp_path / "extract" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for b in range(1, 6):
        imgs = _images(3, seed=b)
        labels = [(b * 3 + j) % 10 for j in range(3)]
        _dump(folder / f"data_batch_{b}", {b"batch_label": b"training batch", b"labels": labels,
                                           b"data": _to_rows(imgs),
                                           b"filenames": [b"x.png"] * 3})
        train_x.append(imgs)
        train_y += labels
    test_x = _images(4, seed=99)
    test_y = [9, 0, 5, 1]
    _dump(folder / "test_batch", {b"labels": test_y, b"data": _to_rows(test_x)})
    _dump(folder / "batches.meta", {b"label_names": [b"c%d" % i for i in range(10)]})
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return tarball, folder, (np.concatenate(train_x), np.array(train_y), test_x, np.array(test_y))


def _make_cifar100(tmp_path):
    folder = tmp_path / "extract100" / "cifar-100-python"
    folder.mkdir(parents=True)
    train_x, test_x = _images(5, seed=7), _images(2, seed=8)
    train_y, test_y = [99, 0, 42, 17, 63], [5, 88]
    _dump(folder / "train", {b"data": _to_rows(train_x), b"fine_labels": train_y,
                             b"coarse_labels": [y // 5 for y in train_y]})
    _dump(folder / "test", {b"data": _to_rows(test_x), b"fine_labels": test_y,
                            b"coarse_labels": [y // 5 for y in test_y]})
    _dump(folder / "meta", {b"fine_label_names": [b"f"] * 100})
    tarball = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return tarball, folder, (train_x, np.array(train_y), test_x, np.array(test_y))


def _check_equal(ds, truth, name, num_classes):
    assert isinstance(ds, Dataset) and ds.name == name and ds.num_classes == num_classes
    for got, want in zip((ds.train_x, ds.train_y, ds.test_x, ds.test_y), truth):
        np.testing.assert_array_equal(got, want)
    assert ds.train_x.dtype == np.uint8 and ds.train_x.flags.c_contiguous
    assert ds.train_y.dtype == np.int32 and ds.test_y.dtype == np.int32
    assert ds.mean == CIFAR_MEAN and ds.std == CIFAR_STD


def test_cifar10_archive_tarball_and_folders(tmp_path):
    tarball, folder, truth = _make_cifar10(tmp_path)
    for source in (tarball, folder, folder.parent, str(tarball)):
        _check_equal(load_dataset("cifar10", archive=source), truth, "cifar10", 10)
    limited = load_dataset("cifar10", archive=tarball, train_limit=4, test_limit=2)
    np.testing.assert_array_equal(limited.train_x, truth[0][:4])
    np.testing.assert_array_equal(limited.test_y, truth[3][:2])


def test_cifar100_archive_fine_labels(tmp_path):
    tarball, folder, truth = _make_cifar100(tmp_path)
    for source in (tarball, folder, folder.parent):
        _check_equal(load_dataset("cifar100", archive=source), truth, "cifar100", 100)


def test_bad_archives_raise_one_line_errors(tmp_path):
    garbage = tmp_path / "cifar-10-python.tar.gz"
    garbage.write_bytes(b"not a tarball at all")
    tarball100, _, _ = _make_cifar100(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    for name, path in [("cifar10", garbage), ("cifar10", tmp_path / "missing.tar.gz"),
                       ("cifar10", tarball100), ("cifar10", empty)]:
        with pytest.raises(DataError) as info:
            load_dataset(name, archive=path)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg and "cifar-10" in msg


def test_truncated_pickle_is_reported(tmp_path):
    _, folder, _ = _make_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", archive=folder)


def _write_tfds_copy(root, name, splits, file_format="array_record", shape=(32, 32, 3),
                     classes=None):
    """Write a real prepared TFDS copy (array_record shards + metadata) without TensorFlow."""
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module
    from PIL import Image

    classes = classes or (10 if name in ("cifar10", "mnist") else 100)
    labels = {"label": tfds.features.ClassLabel(num_classes=classes)}
    if name == "cifar100":
        labels["coarse_label"] = tfds.features.ClassLabel(num_classes=20)
    features = tfds.features.FeaturesDict({"id": tfds.features.Text(),
                                           "image": tfds.features.Image(shape=shape),
                                           **labels})
    version_dir = Path(root) / name / str(tfds.builder_cls(name).VERSION)
    version_dir.mkdir(parents=True)
    infos = []
    for split, (images, ys) in splits.items():
        shard = version_dir / f"{name}-{split}.{file_format}-00000-of-00001"
        if file_format == "array_record":
            writer = array_record_module.ArrayRecordWriter(str(shard), "group_size:1")
            for i, (img, y) in enumerate(zip(images, ys)):
                png = io.BytesIO()
                Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(png, format="png")
                example = {"id": f"{split}_{i:05d}", "image": png.getvalue(), "label": int(y)}
                if name == "cifar100":
                    example["coarse_label"] = int(y) // 5
                writer.write(features.serialize_example(example))
            writer.close()
        else:
            shard.write_bytes(b"")
        infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[len(ys)], num_bytes=0))
    tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features,
                                       split_infos=infos, check_data=False)


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_array_record_copy(tmp_path, name, num_classes):
    truth = (_images(6, 1), np.array([3, 1, 4, 1, 5, 9]) * (num_classes // 10),
             _images(3, 2), np.array([2, 7, 1]) * (num_classes // 10))
    _write_tfds_copy(tmp_path, name, {"train": truth[:2], "test": truth[2:]})
    ds = load_dataset(name, data_dir=str(tmp_path))
    _check_equal(ds, truth, name, num_classes)
    assert ds.train_y.min() >= 0 and ds.train_y.max() < num_classes
    limited = load_dataset(name, data_dir=str(tmp_path), train_limit=2, test_limit=1)
    assert limited.train_x.shape == (2, 32, 32, 3) and limited.test_x.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(limited.train_x, truth[0][:2])
    assert "tensorflow" not in sys.modules


def test_tfds_tfrecord_copy_is_rejected_with_hint(tmp_path):
    _write_tfds_copy(tmp_path, "cifar10", {"train": (None, [0, 1])}, file_format="tfrecord")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "array_record" in msg and "data.archive" in msg


def test_tfds_corrupt_shard_is_reported(tmp_path):
    _write_tfds_copy(tmp_path, "cifar10", {"train": (_images(2, 3), [0, 1]),
                                           "test": (_images(1, 4), [2])})
    shard = next((tmp_path / "cifar10").glob("*/cifar10-train.array_record-*"))
    shard.write_bytes(b"\x00" * 3000)
    with pytest.raises(DataError, match="cannot read split train") as info:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert "\n" not in str(info.value)


def test_missing_tfds_copy_and_no_archive(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", data_dir=str(missing))
    msg = str(info.value)
    assert "\n" not in msg and "data.archive" in msg and str(missing) in msg
    assert "cifar-10-python.tar.gz" in msg and "tfds build cifar10" in msg
    assert not missing.exists()


def test_a_tfds_name_without_a_copy_says_how_to_make_one(tmp_path):
    for call in (lambda: load_dataset("mnist", data_dir=str(tmp_path)),
                 lambda: dataset_spec("mnist", data_dir=str(tmp_path))):
        with pytest.raises(DataError) as info:
            call()
        msg = str(info.value)
        assert "\n" not in msg and "mnist not found" in msg and "tfds build mnist" in msg
        assert "data.archive" not in msg  # that is CIFAR's alternative, not mnist's


def test_specs():
    for name, classes in (("cifar10", 10), ("cifar100", 100)):
        spec = dataset_spec(name)
        assert (spec.name, spec.image_shape, spec.num_classes) == (name, (32, 32, 3), classes)
        assert (spec.train_size, spec.test_size) == (50000, 10000)
        assert spec.mean == CIFAR_MEAN and spec.std == CIFAR_STD
    syn = dataset_spec("synthetic", synthetic_train=64, synthetic_test=32)
    assert (syn.image_shape, syn.num_classes, syn.train_size, syn.test_size) == (
        (32, 32, 3), 10, 64, 32)
    assert syn.mean == (0.5,) * 3 and syn.std == (0.25,) * 3


def test_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits", seed=0)
    assert ds.train_x.shape == (1437, 12, 12, 1) and ds.test_x.shape == (360, 12, 12, 1)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int32 and ds.num_classes == 10
    both = np.concatenate([ds.train_x, ds.test_x])
    inner = np.zeros_like(both, dtype=bool)
    inner[:, 2:10, 2:10] = True
    assert not both[~inner].any() and both.max() == 255
    raw = load_digits()
    order = np.random.default_rng(0).permutation(1797)
    expect = np.round(raw.images[order] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(both[:, 2:10, 2:10, 0], expect)
    np.testing.assert_array_equal(np.concatenate([ds.train_y, ds.test_y]), raw.target[order])
    other = load_dataset("digits", seed=123)
    np.testing.assert_array_equal(other.train_x, ds.train_x)
    np.testing.assert_array_equal(other.test_y, ds.test_y)
    scaled = ds.train_x / 255.0
    assert ds.mean == pytest.approx((scaled.mean(),)) and ds.std == pytest.approx((scaled.std(),))
    assert all(type(v) is float for v in ds.mean + ds.std)
    spec = dataset_spec("digits")
    assert (spec.image_shape, spec.num_classes, spec.train_size, spec.test_size) == (
        (12, 12, 1), 10, 1437, 360)
    assert (spec.mean, spec.std) == (ds.mean, ds.std)
    assert load_dataset("digits", train_limit=100).train_x.shape[0] == 100


def test_synthetic():
    a = load_dataset("synthetic", synthetic_train=40, synthetic_test=20, seed=3)
    b = load_dataset("synthetic", synthetic_train=40, synthetic_test=20, seed=3)
    c = load_dataset("synthetic", synthetic_train=40, synthetic_test=20, seed=4)
    assert a.train_x.shape == (40, 32, 32, 3) and a.test_x.shape == (20, 32, 32, 3)
    assert a.train_x.dtype == np.uint8 and a.train_y.dtype == np.int32
    assert a.train_y.min() >= 0 and a.train_y.max() < 10
    np.testing.assert_array_equal(a.train_x, b.train_x)
    assert not np.array_equal(a.train_x, c.train_x)
    assert load_dataset("synthetic", test_limit=5).test_x.shape[0] == 5


def _np_standardize(x_uint8, mean, std):
    return (x_uint8.astype(np.float64) / 255.0 - np.array(mean)) / np.array(std)


def test_standardize_and_identity_augment():
    imgs = _images(5, 0)
    ref = _np_standardize(imgs, CIFAR_MEAN, CIFAR_STD)
    out = standardize(imgs, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)
    plain = augment(jax.random.key(0), imgs, pad=0, flip=False, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert plain.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(out))
    gray = standardize(np.full((2, 12, 12, 1), 255, np.uint8), mean=(0.5,), std=(0.25,))
    np.testing.assert_allclose(np.asarray(gray), 2.0)


def _find_transform(out, img, pad, mean, std):
    """All (dy, dx, flipped) under which `out` is a crop of the zero-padded `img`."""
    padded = np.pad(img.astype(np.float64) / 255.0, ((pad, pad), (pad, pad), (0, 0)))
    h, w = img.shape[:2]
    hits = []
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            for flipped, cand in ((False, crop), (True, crop[:, ::-1])):
                if np.allclose(out, (cand - np.array(mean)) / np.array(std), atol=1e-5):
                    hits.append((dy, dx, flipped))
    return hits


@pytest.mark.parametrize("flip", [False, True])
def test_augment_is_shifted_crop(flip):
    imgs, pad = _images(12, 5), 4
    out = np.asarray(augment(jax.random.key(1), imgs, pad=pad, flip=flip,
                             mean=CIFAR_MEAN, std=CIFAR_STD))
    assert out.shape == imgs.shape and out.dtype == np.float32
    found = []
    for o, img in zip(out, imgs):
        hits = _find_transform(o, img, pad, CIFAR_MEAN, CIFAR_STD)
        assert len(hits) == 1, hits
        assert flip or not hits[0][2]
        found.append(hits[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 1  # offsets are drawn per image


def test_augment_flip_rate_and_keys():
    imgs = _images(400, 6)
    kwargs = dict(pad=0, flip=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    out = np.asarray(augment(jax.random.key(2), imgs, **kwargs))
    ref = _np_standardize(imgs, CIFAR_MEAN, CIFAR_STD)
    same = np.isclose(out, ref, atol=1e-5).all(axis=(1, 2, 3))
    mirrored = np.isclose(out, ref[:, :, ::-1], atol=1e-5).all(axis=(1, 2, 3))
    assert (same ^ mirrored).all()
    assert 0.4 < mirrored.mean() < 0.6
    again = np.asarray(augment(jax.random.key(2), imgs, **kwargs))
    np.testing.assert_array_equal(out, again)
    other = np.asarray(augment(jax.random.key(3), imgs, **kwargs))
    assert not np.array_equal(out, other)


def test_augment_jits():
    imgs = _images(8, 9)
    fn = jax.jit(functools.partial(augment, pad=2, flip=True, mean=CIFAR_MEAN, std=CIFAR_STD))
    key = jax.random.key(4)
    eager = augment(key, imgs, pad=2, flip=True, mean=CIFAR_MEAN, std=CIFAR_STD)
    np.testing.assert_allclose(np.asarray(fn(key, imgs)), np.asarray(eager), atol=1e-6)


# ---------------------------------------------------------------------------
# Any TFDS image-classification dataset, and a user's .npz


def test_a_tfds_dataset_by_name_in_its_real_on_disk_format(tmp_path):
    """mnist as `tfds build --file_format array_record` leaves it: 28x28 grayscale, 10 classes."""
    rng = np.random.default_rng(4)
    train = rng.integers(0, 256, (12, 28, 28, 1), dtype=np.uint8)
    test = rng.integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    ys = (rng.integers(0, 10, 12), rng.integers(0, 10, 5))
    _write_tfds_copy(tmp_path, "mnist", {"train": (train, ys[0]), "test": (test, ys[1])},
                     shape=(28, 28, 1))
    spec = dataset_spec("mnist", data_dir=str(tmp_path))
    assert (spec.image_shape, spec.num_classes, spec.train_size, spec.test_size) == \
        ((28, 28, 1), 10, 12, 5)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.train_x, train)
    np.testing.assert_array_equal(ds.test_y, ys[1])
    scaled = train.astype(np.float64) / 255
    assert ds.mean == pytest.approx((scaled.mean(),)) and ds.std == pytest.approx((scaled.std(),))
    assert "tensorflow" not in sys.modules


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_arrays_with_their_shapes_classes_and_standardization(tmp_path):
    rng = np.random.default_rng(5)
    x_train = rng.random((20, 6, 5, 2)).astype(np.float32)  # floats: already scaled
    x_test = rng.random((7, 6, 5, 2)).astype(np.float32)
    y_train, y_test = rng.integers(0, 3, 20), np.array([0, 1, 2, 2, 1, 0, 3])
    path = _npz(tmp_path / "mine.npz", x_train=x_train, y_train=y_train, x_test=x_test,
                y_test=y_test)
    spec = dataset_spec("npz", path=path)
    assert (spec.image_shape, spec.num_classes, spec.train_size, spec.test_size) == \
        ((6, 5, 2), 4, 20, 7)
    ds = load_dataset("npz", path=path, train_limit=10)
    np.testing.assert_array_equal(ds.train_x, x_train[:10])
    assert ds.num_classes == 4
    np.testing.assert_allclose(ds.mean, x_train[:10].astype(np.float64).mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(ds.std, x_train[:10].astype(np.float64).std(axis=(0, 1, 2)))
    # grayscale uint8 without a channel axis
    gray = rng.integers(0, 256, (9, 8, 8), dtype=np.uint8)
    path = _npz(tmp_path / "gray.npz", x_train=gray, y_train=np.arange(9) % 2, x_test=gray[:3],
                y_test=np.array([1, 0, 1]))
    ds = load_dataset("npz", path=path)
    assert ds.train_x.shape == (9, 8, 8, 1) and ds.train_x.dtype == np.uint8
    x = standardize(ds.train_x, mean=ds.mean, std=ds.std)
    assert float(jnp.mean(x)) == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("arrays, needle", [
    ({}, "has no x_train, y_train, x_test, y_test"),
    ({"x_train": np.zeros((4, 3, 3)), "y_train": np.zeros(3, int), "x_test": np.zeros((1, 3, 3)),
      "y_test": np.zeros(1, int)}, "y_train has shape (3,)"),
    ({"x_train": np.zeros((4,)), "y_train": np.zeros(4, int), "x_test": np.zeros((1,)),
      "y_test": np.zeros(1, int)}, "x_train has shape (4,)"),
    ({"x_train": np.zeros((4, 3, 3)), "y_train": np.zeros(4, int), "x_test": np.zeros((1, 4, 4)),
      "y_test": np.zeros(1, int)}, "one image shape"),
    ({"x_train": np.full((2, 3, 3), np.nan), "y_train": np.array([0, 1]),
      "x_test": np.zeros((1, 3, 3)), "y_test": np.zeros(1, int)}, "NaN"),
    ({"x_train": np.zeros((2, 3, 3)), "y_train": np.array([0.5, 1.0]),
      "x_test": np.zeros((1, 3, 3)), "y_test": np.zeros(1, int)}, "integer class labels"),
    ({"x_train": np.full((2, 3, 3), 300), "y_train": np.array([0, 1]),
      "x_test": np.zeros((1, 3, 3), int), "y_test": np.zeros(1, int)}, "0..255"),
    ({"x_train": np.array([[[object()]]] * 2, dtype=object), "y_train": np.array([0, 1]),
      "x_test": np.zeros((1, 1, 1)), "y_test": np.zeros(1, int)}, "not a readable .npz array"),
], ids=["no-keys", "label-count", "not-images", "two-shapes", "nan", "float-labels",
        "int-range", "objects"])
def test_malformed_npz_is_one_line_naming_the_file(tmp_path, arrays, needle):
    path = tmp_path / "bad.npz"
    np.savez(path, **(arrays or {"other": np.zeros(1)}), allow_pickle=True) if arrays else \
        np.savez(path, other=np.zeros(1))
    with pytest.raises(DataError) as info:
        load_dataset("npz", path=str(path))
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg and needle in msg, msg


def test_npz_that_is_not_there_or_not_an_archive(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset("npz", path=str(tmp_path / "missing.npz"))
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset("npz", path=str(tmp_path / "text.npz"))


def test_digits_are_kept_in_taylorclis_cache_and_equal_scikit_learns(tmp_path, monkeypatch):
    """The cached arrays are load_digits' own (read again here), and a cache folder that is not
    taylorcli's is never written."""
    from taylorcli.data import digits

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    digits._digits_arrays.cache_clear()
    first = digits.digits_arrays()
    cached = list((tmp_path / "xdg" / "taylorcli" / "data").glob("digits-sklearn-*.npz"))
    assert len(cached) == 1
    digits._digits_arrays.cache_clear()
    again = digits.digits_arrays()  # from the cache file
    fresh = digits._load_digits()   # scikit-learn's loader, now
    for a, b, c in zip(first, again, fresh):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)
    mine = tmp_path / "mine"
    (mine / "taylorcli" / "data").mkdir(parents=True)
    (mine / "taylorcli" / "data" / "notes.txt").write_text("mine\n")
    monkeypatch.setenv("XDG_CACHE_HOME", str(mine))
    digits._digits_arrays.cache_clear()
    digits.digits_arrays()
    assert sorted(p.name for p in (mine / "taylorcli" / "data").iterdir()) == ["notes.txt"]
    digits._digits_arrays.cache_clear()
