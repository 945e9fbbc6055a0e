"""Tests for datasets/mnist.py: the IDX parser on tiny files written here, and the download,
verification and cache logic against mirrors on this machine (an HTTP server on 127.0.0.1 that
the test starts, or a file:// folder). Nothing here reaches the internet.

The real MNIST files are read from ../shared/data/mnist beside the repository (never copied
into it); tests that need them are skipped when that folder is missing.
"""
import contextlib
import gzip
import hashlib
import os
import pathlib
import struct
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from datasets import load_dataset, mnist
from datasets.mnist import FILES, MIRRORS, load_mnist, mirror_list, read_idx
from errors import DataError

SHARED_MNIST = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
CACHE_FILES = {f"{name}.gz" for name in FILES.values()} | {f"{name}.gz.sha256" for name in FILES.values()}

needs_mnist = pytest.mark.skipif(
    not all((SHARED_MNIST / f"{name}.gz").is_file() for name in FILES.values()),
    reason=f"the real MNIST files are not in {SHARED_MNIST}")


class RecordingLog:
    """The log interface load_mnist expects, keeping every call for assertions."""
    def __init__(self):
        self.messages, self.progress_calls = [], []
    def info(self, msg): self.messages.append(("info", msg))
    def warning(self, msg): self.messages.append(("warning", msg))
    def debug(self, msg): self.messages.append(("debug", msg))
    def progress(self, done, total, label): self.progress_calls.append((done, total, label))

    def said(self, level, *words):
        return [m for lvl, m in self.messages if lvl == level and all(w in m for w in words)]


