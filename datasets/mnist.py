"""MNIST and Fashion-MNIST: find or download the four IDX files, verify and cache them, parse them.

What this file is: `load_mnist(data_dir)` returns the 60,000 training and 10,000 test digits as
numpy arrays. The first call downloads `<name>.gz` for each of FILES into `data_dir`; later
calls use those files without touching the network. `read_idx` parses one gzip-compressed IDX
file (format: http://yann.lecun.com/exdb/mnist/, bottom of the page).
`load_fashion_mnist(data_dir)` does the same for Zalando's Fashion-MNIST (same file names and
format, other content), looking first in FASHION_SYSTEM_DIR, where Debian's package
dataset-fashion-mnist installs the files; that folder is only read, never written.
Both share `load_idx_dataset`; the classes MNIST and FashionMNIST register them as datasets.

What it is not: no batching, shuffling, augmentation or validation split (the caller does
those), and no printing. Messages go to the optional `log` object: `info`, `warning`, `debug`
and, if it has one, `progress(done_bytes, total_bytes_or_None, label)`.

Conventions a reader might misread:
- SHA256 holds digests of the *decompressed* files. Mirrors wrap the same content in
  different gzip streams, so digests of the .gz files would differ between mirrors.
- After a file in data_dir is verified, `<name>.gz.sha256` records "digest size mtime_ns". While the .gz
  keeps that size and mtime it is not hashed again, which keeps a cached load under a second.
- A download goes to a temporary file beside the target and is renamed into place only after
  its content digest matches, so a cached file is either complete or absent.
- MNIST and Fashion-MNIST files have the same names, so Fashion-MNIST is cached in
  `<data_dir>/fashion-mnist/`.
"""
import contextlib
import gzip
import hashlib
import http.client
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from datasets import Dataset, Info, register_dataset
from errors import DataError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SHA256 = {  # of the decompressed content, see the module docstring
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}
# Base URLs, tried in order; each serves `<name>.gz`. LeCun's own site is last: it often answers 403.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]
CLASS_NAMES = [str(digit) for digit in range(10)]

FASHION_SHA256 = {  # of the decompressed content, like SHA256
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
}
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
FASHION_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"    # `dpkg -L dataset-fashion-mnist`
FASHION_CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

TIMEOUT_S = 30           # per blocking network operation (connect, each read), not per file
CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 0.25  # at most four progress calls a second

# What a bad gzip raises: BadGzipFile (an OSError), EOFError when truncated, zlib.error when corrupt.
_GZIP_ERRORS = (OSError, EOFError, zlib.error)
# What one failing mirror can raise, beyond those: URLError, HTTPError and timeouts are OSErrors,
# IncompleteRead is an HTTPException, a malformed URL is a ValueError, a wrong digest a DataError.
_MIRROR_ERRORS = _GZIP_ERRORS + (http.client.HTTPException, ValueError)


class _SilentLog:
    """Stands in when load_mnist gets no log."""
    def info(self, msg): pass
    def warning(self, msg): pass
    def debug(self, msg): pass


def mirror_list(variable="NNFS_MIRROR", mirrors=None):
    """Base URLs in the order they are tried: $variable first when set, then `mirrors` (None: MIRRORS)."""
    own = os.environ.get(variable, "").strip()
    return ([_base_url(own)] if own else []) + list(MIRRORS if mirrors is None else mirrors)


def _base_url(mirror):
    """An http(s):// or file:// URL, or a plain folder path, as a base URL ending in "/"."""
    if not mirror.lower().startswith(("http://", "https://", "file://")):
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror if mirror.endswith("/") else mirror + "/"


