"""Tests for lowbit.data: readers (real and synthetic files), splits, errors, BatchLoader."""

from __future__ import annotations

import gzip
import os
import pickle
import random
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.data import DATASETS, BatchLoader, DatasetError, TensorSplit, load_dataset, seed_everything
from lowbit.data.idx import read_idx
from lowbit.data.splits import channel_stats, stratified_holdout

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, *, gz: bool, type_code: int = 0x08) -> Path:
    """Write ``array`` in IDX format straight from the spec (independent of the reader)."""
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0D: ">f4"}[type_code]
    payload = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=dtype).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def make_idx_dataset(directory: Path, *, gz: bool, n_train: int = 40, n_test: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 10).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, key in zip(IDX_STEMS, ("train_x", "train_y", "test_x", "test_y")):
        write_idx(directory / stem, arrays[key], gz=gz)
    return arrays


def check_split_partition(splits, n_official_train: int, n_official_test: int) -> None:
    """train and val are disjoint and index the official training set; test indexes the test set."""
    tr, va, te = (s.index.numpy() for s in (splits.train, splits.val, splits.test))
    assert len(np.intersect1d(tr, va)) == 0
    assert len(np.unique(tr)) == len(tr) and len(np.unique(va)) == len(va) and len(np.unique(te)) == len(te)
    assert tr.max(initial=-1) < n_official_train and va.max(initial=-1) < n_official_train
    assert te.max(initial=-1) < n_official_test


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_units(digits):
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    assert digits.name == "digits" and digits.num_classes == 10
    assert digits.input_shape == (1, 8, 8) and digits.augment == "none"
    for split in (digits.train, digits.val, digits.test):
        assert split.x.dtype == torch.uint8 and split.x.shape[1:] == (1, 8, 8)
        assert split.y.dtype == torch.int64
        # Stored pixels are the 0..16 grey levels times 15, looked up by original position.
        idx = split.index.numpy()
        np.testing.assert_array_equal(split.x.numpy().reshape(-1, 64), images[idx] * 15)
        np.testing.assert_array_equal(split.y.numpy(), labels[idx])


def test_digits_split_sizes_add_up_and_are_disjoint(digits):
    n_test = round(0.2 * 1797)
    assert len(digits.test) == n_test
    assert len(digits.train) + len(digits.val) == 1797 - n_test
    assert len(digits.val) == round(0.1 * (1797 - n_test))
    everything = np.concatenate([s.index.numpy() for s in (digits.train, digits.val, digits.test)])
    np.testing.assert_array_equal(np.sort(everything), np.arange(1797))  # a partition: disjoint and complete


def test_digits_splits_depend_on_seed_only_where_documented(digits):
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    for a, b in ((digits.train, again.train), (digits.val, again.val), (digits.test, again.test)):
        assert torch.equal(a.index, b.index) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(digits.val.index, other.val.index)
    assert torch.equal(digits.test.index, other.test.index)  # the digits test split is fixed


def test_digits_mean_std_from_train_only(digits):
    x = digits.train.x.numpy().astype(np.float64)
    assert digits.mean == pytest.approx((x.mean(),), rel=1e-12)
    assert digits.std == pytest.approx((x.std(),), rel=1e-12)
    x_val = digits.val.x.numpy().astype(np.float64)
    assert digits.mean[0] != pytest.approx(np.concatenate([x, x_val]).mean(), rel=1e-9)


def test_digits_validation_split_is_stratified(digits):
    counts_val = np.bincount(digits.val.y.numpy(), minlength=10)
    counts_pool = counts_val + np.bincount(digits.train.y.numpy(), minlength=10)
    expected = counts_pool * len(digits.val) / counts_pool.sum()
    assert np.all(np.abs(counts_val - expected) < 1)


def test_subsets_and_val_fraction(digits):
    s = load_dataset("digits", val_fraction=0.25, seed=3, train_subset=200, test_subset=50)
    assert len(s.train) + len(s.val) == 200 and len(s.val) == 50 and len(s.test) == 50
    assert set(s.test.index.tolist()) <= set(digits.test.index.tolist())
    none = load_dataset("digits", val_fraction=0.0)
    assert len(none.val) == 0 and len(none.train) == 1797 - len(none.test)
    huge = load_dataset("digits", train_subset=10**6)  # "at most N"
    assert len(huge.train) + len(huge.val) == 1797 - len(huge.test)


