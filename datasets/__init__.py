"""Datasets by config name: the `Dataset` base class, its registry, and the checks on what it loads.

A dataset is a subclass of `Dataset` registered with `@register_dataset` under the name the
config's "dataset" key uses; the config's "dataset_args" are its constructor's arguments.
Every module in this folder is imported when the package is, so a new dataset is one file
under datasets/ (see README.md, "Your own dataset"). A file that fails to import does not stop
runs that use other datasets: its error is kept in BROKEN and shown when its dataset is asked for.

The engine calls `make_dataset(config)`, then `info()` before any data is read (the network is
checked against it) and `load_dataset(dataset, log)` to get the arrays, checked here (training
only the training arrays and the test task only the test arrays, through `load_split`).
"""
import sys
from collections import namedtuple

import numpy as np

from errors import DataError
from layers import discover_modules

# input_shape: one example as the network receives it, e.g. (784,); image_shape: (H, W) to draw
# and augment it in; class_names: one string per class, indexed by label.
Info = namedtuple("Info", "input_shape num_classes image_shape class_names")

DATASETS = {}   # config name -> Dataset subclass
BROKEN = {}     # module file name -> why it could not be imported


class Dataset:
    """Base class of a dataset. A subclass sets `name` and implements `info` and `load`.

    Args:
        data_dir: the config's "data_dir", a folder for downloads and caches.
        Further keyword arguments of a subclass's __init__ are the config's "dataset_args";
        the config checks their names against the signature before anything is loaded.
        __init__ should only check and store them (raise ValueError("path: expected ...")),
        never read files.
    """
    name = None     # the config's "dataset" value

    def __init__(self, data_dir="data"):
        self.data_dir = data_dir

    def info(self):
        """An Info. Called before `load`; read no more than needed to know it."""
        raise NotImplementedError(f"{type(self).__name__} must implement info()")

    def load(self, log=None):
        """The arrays, as a dict:
            "x_train" (N, D) float32 in [0, 1], one example per row (D = prod(input_shape)),
            "y_train" (N,) int64 in [0, num_classes), "x_test" (M, D) and "y_test" (M,) likewise.
        `log` is None or has info/warning/debug(msg); a DataError tells the user what is wrong.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement load()")

    def load_split(self, split, log=None):
        """Only "x_<split>" and "y_<split>": split "train" for training (which never looks at the
        test set), "test" for the test task. By default all that `load` returns (load_dataset
        keeps the split's arrays); a dataset whose splits are in files of their own overrides it
        to read only that split's files."""
        return self.load(log)

    def classes_note(self):
        """Why the data has `num_classes` classes, when a label sets it, for the message of a network
        whose output does not fit (e.g. "; ... label 12 is at line 57 of train.csv"); '' otherwise."""
        return ""


def register_dataset(cls):
    """Class decorator: makes `cls` available as the config's "dataset": cls.name."""
    if not (isinstance(cls, type) and issubclass(cls, Dataset)):
        raise TypeError(f"register_dataset: {cls!r} is not a subclass of Dataset")
    if not isinstance(cls.name, str) or not cls.name:
        raise TypeError(f"register_dataset: {cls.__name__}.name must be a non-empty string")
    if cls.name in DATASETS:
        raise ValueError(f"register_dataset: the name {cls.name!r} is taken by {DATASETS[cls.name].__name__}")
    DATASETS[cls.name] = cls
    return cls


def discover():
    """Imports every module of this package not imported yet, so that its datasets register.
    A module that fails is recorded in BROKEN (file name -> reason) instead of raising, and the
    datasets it registered before failing are taken out again (layers.discover_modules)."""
    discover_modules(sys.modules[__name__], BROKEN, [DATASETS])


def make_dataset(config):
    """The Dataset instance named by a validated config."""
    return DATASETS[config["dataset"]](data_dir=config["data_dir"], **config["dataset_args"])


def load_dataset(dataset, log=None, split=None):
    """dataset.load(log), or with `split` "train" or "test" only that split's arrays
    (dataset.load_split), checked against dataset.info(): shapes, types, value and label ranges."""
    data = dataset.load(log) if split is None else dataset.load_split(split, log)
    info = dataset.info()
    data = {key: value for key, value in data.items() if split is None or key.endswith(split) or key == "class_names"}
    size = int(np.prod(info.input_shape))
    for part in (split,) if split else ("train", "test"):
        x, y = data[f"x_{part}"], data[f"y_{part}"]
        where = f"{dataset.name} {part} set"
        if len(x) == 0:
            raise DataError(f"{where}: no examples")
        if x.ndim != 2 or x.shape[1] != size or y.shape != (len(x),):
            raise DataError(f"{where}: expected x of shape (N, {size}) and y of shape (N,), "
                            f"got {x.shape} and {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= info.num_classes:
            raise DataError(f"{where}: expected integer labels in [0, {info.num_classes - 1}], "
                            f"got {y.dtype} in [{y.min()}, {y.max()}]")
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataError(f"{where}: expected finite values in [0, 1], got [{x.min()}, {x.max()}]")
        data[f"y_{part}"] = y.astype(np.int64, copy=False)
    return data


from datasets import files, mnist  # noqa: E402, F401  registers the built-in datasets; an error in them is a bug
discover()