def load_mnist(data_dir, mirrors=None, log=None, splits=("train", "test")):
    """Return MNIST as arrays, downloading any file missing from `data_dir` first.

    Args:
        data_dir: folder holding the cached `<name>.gz` files; created (with parents) when a file
            is downloaded into it.
        mirrors: base URLs (or folders) tried in order for each missing file; None: mirror_list().
        log: None, or an object with info/warning/debug(msg) and optionally progress(...).
        splits: the splits to read, ("test",) for the test files only (then only "x_test" and
            "y_test" are returned).

    Returns:
        dict with "x_train" (60000, 784) float32 in [0, 1], "y_train" (60000,) int64,
        "x_test" (10000, 784) float32, "y_test" (10000,) int64 and "class_names" (CLASS_NAMES).
        Each row of x is one 28x28 image flattened row by row (pixel (r, c) at r * 28 + c).
    """
    hint = (f"download the MNIST .gz files by hand into {Path(data_dir).expanduser()} "
            f"or set NNFS_MIRROR to a folder or URL that has them")
    return load_idx_dataset(data_dir, SHA256, mirror_list() if mirrors is None else mirrors,
                            CLASS_NAMES, log, hint, splits=splits)


def load_fashion_mnist(data_dir, mirrors=None, log=None, system_dir=FASHION_SYSTEM_DIR, splits=("train", "test")):
    """Return Fashion-MNIST as arrays, like load_mnist; each file comes from `system_dir` if it
    is there and verifies, else from the cache in `data_dir`, else from a mirror into `data_dir`.
    mirrors None: $NNFS_FASHION_MIRROR when set, then FASHION_MIRRORS.
    """
    hint = (f"install the Debian package dataset-fashion-mnist, or put the Fashion-MNIST .gz "
            f"files into {Path(data_dir).expanduser()}, or set NNFS_FASHION_MIRROR to a folder or URL "
            f"that has them")
    mirrors = mirror_list("NNFS_FASHION_MIRROR", FASHION_MIRRORS) if mirrors is None else mirrors
    return load_idx_dataset(data_dir, FASHION_SHA256, mirrors, FASHION_CLASS_NAMES, log, hint, system_dir, splits)


def load_idx_dataset(data_dir, sha256, mirrors, class_names, log=None, hint="", system_dir=None,
                     splits=("train", "test")):
    """The FILES of `splits`, verified against `sha256` (name -> digest), parsed into arrays.

    Each file is taken from `system_dir` (read-only) when given and its copy verifies, else
    from data_dir or `mirrors` as load_mnist describes; `hint` ends the error when all fail.
    Returns the dict load_mnist describes, with `class_names` (one per label value).
    """
    log = _SilentLog() if log is None else log
    data_dir = _check_dir(data_dir)
    mirrors = [_base_url(m) for m in mirrors]
    paths = {key: _system_file(name, sha256[name], system_dir, log) or
             _fetch(name, sha256[name], data_dir, mirrors, log, hint)
             for key, name in FILES.items() if key.split("_")[0] in splits}      # "train_images" -> train
    data = {"class_names": list(class_names)}
    for split in splits:
        data[f"x_{split}"], data[f"y_{split}"] = _images_and_labels(paths[f"{split}_images"],
                                                                    paths[f"{split}_labels"], len(class_names))
    return data


def _system_file(name, digest, system_dir, log):
    """`<system_dir>/<name>.gz` if it exists and has the right content, else None (with a warning
    when it exists but is wrong). Nothing is written there: the content is hashed on every load."""
    path = Path(system_dir) / f"{name}.gz" if system_dir else None
    if path is None or not path.is_file():
        return None
    try:
        ok = _sha256_of_gz(path) == digest
    except _GZIP_ERRORS:
        ok = False
    if not ok:
        log.warning(f"{path}: its content does not match the SHA-256; using data_dir instead")
        return None
    log.debug(f"{path.name} verified in {system_dir}")
    return path


def _check_dir(data_dir):
    """data_dir as a Path, unless it is a file. A missing folder is created only when a file is
    downloaded into it, so a load from the system folder, or one that fails, leaves none behind."""
    path = Path(data_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise DataError(f"{path}: data_dir exists but is not a folder; "
                        f"point data_dir at a folder or move the file away")
    return path


def _create_dir(path):
    """Creates the folder `path` with its missing parents; returns those it created, deepest first."""
    created, folder = [], path
    while not folder.exists():
        created.append(folder)
        folder = folder.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{path}: cannot create the data folder ({_reason(exc)}); "
                        f"create it by hand or choose another data_dir") from exc
    return created