@pytest.mark.parametrize(
    "kwargs", [{"val_fraction": 1.0}, {"val_fraction": -0.1}, {"seed": -1}, {"train_subset": 0}, {"test_subset": 1.5}]
)
def test_bad_split_arguments(kwargs):
    with pytest.raises(ValueError):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(DatasetError) as info:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(info.value)
    assert load_dataset("DIGITS", test_subset=5).name == "digits"


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_channel_stats_match_numpy(dtype):
    x = torch.randint(0, 256, (50, 3, 5, 7), generator=torch.Generator().manual_seed(4)).to(dtype)
    x[:, 2] = 9  # a constant channel gets std 1 (never divide by zero)
    mean, std = channel_stats(x)
    ref = x.numpy().astype(np.float64)
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std[:2], ref.std(axis=(0, 2, 3))[:2], rtol=1e-10)
    assert std[2] == 1.0


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=1, max_size=200),
    fraction=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32),
)
def test_stratified_holdout_properties(labels, fraction, seed):
    y = np.array(labels)
    kept, held = stratified_holdout(y, fraction, np.random.default_rng(seed))
    n = len(y)
    assert len(held) == max(0, min(int(np.floor(fraction * n + 0.5)), n - 1))
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(n))
    for c in np.unique(y):
        share = np.sum(y == c) * len(held) / n
        assert abs(np.sum(y[held] == c) - share) < 1


# --------------------------------------------------------------------------- IDX (MNIST / Fashion-MNIST)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_system_directory():
    s = load_dataset("fashion-mnist", train_subset=600, test_subset=200, seed=0)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and len(s.classes) == 10
    assert len(s.train) + len(s.val) == 600 and len(s.val) == 60 and len(s.test) == 200
    check_split_partition(s, 60000, 10000)
    assert s.train.x.dtype == torch.uint8 and int(s.train.y.max()) <= 9
    # Spot-check against the raw file read independently of the dataset code.
    with gzip.open(FASHION_DIR / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    pos = int(s.test.index[0])
    expected = np.frombuffer(raw, dtype=np.uint8, offset=16 + pos * 784, count=784).reshape(28, 28)
    np.testing.assert_array_equal(s.test.x[0, 0].numpy(), expected)
    assert 60 < s.mean[0] < 85 and 80 < s.std[0] < 100  # Fashion-MNIST: about 0.286 and 0.353 of 255


@pytest.mark.parametrize("gz", [False, True])
def test_synthetic_idx_reads_back_exactly(tmp_path, gz):
    arrays = make_idx_dataset(tmp_path, gz=gz)
    suffix = ".gz" if gz else ""
    np.testing.assert_array_equal(read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}"), arrays["train_x"])
    np.testing.assert_array_equal(read_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}"), arrays["test_y"])

    s = load_dataset("mnist", tmp_path, val_fraction=0.25, seed=5)
    assert s.input_shape == (1, 28, 28) and len(s.train) == 30 and len(s.val) == 10 and len(s.test) == 20
    check_split_partition(s, 40, 20)
    for split, x_key, y_key in (
        (s.train, "train_x", "train_y"),
        (s.val, "train_x", "train_y"),
        (s.test, "test_x", "test_y"),
    ):
        idx = split.index.numpy()
        np.testing.assert_array_equal(split.x[:, 0].numpy(), arrays[x_key][idx])
        np.testing.assert_array_equal(split.y.numpy(), arrays[y_key][idx])
    # Fashion-MNIST from an explicit directory uses the same reader.
    assert len(load_dataset("fashion-mnist", tmp_path).test) == 20


def test_idx_other_element_types(tmp_path):
    ints = np.arange(-6, 6, dtype=np.int16).reshape(3, 4)
    floats = np.linspace(-1, 1, 10, dtype=np.float32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a", ints, gz=False, type_code=0x0B)), ints)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b", floats, gz=True, type_code=0x0D)), floats)