def idx_bytes(array):
    """The IDX encoding of a uint8 array: magic 0x0000 0x08 ndim, big-endian sizes, data."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_gz(path, content):
    path.write_bytes(gzip.compress(content))
    return path


@contextlib.contextmanager
def http_mirror(folder, name, requests):
    """Serve `folder` on 127.0.0.1 (a free port); yield its base URL; append (name, path) per request."""
    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, format, *args):  # record instead of writing to stderr
            requests.append((name, self.path))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --- read_idx on tiny files -------------------------------------------------------------------

def test_read_idx_parses_images_and_labels(tmp_path):
    images = np.arange(4 * 28 * 28, dtype=np.int64).reshape(4, 28, 28) % 256
    labels = np.array([3, 0, 9, 7])
    got_images = read_idx(write_gz(tmp_path / "img.gz", idx_bytes(images)))
    got_labels = read_idx(write_gz(tmp_path / "lbl.gz", idx_bytes(labels)))
    assert got_images.dtype == np.uint8 and got_images.shape == (4, 28, 28)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (4,)
    np.testing.assert_array_equal(got_labels, labels)


GOOD_LABELS = idx_bytes(np.array([1, 2, 3, 4]))


@pytest.mark.parametrize("content, gzipped, expected", [
    (GOOD_LABELS[:-1], True, "truncated"),
    (GOOD_LABELS + b"\x00\x00", True, "trailing bytes"),
    (GOOD_LABELS[:6], True, "header truncated"),
    (b"\x00\x00\x0d\x01" + GOOD_LABELS[4:], True, "not an IDX file"),  # 0x0d: float, not ubyte
    (b"", True, "not an IDX file"),
    (GOOD_LABELS, False, "gzip"),
    (gzip.compress(GOOD_LABELS)[:-8], False, "gzip"),  # gzip stream cut before its end
], ids=["truncated", "trailing", "short-header", "wrong-magic", "empty", "not-gzip", "cut-gzip"])
def test_read_idx_rejects_bad_files(tmp_path, content, gzipped, expected):
    path = tmp_path / "bad-labels.gz"
    path.write_bytes(gzip.compress(content) if gzipped else content)
    with pytest.raises(DataError, match=expected) as info:
        read_idx(path)
    assert "bad-labels.gz" in str(info.value)


def test_read_idx_reports_expected_and_actual_byte_counts(tmp_path):
    path = write_gz(tmp_path / "labels.gz", GOOD_LABELS[:-1])
    with pytest.raises(DataError, match=r"needs 4 data bytes, found 3"):
        read_idx(path)


# --- load_mnist on a tiny fake dataset (no real files needed) ----------------------------------

def write_fake_mirror(folder, labels_value=None):
    """Write 5 train / 3 test fake images and labels as `<name>.gz`; return their SHA256 table."""
    rng = np.random.default_rng(0)
    split = {"train": 5, "t10k": 3}
    digests = {}
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES.values():
        n = split[name.split("-")[0]]
        array = rng.integers(0, 256, (n, 28, 28)) if "images" in name else np.arange(n) % 10
        if labels_value is not None and "labels" in name:
            array[-1] = labels_value
        content = idx_bytes(array)
        write_gz(folder / f"{name}.gz", content)
        digests[name] = hashlib.sha256(content).hexdigest()
    return digests


def test_load_mnist_scales_and_types_a_fake_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "SHA256", write_fake_mirror(tmp_path / "mirror"))
    data = load_mnist(tmp_path / "data", mirrors=[str(tmp_path / "mirror")])
    raw = read_idx(tmp_path / "data" / "train-images-idx3-ubyte.gz")
    assert data["x_train"].shape == (5, 784) and data["x_train"].dtype == np.float32
    assert data["x_test"].shape == (3, 784) and data["y_test"].dtype == np.int64
    np.testing.assert_allclose(data["x_train"][2], raw[2].reshape(784) / 255, rtol=1e-6)
    np.testing.assert_array_equal(data["y_train"], [0, 1, 2, 3, 4])
    assert data["class_names"] == [str(d) for d in range(10)]


def test_load_mnist_rejects_labels_outside_0_to_9(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist, "SHA256", write_fake_mirror(tmp_path / "mirror", labels_value=10))
    with pytest.raises(DataError, match=r"labels-idx1-ubyte.gz: labels must be classes 0..9, found 10"):
        load_mnist(tmp_path / "data", mirrors=[str(tmp_path / "mirror")])


@pytest.mark.parametrize("split,prefix,n", [("train", "train", 5), ("test", "t10k", 3)])
def test_the_mnist_dataset_reads_only_the_files_of_the_split_asked_for(tmp_path, monkeypatch, split, prefix, n):
    monkeypatch.setattr(mnist, "SHA256", write_fake_mirror(tmp_path / "mirror"))
    monkeypatch.setattr(mnist, "MIRRORS", [])                       # the fake mirror or nothing
    monkeypatch.setenv("NNFS_MIRROR", str(tmp_path / "mirror"))
    data = load_dataset(mnist.MNIST(data_dir=str(tmp_path / "data")), split=split)
    assert set(data) == {f"x_{split}", f"y_{split}", "class_names"} and data[f"x_{split}"].shape == (n, 784)
    assert sorted(path.name for path in (tmp_path / "data").glob("*.gz")) == \
        sorted(f"{name}.gz" for name in FILES.values() if name.startswith(prefix))


# --- download, verification and cache with the real files -------------------------------------

def write_bad_mirror(folder):
    """A mirror whose every file is wrong: label files with one flipped byte (a valid gzip
    with the wrong digest), image files cut short (an invalid gzip)."""
    folder.mkdir()
    for name in FILES.values():
        real = (SHARED_MNIST / f"{name}.gz").read_bytes()
        if "labels" in name:
            content = bytearray(gzip.decompress(real))
            content[100] ^= 0xFF
            write_gz(folder / f"{name}.gz", bytes(content))
        else:
            (folder / f"{name}.gz").write_bytes(real[:5000])


def assert_is_real_mnist(data):
    for split, n, counts in (("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)):
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        assert x.shape == (n, 784) and x.dtype == np.float32
        assert y.shape == (n,) and y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert np.bincount(y, minlength=10).tolist() == counts
    assert data["class_names"] == [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def downloaded(tmp_path_factory):
    """Load MNIST through two HTTP mirrors, a bad one first; return (data_dir, data, requests, log)."""
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"the real MNIST files are not in {SHARED_MNIST}")
    root = tmp_path_factory.mktemp("download")
    write_bad_mirror(root / "bad")
    requests, log = [], RecordingLog()
    with http_mirror(root / "bad", "bad", requests) as bad_url, \
            http_mirror(SHARED_MNIST, "good", requests) as good_url:
        data = load_mnist(root / "data", mirrors=[bad_url, good_url], log=log)
    return root / "data", data, requests, log


@needs_mnist
def test_download_skips_a_bad_mirror_and_verifies(downloaded):
    data_dir, data, requests, log = downloaded
    assert_is_real_mnist(data)
    for name in FILES.values():  # each file was asked from the bad mirror, then the good one
        asked = [server for server, path in requests if path == f"/{name}.gz"]
        assert asked == ["bad", "good"], (name, requests)
        assert log.said("warning", "failed", f"{name}.gz")
        assert log.said("info", f"{name}.gz verified")
    assert set(os.listdir(data_dir)) == CACHE_FILES  # no temporary files left behind
    size = (SHARED_MNIST / "train-images-idx3-ubyte.gz").stat().st_size
    assert (size, size, "train-images-idx3-ubyte.gz") in log.progress_calls


@needs_mnist
def test_cached_files_load_without_network_or_rehashing(downloaded, monkeypatch):
    data_dir, first, _, _ = downloaded

    def no_hashing(path):
        raise AssertionError(f"{path} was hashed again although its marker matches")

    monkeypatch.setattr(mnist, "_sha256_of_gz", no_hashing)
    log = RecordingLog()
    data = load_mnist(data_dir, mirrors=["http://127.0.0.1:9/"], log=log)  # nothing listens there
    assert not log.said("info", "downloading") and not log.said("info", "copying")
    np.testing.assert_array_equal(data["x_train"], first["x_train"])
    np.testing.assert_array_equal(data["y_test"], first["y_test"])


@needs_mnist
def test_corrupt_cached_file_is_replaced(tmp_path):
    good = SHARED_MNIST.as_uri() + "/"
    load_mnist(tmp_path, mirrors=[good])
    victim = tmp_path / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(b"garbage, not gzip")
    log = RecordingLog()
    data = load_mnist(tmp_path, mirrors=[good], log=log)
    assert log.said("warning", str(victim), "corrupt")
    assert log.said("info", "copying") == [f"copying {victim.name} from {good}"]      # a file:// mirror is copied
    assert victim.read_bytes() == (SHARED_MNIST / victim.name).read_bytes()
    assert np.bincount(data["y_train"], minlength=10).tolist() == TRAIN_COUNTS
    assert set(os.listdir(tmp_path)) == CACHE_FILES


# --- failures and configuration ----------------------------------------------------------------

def test_all_mirrors_failing_says_where_to_put_the_files(tmp_path):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    data_dir = tmp_path / "data"
    with pytest.raises(DataError) as info:
        load_mnist(data_dir, mirrors=["http://127.0.0.1:9/", str(empty)])
    message = str(info.value)
    assert str(data_dir) in message and "NNFS_MIRROR" in message
    assert "http://127.0.0.1:9/" in message and empty.as_uri() in message
    assert not data_dir.exists()  # no temporary file left behind, nor the folder made for it


def test_mirror_list_puts_nnfs_mirror_folder_first(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFS_MIRROR", str(tmp_path))
    assert mirror_list() == [tmp_path.resolve().as_uri() + "/"] + MIRRORS
    monkeypatch.setenv("NNFS_MIRROR", "https://example.org/mnist")
    assert mirror_list()[0] == "https://example.org/mnist/"
    monkeypatch.delenv("NNFS_MIRROR")
    assert mirror_list() == MIRRORS


def test_data_dir_that_is_a_file_is_rejected(tmp_path):
    not_a_dir = tmp_path / "data"
    not_a_dir.write_text("I am a file")
    with pytest.raises(DataError, match="not a folder") as info:
        load_mnist(not_a_dir, mirrors=[])
    assert str(not_a_dir) in str(info.value)


def test_data_dir_that_cannot_be_created_is_rejected(tmp_path):
    (tmp_path / "file").write_text("a file cannot hold a folder")
    with pytest.raises(DataError, match="cannot create"):
        load_mnist(tmp_path / "file" / "data", mirrors=[])