def _fetch(name, digest, data_dir, mirrors, log, hint):
    """Path of a verified `<name>.gz` in data_dir: the cached one, or one fetched from a mirror."""
    path = data_dir / f"{name}.gz"
    if path.exists() and _cached_file_ok(path, digest, log):
        return path
    created = _create_dir(data_dir)
    tmp, failures = _open_temp(path), []
    try:
        for base in mirrors:
            try:
                _download_into(tmp, base, name, digest, log)
            except _MIRROR_ERRORS as exc:
                log.warning(f"mirror {base} failed for {path.name}: {_reason(exc)}")
                failures.append(f"{base}: {_reason(exc)}")
                continue
            os.chmod(tmp.name, 0o644)  # temp files are created private (0o600); this is public data
            os.replace(tmp.name, path)
            _write_marker(path, digest, log)
            log.info(f"{path.name} verified")
            return path
    finally:
        tmp.close()
        if os.path.exists(tmp.name):  # every mirror failed: leave no partial download behind
            os.unlink(tmp.name)
    for folder in created:            # nor the folders made for it
        with contextlib.suppress(OSError):
            folder.rmdir()
    raise DataError(f"could not get {path.name} from any mirror ({'; '.join(failures) or 'none given'}); {hint}")


def _open_temp(path):
    """A new, open temporary file beside `path` (same folder, so os.replace is atomic)."""
    try:
        return tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".",
                                           suffix=".part", delete=False)
    except OSError as exc:
        raise DataError(f"{path.parent}: cannot write a download there ({_reason(exc)}); "
                        f"make the folder writable or choose another data_dir") from exc


def _download_into(out, base, name, expected, log):
    """Replace the content of the open file `out` with `<base><name>.gz`; check its digest."""
    filename = f"{name}.gz"
    log.info(f"{'copying' if base.lower().startswith('file://') else 'downloading'} {filename} from {base}")
    out.seek(0)
    out.truncate()  # `out` may hold what a previous, failed mirror sent
    with urllib.request.urlopen(base + filename, timeout=TIMEOUT_S) as response:
        _copy_with_progress(response, out, filename, log)
    out.flush()
    os.fsync(out.fileno())
    digest = _sha256_of_gz(out.name)
    if digest != expected:
        raise DataError(f"wrong content (SHA-256 {digest[:12]}..., expected {expected[:12]}...)")


def _copy_with_progress(response, out, label, log):
    """Copy `response` to `out` in chunks, calling log.progress (if any) a few times a second."""
    progress = getattr(log, "progress", None)
    length = response.headers.get("Content-Length", "")
    total = int(length) if length.isdigit() else None
    done, reported, last_report = 0, -1, 0.0
    while chunk := response.read(CHUNK_BYTES):
        out.write(chunk)
        done += len(chunk)
        if progress and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            progress(done, total, label)
            reported, last_report = done, time.monotonic()
    if progress and reported != done:  # the final count, unless it was just reported
        progress(done, total, label)
    if total is not None and done != total:
        raise DataError(f"got {done} bytes of {total} (connection cut short)")


def _cached_file_ok(path, digest, log):
    """True if the cached .gz has the content of SHA-256 `digest`; a wrong one is deleted, with a warning."""
    if _marker_matches(path, digest):
        log.debug(f"{path.name} verified earlier (marker matches its size and mtime)")
        return True
    try:
        ok = _sha256_of_gz(path) == digest
    except _GZIP_ERRORS:
        ok = False
    if ok:
        _write_marker(path, digest, log)
        log.debug(f"{path.name} verified")
        return True
    log.warning(f"{path}: cached file is corrupt (its content does not match the SHA-256); "
                f"deleting it and fetching it again")
    try:
        path.unlink()
        _marker_path(path).unlink(missing_ok=True)
    except OSError as exc:
        raise DataError(f"{path}: corrupt and cannot be deleted ({_reason(exc)}); "
                        f"delete it by hand") from exc
    return False


def _marker_path(path):
    return path.with_name(path.name + ".sha256")


def _marker_text(path, digest):
    """What the marker of a verified `path` holds: the digest, then the .gz's size and mtime."""
    stat = path.stat()
    return f"{digest} {stat.st_size} {stat.st_mtime_ns}\n"


def _marker_matches(path, digest):
    try:
        return _marker_path(path).read_text() == _marker_text(path, digest)
    except OSError:  # no marker yet, or unreadable: fall back to hashing
        return False