def test_mnist_raw_subfolder_layout(tmp_path):
    make_idx_dataset(tmp_path / "MNIST" / "raw", gz=True)
    assert len(load_dataset("mnist", tmp_path, test_subset=7).test) == 7


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def _bad_magic(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[2] = 0x42
    path.write_bytes(bytes(raw))


def _trailing(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x00\x00\x00")


@pytest.mark.parametrize("damage", [_truncate, _bad_magic, _trailing])
def test_corrupt_idx_file_is_named(tmp_path, damage):
    make_idx_dataset(tmp_path, gz=False)
    damage(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte") as info:
        load_dataset("mnist", tmp_path)
    assert "corrupt" in str(info.value)


def test_truncated_gzip_and_label_mismatch(tmp_path):
    make_idx_dataset(tmp_path, gz=True)
    gz_path = tmp_path / "t10k-images-idx3-ubyte.gz"
    gz_path.write_bytes(gz_path.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="corrupt .*t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", tmp_path)

    other = tmp_path / "other"
    make_idx_dataset(other, gz=False)
    write_idx(other / "train-labels-idx1-ubyte", np.zeros(39, np.uint8), gz=False)  # 39 labels, 40 images
    with pytest.raises(DatasetError, match="corrupt .*train-labels-idx1-ubyte: 39 labels"):
        load_dataset("mnist", other)

    bad_labels = tmp_path / "bad_labels"
    make_idx_dataset(bad_labels, gz=False)
    write_idx(bad_labels / "t10k-labels-idx1-ubyte", np.full(20, 10, np.uint8), gz=False)  # label 10 of 10 classes
    with pytest.raises(DatasetError, match="corrupt .*t10k-labels-idx1-ubyte"):
        load_dataset("mnist", bad_labels)


def test_missing_directory_message(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_dataset("fashion-mnist", missing)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in message and "apt-get install dataset-fashion-mnist" in message
    assert "github.com/zalandoresearch/fashion-mnist" in message and "--data-dir" in message
    for stem in IDX_STEMS:
        assert stem in message

    with pytest.raises(DatasetError, match="yann.lecun.com"):
        load_dataset("mnist", missing)
    with pytest.raises(DatasetError, match="no data_dir"):
        load_dataset("mnist")

    make_idx_dataset(tmp_path / "partial", gz=True)
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match=r"missing t10k-labels-idx1-ubyte"):
        load_dataset("mnist", tmp_path / "partial")


# --------------------------------------------------------------------------- CIFAR


def _cifar_batch(rng, n: int, label_key: bytes, num_classes: int) -> dict:
    return {
        b"batch_label": b"fake batch",
        label_key: [int(v) for v in rng.integers(0, num_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [b"img%d.png" % i for i in range(n)],
    }


def make_cifar(root: Path, which: str, *, n: int = 6, archive: bool = False) -> dict:
    """Write a tiny CIFAR-10/100 in the real python-pickle format; return the written batches."""
    rng = np.random.default_rng(1)
    if which == "cifar10":
        folder, label_key, classes = "cifar-10-batches-py", b"labels", 10
        names = {f"data_batch_{i}": n for i in range(1, 6)} | {"test_batch": n}
        meta = ("batches.meta", {b"label_names": [b"class%d" % i for i in range(10)]})
    else:
        folder, label_key, classes = "cifar-100-python", b"fine_labels", 100
        names = {"train": 5 * n, "test": n}
        meta = ("meta", {b"fine_label_names": [b"fine%d" % i for i in range(100)]})
    target = root / folder
    target.mkdir(parents=True)
    batches = {}
    for member, count in names.items():
        batches[member] = _cifar_batch(rng, count, label_key, classes)
        if which == "cifar100":
            batches[member][b"coarse_labels"] = [0] * count
        with open(target / member, "wb") as f:
            pickle.dump(batches[member], f, protocol=2)
    with open(target / meta[0], "wb") as f:
        pickle.dump(meta[1], f, protocol=2)
    if archive:
        archive_name = "cifar-10-python.tar.gz" if which == "cifar10" else "cifar-100-python.tar.gz"
        with tarfile.open(root / archive_name, "w:gz") as tar:
            tar.add(target, arcname=folder)
        for p in target.iterdir():
            p.unlink()
        target.rmdir()
    return batches


@pytest.mark.parametrize("which", ["cifar10", "cifar100"])
@pytest.mark.parametrize("archive", [False, True])
def test_synthetic_cifar_reads_back(tmp_path, which, archive):
    batches = make_cifar(tmp_path, which, archive=archive)
    s = load_dataset(which, tmp_path, val_fraction=0.2, seed=0)
    if archive:  # the archive itself may be given as data_dir
        archive_path = next(tmp_path.glob("*.tar.gz"))
        assert torch.equal(load_dataset(which, archive_path, val_fraction=0.2, seed=0).train.x, s.train.x)
    label_key = b"labels" if which == "cifar10" else b"fine_labels"
    train_members = [f"data_batch_{i}" for i in range(1, 6)] if which == "cifar10" else ["train"]
    test_member = "test_batch" if which == "cifar10" else "test"
    train_x = np.concatenate([batches[m][b"data"] for m in train_members]).reshape(-1, 3, 32, 32)
    train_y = np.concatenate([batches[m][label_key] for m in train_members])
    assert s.input_shape == (3, 32, 32) and s.augment == "crop-flip"
    assert s.num_classes == (10 if which == "cifar10" else 100) and len(s.classes) == s.num_classes
    assert len(s.train) + len(s.val) == 30 and len(s.val) == 6 and len(s.test) == 6
    check_split_partition(s, 30, 6)
    for split in (s.train, s.val):
        np.testing.assert_array_equal(split.x.numpy(), train_x[split.index.numpy()])
        np.testing.assert_array_equal(split.y.numpy(), train_y[split.index.numpy()])
    np.testing.assert_array_equal(s.test.x.numpy(), batches[test_member][b"data"].reshape(-1, 3, 32, 32))
    # Channel layout: the first 1024 bytes of a row are the red plane, row-major.
    row = batches[test_member][b"data"][0]
    assert s.test.x[0, 0, 0, 5] == row[5] and s.test.x[0, 1, 2, 3] == row[1024 + 2 * 32 + 3]
    assert s.train.x.shape[1] == 3 and len(s.mean) == 3 and len(s.std) == 3


def _py2_str(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b  # SHORT_BINSTRING: a Python 2 str


def python2_cifar_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The opcodes Python 2's cPickle (protocol 2) writes for ``{'data': uint8 array, 'labels': [...]}``,
    as in the real CIFAR files: str keys and the raw array buffer are Python 2 strs."""
    n, d = data.shape
    raw = data.tobytes()
    out = b"\x80\x02}q\x00(" + _py2_str(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + _py2_str(b"b") + b"\x87R"
    out += b"(K\x01M" + struct.pack("<H", n) + b"M" + struct.pack("<H", d) + b"\x86"
    out += b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + _py2_str(b"|") + b"NNNJ" + struct.pack("<i", -1) + b"J" + struct.pack("<i", -1) + b"K\x00tb"
    out += b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
    out += _py2_str(b"labels") + b"]q\x01(" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    return out


def test_cifar_python2_pickles(tmp_path):
    make_cifar(tmp_path, "cifar10")
    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, 6)]
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(python2_cifar_pickle(data, labels))
    s = load_dataset("cifar10", tmp_path)
    np.testing.assert_array_equal(s.test.x.numpy(), data.reshape(-1, 3, 32, 32))
    assert s.test.y.tolist() == labels


def test_cifar_folder_given_directly_and_missing_batch(tmp_path):
    make_cifar(tmp_path, "cifar10")
    folder = tmp_path / "cifar-10-batches-py"
    assert len(load_dataset("cifar10", folder).test) == 6
    (folder / "data_batch_3").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", tmp_path)
    assert "data_batch_3" in str(info.value) and "cs.toronto.edu/~kriz/cifar.html" in str(info.value)
    with pytest.raises(DatasetError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path / "empty")


def test_cifar_corrupt_and_malicious_pickles(tmp_path):
    make_cifar(tmp_path, "cifar10")
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:200])
    with pytest.raises(DatasetError, match="data_batch_2"):
        load_dataset("cifar10", tmp_path)

    marker = tmp_path / "code-ran"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    with open(batch, "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(DatasetError, match="data_batch_2: cannot unpickle .*not allowed"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()

    with open(batch, "wb") as f:
        pickle.dump({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}, f)
    with pytest.raises(DatasetError, match="3072"):
        load_dataset("cifar10", tmp_path)


def test_cifar_truncated_archive(tmp_path):
    make_cifar(tmp_path, "cifar10", archive=True)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)


# --------------------------------------------------------------------------- SVHN


def test_synthetic_svhn_reads_back(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    mats = {}
    for name, n in (("train_32x32.mat", 20), ("test_32x32.mat", 10)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 meaning digit 0
        savemat(tmp_path / name, {"X": x, "y": y})
        mats[name] = (x, y)
    s = load_dataset("svhn", tmp_path, val_fraction=0.25)
    assert s.input_shape == (3, 32, 32) and s.augment == "crop" and s.num_classes == 10
    assert len(s.train) == 15 and len(s.val) == 5 and len(s.test) == 10
    x_test, y_test = mats["test_32x32.mat"]
    np.testing.assert_array_equal(s.test.y.numpy(), y_test[:, 0] % 10)
    assert 0 in s.test.y.tolist() and 10 not in s.test.y.tolist()
    # X[h, w, c, n] becomes x[n, c, h, w].
    np.testing.assert_array_equal(s.test.x.numpy(), x_test.transpose(3, 2, 0, 1))
    x_train, _ = mats["train_32x32.mat"]
    np.testing.assert_array_equal(s.train.x.numpy(), x_train.transpose(3, 2, 0, 1)[s.train.index.numpy()])

    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage" + bytes(20))
    with pytest.raises(DatasetError, match="corrupt .*test_32x32.mat"):
        load_dataset("svhn", tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset("svhn", tmp_path)
    assert "test_32x32.mat" in str(info.value) and "ufldl.stanford.edu/housenumbers" in str(info.value)


# --------------------------------------------------------------------------- BatchLoader


def indexed_split(n: int = 103, channels: int = 3, size: int = 8) -> TensorSplit:
    """Sample i has label i and a distinctive random image, so batches can be traced."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    return TensorSplit(x, torch.arange(n))


def collect(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_loader_covers_each_sample_once_per_epoch():
    split = indexed_split()
    loader = BatchLoader(split, 16, shuffle=True, seed=3)
    assert len(loader) == 7
    sizes = [len(y) for _, y in loader]
    assert sizes == [16] * 6 + [7]
    x, y = collect(loader)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (103, 3, 8, 8)
    assert torch.equal(torch.sort(y).values, torch.arange(103))
    assert not torch.equal(y, torch.arange(103))  # shuffled
    assert torch.equal(x, split.x[y].float())  # images travel with their labels, unnormalised here

    dropped = BatchLoader(split, 16, shuffle=True, seed=3, drop_last=True)
    assert len(dropped) == 6 and [len(y) for _, y in dropped] == [16] * 6
    ordered = BatchLoader(split, 50, shuffle=False, seed=3)
    assert torch.equal(collect(ordered)[1], torch.arange(103))


def test_loader_order_is_a_function_of_seed_and_epoch():
    split = indexed_split()
    a = BatchLoader(split, 10, shuffle=True, seed=7)
    first = collect(a)[1]
    assert torch.equal(collect(a)[1], first)  # re-iterating the same epoch repeats it
    a.set_epoch(1)
    second = collect(a)[1]
    assert not torch.equal(first, second)
    resumed = BatchLoader(split, 10, shuffle=True, seed=7, epoch=1)  # a fresh process resuming at epoch 1
    assert torch.equal(collect(resumed)[1], second)
    torch.manual_seed(12345)  # the global RNG must not matter
    assert torch.equal(collect(BatchLoader(split, 10, shuffle=True, seed=7))[1], first)
    assert not torch.equal(collect(BatchLoader(split, 10, shuffle=True, seed=8))[1], first)


def test_loader_normalisation_uses_train_statistics(digits):
    loader = BatchLoader(digits.train, 128, shuffle=True, seed=0, normalize=(digits.mean, digits.std))
    x, _ = collect(loader)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-4
    split = indexed_split()
    mean, std = channel_stats(split.x)
    x, _ = collect(BatchLoader(split, 32, normalize=(mean, std)))
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="channels"):
        BatchLoader(split, 4, normalize=((1.0, 2.0), (1.0, 1.0)))
    with pytest.raises(ValueError, match="std"):
        BatchLoader(split, 4, normalize=(0.0, 0.0))


def _windows(image: torch.Tensor, padding: int = 4) -> list[torch.Tensor]:
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    h, w = image.shape[-2:]
    return [padded[:, dy : dy + h, dx : dx + w] for dy in range(2 * padding + 1) for dx in range(2 * padding + 1)]


@pytest.mark.parametrize("kind", ["crop", "crop-flip"])
def test_augmentation_is_a_reproducible_crop_or_flip(kind):
    split = indexed_split(n=40, size=12)
    loader = BatchLoader(split, 16, shuffle=True, seed=1, augment=kind)
    x, y = collect(loader)
    plain_x, plain_y = collect(BatchLoader(split, 16, shuffle=True, seed=1))
    assert torch.equal(y, plain_y)  # augmentation never changes which samples are visited
    assert x.shape == plain_x.shape and x.dtype == torch.float32
    assert not torch.equal(x, plain_x)
    flipped = 0
    for xi, label in zip(x, y):
        original = split.x[label].float()
        if any(torch.equal(xi, win) for win in _windows(original)):
            continue
        assert kind == "crop-flip" and any(torch.equal(xi, win.flip(-1)) for win in _windows(original))
        flipped += 1
    assert (flipped > 0) == (kind == "crop-flip")
    assert torch.equal(collect(BatchLoader(split, 16, shuffle=True, seed=1, augment=kind))[0], x)
    loader.set_epoch(1)
    assert not torch.equal(collect(loader)[0], x)


def test_loader_argument_checks():
    split = indexed_split()
    with pytest.raises(ValueError, match="augment"):
        BatchLoader(split, 8, augment="mixup")
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(split, 0)
    with pytest.raises(ValueError, match="seed"):
        BatchLoader(split, 8, seed=-1)


@pytest.mark.parametrize("n, batch_size, sizes", [(33, 16, [16, 17]), (17, 16, [17]), (1, 16, [1]), (5, 1, [1] * 5)])
def test_a_last_batch_of_one_sample_joins_the_batch_before(n, batch_size, sizes):
    """BatchNorm cannot train on a batch of one: no epoch ends with one (unless the split has one sample)."""
    split = indexed_split(n)
    for shuffle in (True, False):
        loader = BatchLoader(split, batch_size, shuffle=shuffle, seed=2, augment="crop-flip")
        assert [len(y) for _, y in loader] == sizes and len(loader) == len(sizes)
        assert torch.equal(torch.sort(collect(loader)[1]).values, torch.arange(n))
    kept = BatchLoader(split, batch_size, merge_single_last=False)
    assert [len(y) for _, y in kept] == [batch_size] * (n // batch_size) + [1] * (n % batch_size == 1)
    assert [len(y) for _, y in BatchLoader(split, batch_size, drop_last=True)] == [batch_size] * (n // batch_size)


def test_merging_the_last_sample_keeps_the_order_and_the_other_batches():
    split = indexed_split(33)
    merged = [y for _, y in BatchLoader(split, 16, shuffle=True, seed=4)]
    kept = [y for _, y in BatchLoader(split, 16, shuffle=True, seed=4, merge_single_last=False)]
    assert torch.equal(merged[0], kept[0]) and torch.equal(merged[1], torch.cat(kept[1:]))


def test_idx_shape_larger_than_int64_is_reported_exactly_naming_the_file(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte"
    shape = (65536, 65536, 65536, 32768)  # 2**63 elements: int64 arithmetic wraps around
    path.write_bytes(bytes([0, 0, 8, 4]) + struct.pack(">4I", *shape) + bytes(10))
    with pytest.raises(DatasetError, match=f"corrupt dataset file {path}: truncated: .*\\({4 + 16 + 2**63} bytes\\)"):
        read_idx(path)


def draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_seed_everything_seeds_python_numpy_and_torch():
    seed_everything(7)
    first = draws()
    seed_everything(7)
    assert draws() == first
    seed_everything(8)
    assert all(a != b for a, b in zip(draws(), first))
    random.seed(7)
    np.random.seed(7)
    torch.manual_seed(7)
    assert draws() == first  # the conventional seeding of each generator
    seed_everything(2**40 + 3)  # numpy takes 32-bit words
    big = draws()
    seed_everything(2**40 + 3)
    assert draws() == big
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
