"""A strict stand-in for a GPU, so that tests without one still guard the GPU path.

`DeviceArray` wraps a numpy array and behaves as a CuPy array does towards numpy: numpy
functions and ufuncs called on it are handed to it (`__array_function__`, `__array_ufunc__`)
and give DeviceArrays back, and it refuses every mix with host arrays. An operation that meets
a plain numpy array, a conversion to numpy (`np.asarray`, `np.array`, a host array indexed by
it) all raise HostDeviceMix, as CuPy raises TypeError. Only `.get()` copies to the host, and
`float()` / `int()` of a one-element array, as in CuPy.

`StrictBackend` is a `backend.Backend` whose device arrays are DeviceArrays; tests install it
in place of CuPy's with `monkeypatch.setattr(backend, "gpu", StrictBackend)`.

`tally` counts what a GPU would be asked to do: "kernels", the operations that compute (each
launches at least one GPU kernel in CuPy; a view, such as most reshapes, a transpose or a slice,
and a bare allocation launch none), and "host copies", the values brought back to the host
(each waits for the GPU to finish its queue; so does an operation whose result's size depends
on the values, such as a boolean mask's selection). benchmarks/bench.py's `launches` item and
the tests read it. `tracing()` also writes down each operation with what it was given: the
shapes and dtypes of its arrays and the values of its plain numbers. A step that a CUDA graph
can replay gives the same trace every time: a host value that changes from step to step (a
learning rate passed as a Python float, a step count kept on the host) shows as a difference,
as does a host array copied to the device ("to device", also tallied). Results keep numpy's memory layout, but for the joins (`stack`,
`concatenate`), which CuPy returns in C order, so that a reshape after them is counted as CuPy
would run it.
"""
import collections
import contextlib
import numbers
import operator

import numpy as np

import backend


tally = collections.Counter()
trace = None                     # a list while `tracing`: (operation, its arguments' signature)
ALLOCATIONS = {"empty", "empty_like"}                                # memory handed out, nothing computed
SIZED_BY_VALUES = {"nonzero", "argwhere", "flatnonzero", "unique"}   # CuPy reads the values on the host first
JOINS = {"stack", "concatenate"}                                     # CuPy gives them C order


class HostDeviceMix(TypeError):
    """A host (numpy) array met a device array, or a device array was converted implicitly."""


@contextlib.contextmanager
def tracing():
    """A block whose device operations are written down in the list it yields (see the docstring)."""
    global trace
    trace, outer = [], trace
    try:
        yield trace
    finally:
        trace = outer


def _signature(value):
    """What an operation was given, as a trace writes it: arrays by shape and dtype, plain
    values by value."""
    if isinstance(value, DeviceArray):
        value = value.array
    if isinstance(value, np.ndarray):
        return ("array", value.shape, value.dtype.str)
    if isinstance(value, (list, tuple)):
        return tuple(_signature(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _signature(v)) for k, v in sorted(value.items()))
    if isinstance(value, slice):
        return ("slice", value.start, value.stop, value.step)
    if isinstance(value, (numbers.Number, np.generic, str, np.dtype, type, type(None), type(Ellipsis))):
        return repr(value)
    return type(value).__name__                      # a ufunc, a function


def _note(name, *args):
    if trace is not None:
        trace.append((name, _signature(args)))


def _unwrap(value):
    """The numpy array inside every DeviceArray of `value`; HostDeviceMix for a host array."""
    if isinstance(value, DeviceArray):
        return value.array
    if isinstance(value, np.ndarray):
        raise HostDeviceMix(f"a host array of shape {value.shape} reached a device operation")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _arrays(value):
    """The numpy arrays in `value` (nested lists and tuples)."""
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _arrays(v)


def _count(name, result, sources, kwargs):
    """Tallies a call `name` that gave `result` from the arrays `sources`: a kernel, unless it
    only allocated or gave a view of a source (a result written into `out=` is no view); a host
    copy where CuPy must read values first."""
    view = ("out" not in kwargs and isinstance(result, np.ndarray)
            and any(np.may_share_memory(result, s) for s in _arrays(sources)))
    tally["kernels"] += name not in ALLOCATIONS and not view
    tally["host copies"] += name in SIZED_BY_VALUES or (name == "where" and len(sources) == 1)   # where(c): nonzero


def _wrap(value):
    """Device arrays for the numpy arrays and scalars an operation returned (CuPy returns 0-d arrays)."""
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic):
        return DeviceArray(np.asarray(value))
    if isinstance(value, (list, tuple)):
        return type(value)(_wrap(v) for v in value)
    return value


