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

Random numbers: shuffling is drawn on the host, from the run's one seeded numpy generator.
Dropout masks and augmentation maps are drawn where the arrays are (`Backend.random`): on the
CPU from that same generator; on a device from a `DeviceRandom`, keyed by the run's seed, whose
numbers are computed on the device from their place in its stream. So a GPU step copies no
random numbers from the host and reads no host value that changes, and a checkpoint that
saves the host generator and the device stream's position resumes a run exactly on either.

The device's set-up is here too: how many CPU threads share each batch (`Backend.batch_threads`)
and the one error line for a device out of memory (`device_errors`).

CuPy is imported here and nowhere else, and only when a run asks for the GPU.
"""
import contextlib

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

    def random(self, rng, draws=0):
        """The source of random arrays for layers and augmentation: on the CPU `rng` itself; on a
        device a DeviceRandom keyed by rng's seed, `draws` numbers into its stream (0 for a
        fresh run, the checkpoint's for a resumed one: see `draws`)."""
        if self.name == "cpu":
            return rng
        return DeviceRandom(device_key(rng), self.to_device(np.array(draws, np.uint64)))

    def draws(self, random):
        """How many numbers `random` (made by Backend.random) has drawn, for a checkpoint: 0 on the CPU,
        where the checkpoint saves the generator itself."""
        return 0 if self.name == "cpu" else int(random.counter)

    def describe(self):
        return "CPU (numpy)"

    def batch_threads(self, model, threads):
        """How many threads share each batch of `model` here: `threads` (the config's; 0 means
        every core) on the CPU for a network worth it (parallel.py), else 1."""
        if self.name != "cpu" or not worth_splitting(model.layers):
            return 1
        return threads or available_cores()

    def place(self, model, random, threads):
        """`model` with its arrays on this device, its random layers (Dropout) drawing from
        `random` (made by Backend.random), and on the CPU each batch shared by
        `batch_threads(model, threads)` threads."""
        model.map_arrays(self.to_device)
        for layer in model.layers:
            if hasattr(layer, "rng"):
                layer.rng = random
        return model.use_threads(self.batch_threads(model, threads))

    def place_optimizer(self, optimizer):
        """`optimizer` with its learning rate and state (optim.py) on this device."""
        optimizer.lr = self.to_device(optimizer.lr)          # set_lr writes each epoch's rate there
        optimizer.load_state_dict(map_arrays(self.to_device, optimizer.state_dict()))
        return optimizer


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


def device_key(rng):
    """The 64-bit key of a device's generator, from the seed of the host generator `rng`: the
    same in a resumed run, which restores rng's state but not what it has drawn since."""
    seed = rng.bit_generator.seed_seq
    child = np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key + (1,))   # a stream apart from rng's
    return int(child.generate_state(1, np.uint64)[0])


GOLDEN = np.uint64(0x9E3779B97F4A7C15)                       # SplitMix64's constants (Steele et al. 2014)
MIX1, MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


class DeviceRandom:
    """Random arrays computed on a device: number i of the stream is SplitMix64's i-th output for
    the seed `key`, a hash of key + (i + 1) * GOLDEN. The position i lives on the device too
    (`counter`, a 0-d uint64 array), and drawing n numbers adds n to it there. So drawing asks
    the host nothing and takes no host value that changes, and the counter is the whole state:
    a checkpoint saves it, and a copy (deepcopy, as watch.py makes) draws what the original
    would draw next.

    It offers the Generator methods a layer or the augmentation may use (`random`, `uniform`,
    `normal`, `integers`), with the same arguments, so they call it as they call `rng`; they
    return arrays (0-d without a size), in float32 or float64 only. The numbers are others than
    the host generator's, and the same arithmetic on every device.
    """

    def __init__(self, key, counter):
        self.key, self.counter = np.uint64(key), counter

    def bits(self, n):
        """The stream's next n numbers, uniform over 64 bits: (n,) uint64."""
        z = self.counter + np.arange(1, n + 1, dtype=np.uint64, like=self.counter)
        self.counter += np.uint64(n)
        z = self.key + z * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * MIX1
        z = (z ^ (z >> np.uint64(27))) * MIX2
        return z ^ (z >> np.uint64(31))

    def random(self, size=None, dtype=np.float64):
        """Uniform in [0, 1): the top 24 bits (float32) or 53 bits (float64), which the dtype holds exactly."""
        shape = () if size is None else size
        n, dtype = int(np.prod(shape)), np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"DeviceRandom.random: float32 or float64, not {dtype}")
        kept = 24 if dtype == np.float32 else 53
        words = self.bits(n) >> np.uint64(64 - kept)
        return (words.astype(dtype) * dtype.type(2.0 ** -kept)).reshape(shape)

    def uniform(self, low=0.0, high=1.0, size=None):
        return low + (high - low) * self.random(size)

    def normal(self, loc=0.0, scale=1.0, size=None):
        """Box and Muller's transform of two uniform numbers per normal one."""
        u1, u2 = self.random(size), self.random(size)
        return loc + scale * np.sqrt(-2 * np.log1p(-u1)) * np.cos(2 * np.pi * u2)

    def integers(self, low, high=None, size=None):
        """Uniform over low, ..., high - 1 (0, ..., low - 1 without high), as int64."""
        low, high = (0, low) if high is None else (low, high)
        return low + np.floor(self.random(size) * (high - low)).astype(np.int64)


class CupyBackend(Backend):
    """An NVIDIA GPU through CuPy; `cupy` is the imported module."""

    name = "gpu"

    def __init__(self, cupy):
        self.cupy = cupy
        self.out_of_memory = cupy.cuda.memory.OutOfMemoryError

    def to_device(self, array):
        return self.cupy.asarray(array)

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
