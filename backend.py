"""Where the arrays live: numpy on the CPU, or CuPy on an NVIDIA GPU.

The layers, losses and optimizers never import this module, and they are written once. They
call numpy (`np.maximum(x, 0)`, `x @ w`, `np.zeros_like(p)`), and numpy hands every call whose
arrays are CuPy arrays over to CuPy (NEP 18's `__array_function__`, NEP 13's `__array_ufunc__`),
so the same lines run on the GPU. Two habits keep that true:
  * arrays are created beside their siblings, `np.zeros_like(x, shape=...)` or
    `np.arange(n, like=x)`, never from a bare shape (`np.zeros(shape)` is a host array);
  * only the engine moves data, through the `Backend` of its run: the model (`Backend.place`)
    and the data go to the device once, losses and metrics come back when they are needed,
    files hold numpy arrays.

Random numbers are drawn on the host, from the run's one seeded numpy generator, and moved to
the device (`Backend.random`): shuffling, dropout masks and augmentation maps are the same on
every device, and a checkpoint that saves that generator resumes a GPU run exactly.

The device's set-up is here too: how many CPU threads share each batch (`Backend.batch_threads`)
and the one error line for a device out of memory (`device_errors`).

CuPy is imported here and nowhere else, and only when a run asks for the GPU.
"""
import contextlib
import copy

import numpy as np

from errors import ConfigError
from parallel import available_cores, worth_splitting

DEVICES = ("cpu", "gpu")


class Backend:
    """The CPU: numpy arrays, nothing to move. `gpu()` gives the CuPy one.

    Attributes:
        name: "cpu" or "gpu", as the config's "device" says.
        out_of_memory: the exception type the device raises when its memory runs out.
    """

    name = "cpu"
    out_of_memory = MemoryError

    def to_device(self, array):
        """`array` (numpy) as an array of this device."""
        return array

    def random(self, rng):
        """The source of random arrays for layers and augmentation: `rng` itself on the CPU."""
        return rng

    def describe(self):
        return "CPU (numpy)"

    def batch_threads(self, model, threads):
        """How many threads share each batch of `model` here: `threads` (the config's; 0 means
        every core) on the CPU for a network worth it (parallel.py), else 1."""
        if self.name != "cpu" or not worth_splitting(model.layers):
            return 1
        return threads or available_cores()

    def place(self, model, rng, threads):
        """`model` with its arrays on this device, its random layers (Dropout) drawing from the
        device's source of `rng`'s numbers, and on the CPU each batch shared by
        `batch_threads(model, threads)` threads."""
        model.map_arrays(self.to_device)
        for layer in model.layers:
            if hasattr(layer, "rng"):
                layer.rng = self.random(rng)
        return model.use_threads(self.batch_threads(model, threads))


def to_numpy(array):
    """A numpy array with the values of `array`, from any device. CuPy arrays (and the tests'
    stand-in for them) copy themselves to the host with `.get()`; numpy refuses to convert
    them silently, so a forgotten copy fails loudly instead of slowly."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def map_arrays(fn, tree):
    """`tree` (dicts, lists and tuples of arrays and plain values) with every array replaced
    by fn(array); the optimizer's state goes to a checkpoint and back this way."""
    if isinstance(tree, dict):
        return {k: map_arrays(fn, v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(map_arrays(fn, v) for v in tree)
    return fn(tree) if hasattr(tree, "shape") and hasattr(tree, "dtype") else tree


class HostRandom:
    """Random arrays drawn on the host by a numpy Generator and copied to a device.

    It offers the Generator methods a layer or the augmentation may use (`random`, `uniform`,
    `normal`, `integers`), with the same arguments, so they call it as they call `rng`.
    """

    def __init__(self, rng, to_device):
        self.rng, self.to_device = rng, to_device

    def __deepcopy__(self, memo):
        # a copy of the layers (watch.py) draws what the original would draw next, on the same
        # device: the generator is copied, the backend shared (a module, cupy, cannot be copied)
        return HostRandom(copy.deepcopy(self.rng, memo), self.to_device)

    def random(self, size=None, dtype=np.float64):
        return self.to_device(self.rng.random(size, dtype=dtype))

    def uniform(self, low=0.0, high=1.0, size=None):
        return self.to_device(self.rng.uniform(low, high, size))

    def normal(self, loc=0.0, scale=1.0, size=None):
        return self.to_device(self.rng.normal(loc, scale, size))

    def integers(self, low, high=None, size=None):
        return self.to_device(self.rng.integers(low, high, size))


class CupyBackend(Backend):
    """An NVIDIA GPU through CuPy; `cupy` is the imported module."""

    name = "gpu"

    def __init__(self, cupy):
        self.cupy = cupy
        self.out_of_memory = cupy.cuda.memory.OutOfMemoryError

    def to_device(self, array):
        return self.cupy.asarray(array)

    def random(self, rng):
        return HostRandom(rng, self.to_device)

    def describe(self):
        runtime = self.cupy.cuda.runtime
        name = runtime.getDeviceProperties(self.cupy.cuda.Device().id)["name"].decode()
        version = runtime.runtimeGetVersion()
        return f"{name} (CUDA {version // 1000}.{version % 1000 // 10}, CuPy {self.cupy.__version__})"


def gpu():
    """The CuPy backend; ConfigError saying what is missing and how to fix it."""
    try:
        import cupy
    except ImportError as err:
        raise ConfigError(f"device: 'gpu' needs CuPy, which cannot be imported ({err}); install it with "
                          "pip install -r requirements-gpu.txt (an NVIDIA GPU and its driver are needed), "
                          "or use --device cpu") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as err:                # CUDARuntimeError: no driver, or a driver too old for CuPy
        raise ConfigError(f"device: 'gpu', but CUDA reports no usable GPU ({err}); check the NVIDIA "
                          "driver (nvidia-smi) or use --device cpu") from None
    if count == 0:
        raise ConfigError("device: 'gpu', but no CUDA GPU is visible (check nvidia-smi and "
                          "CUDA_VISIBLE_DEVICES), or use --device cpu")
    return CupyBackend(cupy)


@contextlib.contextmanager
def device_errors(current):
    """A block in which the device running out of memory becomes a ConfigError that says what to
    change. `current()` gives the run's Backend, or None while none is set up: the block may be
    the one that sets it up."""
    try:
        yield
    except Exception as err:
        backend = current()
        if backend is None or not isinstance(err, backend.out_of_memory):
            raise
        raise ConfigError(f"device: out of {backend.name.upper()} memory ({err}); use a smaller "
                          "batch_size or network, or another device") from None


def get_backend(device):
    """The Backend for the config's "device"."""
    return gpu() if device == "gpu" else Backend()