class DeviceArray:
    """A numpy array that stands for an array in GPU memory (see the module docstring)."""

    __array_priority__ = 1000

    def __init__(self, array):
        self.array = array

    # -- what numpy hands over --------------------------------------------------------------
    def __array_function__(self, func, types, args, kwargs):
        _note(func.__name__, args, kwargs)
        args = _unwrap(args)
        result = func(*args, **_unwrap(kwargs))
        if func.__name__ in JOINS and "out" not in kwargs:
            result = np.ascontiguousarray(result)        # as CuPy allocates them; numpy keeps the inputs' layout
        _count(func.__name__, result, args, kwargs)
        return _wrap(result)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _note(f"{ufunc.__name__}.{method}", inputs, kwargs)
        tally["kernels"] += 1
        out = kwargs.get("out")
        result = getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs))
        if out is not None:                           # the outputs were written in place
            return out[0] if len(out) == 1 else out
        return _wrap(result)

    def __array__(self, dtype=None, copy=None):
        raise HostDeviceMix("a device array was converted to a host array implicitly; use .get()")

    # -- explicit transfers, and Python scalars as CuPy allows them -------------------------
    def get(self):
        _note("get", self)
        tally["host copies"] += 1
        return self.array.copy()

    def item(self, *index):
        tally["host copies"] += 1
        return self.array.item(*_unwrap(index))

    def tolist(self):
        tally["host copies"] += 1
        return self.array.tolist()

    def __format__(self, spec):
        tally["host copies"] += 1
        return format(self.array, spec)

    def __float__(self):
        tally["host copies"] += 1
        return float(self.array)

    def __int__(self):
        tally["host copies"] += 1
        return int(self.array)

    def __bool__(self):
        tally["host copies"] += 1
        return bool(self.array)

    def __index__(self):
        raise HostDeviceMix("a device array cannot be used as a Python index")

    def __len__(self):
        return len(self.array)

    def __iter__(self):
        raise HostDeviceMix("iterating over a device array copies it element by element; use .get()")

    def __repr__(self):
        return f"DeviceArray({self.array!r})"

    def __str__(self):
        tally["host copies"] += 1
        return str(self.array)

    # -- attributes and methods: those of the numpy array, results wrapped ------------------
    shape = property(lambda self: self.array.shape)
    dtype = property(lambda self: self.array.dtype)
    ndim = property(lambda self: self.array.ndim)
    size = property(lambda self: self.array.size)
    T = property(lambda self: DeviceArray(self.array.T))

    def __getattr__(self, name):
        if name.startswith("__"):            # __array_interface__ and the like would let numpy read the host copy
            raise AttributeError(name)
        attribute = getattr(self.array, name)
        if not callable(attribute):
            return attribute

        def method(*args, **kwargs):
            _note(name, self, args, kwargs)
            args = _unwrap(args)
            result = attribute(*args, **_unwrap(kwargs))
            _count(name, result, (self.array, args), kwargs)
            return _wrap(result)
        return method

    def __getitem__(self, key):
        _note("getitem", self, key)
        indices = [k for k in (key if isinstance(key, tuple) else (key,)) if isinstance(k, DeviceArray)]
        tally["kernels"] += bool(indices)                     # a gather; basic indexing gives a view
        tally["host copies"] += any(k.dtype == bool for k in indices)   # a mask selects as many as are true
        key = _unwrap(key)
        item = self.array[key]
        if isinstance(item, np.generic):         # one element: CuPy gives a 0-d view, not a copy
            item = self.array[(key if isinstance(key, tuple) else (key,)) + (Ellipsis,)]
        return DeviceArray(item)

    def __setitem__(self, key, value):
        _note("setitem", self, key, value)
        tally["kernels"] += 1
        self.array[_unwrap(key)] = _unwrap(value)


def _operator(name):
    def method(self, *others):
        _note(name, self, others)
        tally["kernels"] += 1
        return _wrap(getattr(operator, name)(self.array, *_unwrap(others)))
    return method


def _reflected(name):
    def method(self, other):
        _note(f"r{name}", self, other)
        tally["kernels"] += 1
        return _wrap(getattr(operator, name)(_unwrap(other), self.array))
    return method


def _in_place(name):
    def method(self, other):
        _note(name, self, other)
        tally["kernels"] += 1
        getattr(operator, name)(self.array, _unwrap(other))   # numpy's in-place operators write in place
        return self
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(DeviceArray, f"__{_name}__", _operator(_name))
    setattr(DeviceArray, f"__r{_name}__", _reflected(_name))
    setattr(DeviceArray, f"__i{_name}__", _in_place(f"i{_name}"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", _operator(_name))
DeviceArray.__hash__ = None


class StrictBackend(backend.Backend):
    """A Backend whose device arrays are DeviceArrays: the GPU path, checked on a CPU."""

    name = "gpu"

    def __init__(self):
        self.module = np        # as CupyBackend holds cupy: whatever copies a backend fails here too

    def to_device(self, array):
        if isinstance(array, DeviceArray):
            return array
        if not isinstance(array, (np.ndarray, numbers.Number)):
            raise TypeError(f"to_device takes numpy arrays, got {type(array).__name__}")
        _note("to device", array)
        tally["to device"] += 1
        return DeviceArray(np.array(array))

    def describe(self):
        return "a strict stand-in for a GPU (numpy arrays that refuse to mix with host arrays)"