def _write_marker(path, digest, log):
    try:
        _marker_path(path).write_text(_marker_text(path, digest))
    except OSError as exc:  # a read-only cache still works; it is hashed on every load
        log.debug(f"{path.name}: could not write the verification marker ({_reason(exc)})")


def _sha256_of_gz(path):
    """SHA-256 hex digest of a gzip file's decompressed content; raises _GZIP_ERRORS if bad."""
    digest = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _reason(exc):
    """A short, one-line reason for a failure, for messages."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def read_idx(path_gz):
    """Parse a gzip-compressed IDX file of unsigned bytes into a uint8 array of its shape.

    IDX layout, big-endian: magic bytes 0x00 0x00 0x08 (unsigned byte) and ndim, then ndim
    uint32 sizes, then prod(sizes) bytes in row-major order. MNIST images have magic
    0x00000803 and shape (N, 28, 28); labels 0x00000801 and shape (N,).
    The result is a read-only view of the decompressed bytes (copy it to modify it).
    """
    path = Path(path_gz)
    data = _gunzip(path)
    if len(data) < 4 or data[:3] != b"\x00\x00\x08" or data[3] == 0:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {data[:4].hex() or 'missing'}, "
                        f"expected 0000080N); replace it with the original file")
    ndim, start = data[3], 4 + 4 * data[3]
    if len(data) < start:
        raise DataError(f"{path}: IDX header truncated (file has {len(data)} bytes, header needs {start}); "
                        f"replace it with the original file")
    shape = tuple(int(n) for n in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected, actual = math.prod(shape), len(data) - start
    if actual != expected:
        problem = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(f"{path}: {problem}: shape {shape} needs {expected} data bytes, found {actual}; "
                        f"replace it with the original file")
    return np.frombuffer(data, np.uint8, offset=start).reshape(shape)


def _gunzip(path):
    """The decompressed bytes of a gzip file, or a DataError naming it."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except _GZIP_ERRORS as exc:
        raise DataError(f"{path}: cannot read it as a gzip file ({_reason(exc)}); "
                        f"replace it with the original .gz file") from exc


def _images_and_labels(images_path, labels_path, num_classes):
    """One split as (x (N, 784) float32 in [0, 1], y (N,) int64), after checking shapes and labels."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected images of shape (N, 28, 28), got {images.shape}; "
                        f"delete it and load again")
    if labels.shape != (len(images),):
        raise DataError(f"{labels_path}: expected shape ({len(images)},) to match {images_path.name}, "
                        f"got {labels.shape}; delete both files and load again")
    if labels.max(initial=0) >= num_classes:
        raise DataError(f"{labels_path}: labels must be classes 0..{num_classes - 1}, found {labels.max()}; "
                        f"delete it and load again")
    x = images.reshape(len(images), 28 * 28).astype(np.float32)  # (N, 784), a new writable array
    x /= 255  # pixels 0..255 -> [0, 1]
    return x, labels.astype(np.int64)


@register_dataset
class MNIST(Dataset):
    """The handwritten digits 0-9: 60,000 training and 10,000 test images of 28x28 pixels."""
    name = "mnist"

    def info(self):
        return Info((784,), 10, (28, 28), CLASS_NAMES)

    def load(self, log=None):
        return load_mnist(self.data_dir, log=log)

    def load_split(self, split, log=None):
        return load_mnist(self.data_dir, log=log, splits=(split,))


@register_dataset
class FashionMNIST(Dataset):
    """Zalando's clothes in 10 classes, the size and format of MNIST; cached in <data_dir>/fashion-mnist."""
    name = "fashion_mnist"

    def info(self):
        return Info((784,), 10, (28, 28), FASHION_CLASS_NAMES)

    def load(self, log=None):
        return self._load(log, ("train", "test"))

    def load_split(self, split, log=None):
        return self._load(log, (split,))

    def _load(self, log, splits):
        # FASHION_SYSTEM_DIR is read here, not bound as a default, so tests can point it at a fake package
        return load_fashion_mnist(Path(self.data_dir) / "fashion-mnist", log=log, system_dir=FASHION_SYSTEM_DIR,
                                  splits=splits)
