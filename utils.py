"""Files the user cares about: atomic writes, saving and loading models safely, and the lock that
keeps two training runs from writing one model file.

A model file is a pickle of a plain dict, never of live objects:
    {"format": 1, "config": {...the run's config...}, "params": {name: array}, "state": {name: array}}
so loading rebuilds the network from `config["network"]` and copies the arrays in. Loading uses
a restricted unpickler that can build numpy arrays and plain containers and nothing else, so a
model file someone sent cannot run code.
"""
import contextlib
import io
import os
import pickle
import sys
import tempfile
import time

import numpy as np

from backend import to_numpy
from errors import ConfigError, ModelFileError
from model import build_model

try:
    import fcntl            # POSIX; on Windows training runs take no lock
except ImportError:
    fcntl = None

FORMAT = 1


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None
    try:
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes it private; give it a normal file's mode
        with open(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise ConfigError(f"cannot write {path}: {err.strerror or err}") from None
        raise


@contextlib.contextmanager
def training_lock(model_file):
    """Holds `<model_file>.lock` while a training run writes `model_file`; a second run that asks
    meanwhile gets a ConfigError naming the first (its process id, command and start).

    The lock is flock(2)'s, which the kernel drops when its process ends in any way, so a run that
    crashed or was killed leaves none stuck. The file holds who has it; it is removed at the end,
    with the folders made for it if nothing else went into them.
    """
    if fcntl is None:
        yield
        return
    path = model_file + ".lock"
    made = missing_folders(os.path.dirname(os.path.abspath(path)))
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        while True:
            f = open(path, "a+", encoding="utf-8")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "it is starting"
                f.close()
                raise ConfigError(f"model_file: another training run is writing {model_file} ({holder}); "
                                  "wait for it to end, or set another model_file") from None
            if _is_same_file(f, path):
                break
            f.close()               # its holder removed the file as we opened it: lock the new one
    except OSError as err:
        raise ConfigError(f"model_file: cannot lock {path}: {err.strerror or err}") from None
    try:
        f.truncate(0)
        f.write(f"process {os.getpid()}, `{' '.join(sys.argv)}`, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):      # someone removed it meanwhile: nothing to undo
            os.unlink(path)         # before unlocking, so that whoever opens the name next finds a new file
        f.close()
        for folder in made:
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def missing_folders(folder):
    """The folders that do not exist on the way to `folder`, deepest first."""
    missing = []
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def check_writable(path, key):
    """ConfigError (naming the config's `key`) unless a file could be written at `path`. Nothing is
    created here (the file's folder is made when the file is written), so a run that fails leaves
    no empty folder."""
    folder = os.path.dirname(os.path.abspath(path))
    missing = missing_folders(folder)
    existing = os.path.dirname(missing[-1]) if missing else folder    # the nearest folder that would hold it
    if not os.path.isdir(existing):
        raise ConfigError(f"{key}: cannot create folder {folder}: {existing} is a file")
    if os.path.isdir(path) or not os.access(existing, os.W_OK):
        raise ConfigError(f"{key}: cannot write {path} (not a writable file path)")


def _is_same_file(f, path):
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_model(path, model, config, extra=None):
    """Pickles the model's arrays (as numpy arrays, from any device) and the config that
    rebuilds it to `path`, atomically."""
    payload = {"format": FORMAT, "config": config,
               "params": {k: to_numpy(v) for k, v in model.params.items()},
               "state": {k: to_numpy(v) for k, v in model.state.items()}, **(extra or {})}
    with atomic_write(path) as f:
        pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)


class UnsafePickle(pickle.UnpicklingError):
    """The file asks for a function or class that a model file never needs."""


class _SafeUnpickler(pickle.Unpickler):
    """Builds only numpy arrays, dtypes and plain containers; anything else is refused."""

    ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("builtins", "dict"), ("builtins", "list"), ("builtins", "tuple"), ("builtins", "set"),
        ("builtins", "frozenset"), ("collections", "OrderedDict"), ("codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise UnsafePickle(f"it asks for {module}.{name}, which a model file never needs")


def read_pickle(path, what="model file", hint="train first: --task train"):
    """The dict in a file written by `save_model`, checked for format, through the restricted
    unpickler; ModelFileError for a missing, unsafe, foreign or other-version file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ModelFileError(f"cannot read {what} {path}: {err.strerror or err} ({hint})") from None
    try:
        payload = _SafeUnpickler(io.BytesIO(data)).load()
    except UnsafePickle as err:
        raise ModelFileError(f"{path}: refused to load: {err} (load only files you trust)") from None
    except Exception as err:
        raise ModelFileError(f"{path}: not a {what} ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or not {"format", "config", "params", "state"} <= payload.keys():
        raise ModelFileError(f"{path}: not a {what} of this project")
    if payload["format"] != FORMAT:
        raise ModelFileError(f"{path}: {what} format {payload['format']!r}, this version reads format {FORMAT}")
    if not isinstance(payload["config"], dict) or not all(_is_arrays(payload[k]) for k in ("params", "state")):
        raise ModelFileError(f"{path}: a damaged {what}: its config or arrays are not what this project writes")
    return payload


def _is_arrays(table):
    """A dict of names to numeric numpy arrays, as save_model writes them."""
    return isinstance(table, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) and v.dtype.kind in "fiu"
                                           for k, v in table.items())


def load_model(path):
    """(Model ready for forward, its config) from a file written by `save_model`."""
    payload = read_pickle(path)
    config = payload["config"]
    try:
        model = build_model(config["network"], dtype=np.dtype(config["dtype"]), names=config["network_names"])
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as err:     # ConfigError is a ValueError
        raise ModelFileError(f"{path}: its network cannot be rebuilt: {err}") from None
    copy_arrays(model, payload, path)
    return model.eval(), config


def copy_arrays(model, payload, path):
    """Copies saved params and state into the model's arrays in place; reports every mismatch."""
    problems = []
    for table, saved in ((model.params, payload["params"]), (model.state, payload["state"])):
        for name in sorted(table.keys() | saved.keys()):
            if name not in saved:
                problems.append(f"{name} missing")
            elif name not in table:
                problems.append(f"{name} unexpected")
            elif np.shape(saved[name]) != table[name].shape:
                problems.append(f"{name} has shape {np.shape(saved[name])}, expected {table[name].shape}")
            else:
                table[name][...] = saved[name]
    if problems:
        raise ModelFileError(f"{path}: does not match its network: {'; '.join(problems)}")
