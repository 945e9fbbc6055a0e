"""Your own data in a file: "npz" (numpy arrays) and "csv" (a label, then the pixels, per row).

What this file is: two datasets that read the user's files once, check them and scale their
pixels into [0, 1]. Images may come as (N, H, W) or as flat rows (N, D); flat rows are drawn and
augmented as square images when D is a square number, else as one row of D pixels.
Labels are integers from 0; there are as many classes as `class_names`, or else the highest
label + 1. Pixel values are mapped linearly from [min(0, lowest), max(1, highest)] of the
training images to [0, 1], so values already in [0, 1] stay as they are and 8-bit values
0..255 are divided by 255; the test images use the same map, clipped to [0, 1].

What it is not: no download, no cache; the file is read when the engine first asks for it.
"""
import math
import os
import warnings
import zipfile

import numpy as np

from datasets import Dataset, Info, register_dataset
from errors import DataError


def _check_path(key, path, optional=False):
    """The constructor's check of a file-name argument; raises ValueError("key: ...")."""
    if optional and path is None:
        return None
    if not isinstance(path, str) or not path:
        raise ValueError(f"{key}: expected a file name, got {path!r}")
    return path


class _FileDataset(Dataset):
    """Reads its arrays once (`read`, by the subclass), checks and scales them, derives Info."""

    def __init__(self, data_dir="data"):
        super().__init__(data_dir)
        self.sources = {}           # split -> the file it comes from, for messages
        self._data = self._info = None
        self._highest = None        # (split, index) of the highest label, when it sets the number of classes

    def read(self):
        """(x_train, y_train, x_test, y_test, class_names or None) as the files have them."""
        raise NotImplementedError(f"{type(self).__name__} must implement read()")

    def where(self, split, index):
        """Where example `index` of a split is in its file, for messages."""
        return f"y_{split}[{index}] of {self.sources[split]}"

    def classes_note(self):
        if self._highest is None:
            return ""
        split, index = self._highest
        label = self._data[f"y_{split}"][index]
        return (f"; without class_names the classes are counted as the highest label + 1, and label {label} "
                f"is at {self.where(split, index)} (give dataset_args.class_names if it is a stray label)")

    def load(self, log=None):
        if self._data is None:
            self._data, self._info = self._prepare(*self.read())
        return self._data

    def info(self):
        self.load()
        return self._info

    def _prepare(self, x_train, y_train, x_test, y_test, class_names):
        """(arrays as Dataset.load returns them, Info) from the arrays as read."""
        where = {split: f"{self.sources[split]} ({split} set)" for split in ("train", "test")}
        image_shape = _image_shape(x_train, y_train, where["train"])
        if _image_shape(x_test, y_test, where["test"]) != image_shape:
            raise DataError(f"{where['test']}: expected images of shape {image_shape} like the training set, "
                            f"got {x_test.shape[1:]}")
        y_train, y_test = _labels(y_train, where["train"]), _labels(y_test, where["test"])
        num_classes = len(class_names) if class_names is not None else int(max(y_train.max(), y_test.max())) + 1
        for split, y in (("train", y_train), ("test", y_test)):
            if y.max() >= num_classes:
                raise DataError(f"{where[split]}: labels must be in [0, {num_classes - 1}] "
                                f"(one per class name), found {y.max()} at {self.where(split, int(y.argmax()))}")
        if class_names is None:
            split = "train" if y_train.max() >= y_test.max() else "test"
            self._highest = (split, int((y_train if split == "train" else y_test).argmax()))
        x_train = x_train.reshape(len(x_train), -1).astype(np.float32)
        x_test = x_test.reshape(len(x_test), -1).astype(np.float32)
        low, high = min(0.0, x_train.min()), max(1.0, x_train.max())   # see the module docstring
        for x in (x_train, x_test):
            x -= low
            x /= high - low
            np.clip(x, 0, 1, out=x)
        names = [str(n) for n in class_names] if class_names is not None else [str(k) for k in range(num_classes)]
        data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test, "class_names": names}
        return data, Info((x_train.shape[1],), num_classes, image_shape, names)


def _image_shape(x, y, where):
    """(H, W) of the images x, (N, H, W) or flat (N, D), after checking them and their labels y."""
    if len(x) == 0:
        raise DataError(f"{where}: no examples")
    numeric = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    if x.ndim not in (2, 3) or not numeric or x.shape[1] == 0:
        raise DataError(f"{where}: expected images of numbers as (N, H, W) or (N, D), "
                        f"got {x.dtype} of shape {x.shape}")
    if y.shape != (len(x),):
        raise DataError(f"{where}: expected one label per image, shape ({len(x)},), got {y.shape}")
    if not np.isfinite(x).all():
        raise DataError(f"{where}: the images contain NaN or infinite values")
    if x.ndim == 3:
        return x.shape[1:]
    side = math.isqrt(x.shape[1])
    return (side, side) if side * side == x.shape[1] else (1, x.shape[1])


def _labels(y, where):
    """Labels as int64, or a DataError unless they are whole numbers >= 0."""
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() and (y == np.round(y)).all())
    if not integral:
        raise DataError(f"{where}: expected whole-number labels, got {y.dtype} values such as {y[:3].tolist()}")
    if y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0, found {y.min()}")
    return y.astype(np.int64)


@register_dataset
class NpzDataset(_FileDataset):
    """A .npz file (numpy.savez) with arrays x_train, y_train, x_test, y_test and optionally
    class_names. Images: (N, H, W) or (N, D), any integer or float type; labels (N,)."""
    name = "npz"
    KEYS = ("x_train", "y_train", "x_test", "y_test")

    def __init__(self, path, data_dir="data"):
        super().__init__(data_dir)
        self.path = _check_path("path", path)
        self.sources = {"train": self.path, "test": self.path}

    def read(self):
        if not os.path.isfile(self.path):
            raise DataError(f"{self.path}: no such file (dataset_args.path of the npz dataset)")
        if not zipfile.is_zipfile(self.path):       # else numpy tries it as a pickle and talks of allow_pickle
            raise DataError(f"{self.path}: cannot read it as an .npz file (an .npz file is a zip archive of "
                            f"arrays, as numpy.savez writes it; this file is not one)")
        try:
            with np.load(self.path, allow_pickle=False) as arrays:
                missing = [k for k in self.KEYS if k not in arrays.files]
                if missing:
                    raise DataError(f"{self.path}: missing the arrays {', '.join(missing)} (expected "
                                    f"{', '.join(self.KEYS)} and optionally class_names; found "
                                    f"{', '.join(arrays.files) or 'none'})")
                x_train, y_train, x_test, y_test = (arrays[k] for k in self.KEYS)
                names = arrays["class_names"].tolist() if "class_names" in arrays.files else None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
            if isinstance(err, DataError):
                raise
            raise DataError(f"{self.path}: cannot read it as an .npz file of arrays ({err})") from None
        if names is not None and (not isinstance(names, list) or not names):
            raise DataError(f"{self.path}: class_names: expected a list of names, got {names!r}")
        return x_train, y_train, x_test, y_test, names


@register_dataset
class CsvDataset(_FileDataset):
    """CSV files with one example per row: the label, then the pixel values (the layout of
    Kaggle's digit-recognizer train.csv). A first row with any field that is not a number is a
    header and skipped; a first row of numbers is an example. The test set is `test_path`, or
    else the last `test_size` rows of `path` (default: a tenth of them)."""
    name = "csv"

    def __init__(self, path, test_path=None, test_size=None, class_names=None, data_dir="data"):
        super().__init__(data_dir)
        self.path = _check_path("path", path)
        self.test_path = _check_path("test_path", test_path, optional=True)
        if test_size is not None and (isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1):
            raise ValueError(f"test_size: expected an integer >= 1, got {test_size!r}")
        if test_size is not None and test_path is not None:
            raise ValueError("test_size: give test_size or test_path, not both")
        if class_names is not None and (not isinstance(class_names, list) or not class_names
                                        or not all(isinstance(n, str) for n in class_names)):
            raise ValueError(f"class_names: expected a list of strings, got {class_names!r}")
        self.test_size, self.class_names = test_size, class_names
        self.sources = {"train": self.path, "test": self.test_path or self.path}
        self.first_row = {"train": 0, "test": 0}    # the row of the file each split starts at

    def read(self):
        x, y = _read_csv(self.path)
        if self.test_path is not None:
            x_test, y_test = _read_csv(self.test_path)
        else:
            test = self.test_size or max(1, len(x) // 10)
            if test >= len(x):
                raise DataError(f"{self.path}: test_size {test} leaves no training rows of the {len(x)}")
            x, x_test, y, y_test = x[:-test], x[-test:], y[:-test], y[-test:]
            self.first_row["test"] = len(x)
        return x, y, x_test, y_test, self.class_names

    def where(self, split, index):
        path = self.sources[split]
        return f"line {_line_numbers(path)[self.first_row[split] + index]} of {path}"


# The line number an editor shows (from 1) is what every CSV message gives.

def _fields(line):
    """The comma-separated fields of a CSV line as np.loadtxt reads it (after a '#' comes a
    comment), or None for a line with no fields, which loadtxt skips."""
    line = line.split("#", 1)[0]
    return line.split(",") if line.strip() else None


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header_line(path):
    """The line number of the header: the first line with fields, if one of them is not a number;
    else 0 (no header: the first row is an example)."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = _fields(line)
            if fields is not None:
                return 0 if all(map(_is_number, fields)) else number
    return 0


def _example_lines(path):
    """(line number, fields) of each example row of `path`, in order."""
    header = _header_line(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            fields = _fields(line)
            if number > header and fields is not None:
                yield number, fields


def _line_numbers(path):
    return [number for number, _ in _example_lines(path)]


def _first_bad_line(path):
    """What is wrong with the first row np.loadtxt cannot read ('line N, column C: ...'), or None."""
    width = first = None
    for number, fields in _example_lines(path):
        if width is None:
            width, first = len(fields), number
        elif len(fields) != width:
            return f"line {number}: {len(fields)} values, but line {first} has {width}"
        for column, field in enumerate(fields, 1):
            if not _is_number(field):
                return f"line {number}, column {column}: {field.strip()!r} is not a number"
    return None


def _read_csv(path):
    """(pixels (N, D) float32, labels (N,) float32) of a CSV file (see CsvDataset)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (a CSV file of the csv dataset)")
    try:
        header = _header_line(path)
        with warnings.catch_warnings():     # an empty file warns, then is reported below
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, delimiter=",", skiprows=header, ndmin=2, dtype=np.float32)
    except ValueError as err:           # ragged rows and text that is not a number
        reason = _first_bad_line(path) or str(err).splitlines()[0]
        raise DataError(f"{path}: {reason} (expected rows of numbers, the label then the pixels, "
                        f"after an optional header row)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    if len(table) == 0:
        raise DataError(f"{path}: no examples (expected one row per example, after an optional header row)")
    if table.shape[1] < 2:
        raise DataError(f"{path}: expected a label and at least one pixel per row, got {table.shape[1]} columns")
    return table[:, 1:], table[:, 0]
