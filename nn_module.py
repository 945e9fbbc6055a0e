"""Layers, activations and losses, each with a hand-written forward and backward pass.

This file is the maths of the project and nothing else: it imports only numpy, never prints,
and knows nothing of configs, data, optimizers or files.

The same code runs on a GPU: given CuPy arrays, numpy hands each call to CuPy (see backend.py).
So arrays are created beside their siblings (`np.zeros_like(x, shape=...)`, `np.arange(n,
like=x)`), never from a bare shape, which would make a host array on a GPU run.

The contract every layer keeps (see `NNModule`):
  * `y = forward(x)` caches only what `backward` needs;
  * `grad_x = backward(grad_y)` returns dL/dx and overwrites `grads[k]` with dL/d`params[k]`
    in place (so no zero_grad is needed); it never modifies `grad_y`;
  * `params` and `grads` have the same keys and shapes; running statistics live in `state`;
  * arrays are batch first: (N, D) for vectors, (N, C, H, W) for images.
Losses keep a sibling contract (see `Loss`): `forward(pred, labels) -> float` (the batch mean)
and `backward() -> dL/dpred`.

Bad constructor arguments raise ValueError("<argument>: expected ..., got ..."); the caller
prefixes the layer's place in the network.
"""
import difflib
import numbers

import numpy as np

LAYERS = {}   # JSON "class" name -> layer class
LOSSES = {}   # JSON "loss" name -> loss class


def _registrar(table):
    def register(cls):
        if cls.__name__ in table:
            raise ValueError(f"{cls.__name__} is registered twice")
        table[cls.__name__] = cls
        return cls
    return register


register = _registrar(LAYERS)
register_loss = _registrar(LOSSES)


def get_module(name):
    """The layer or loss class registered under `name`; ValueError naming the closest ones."""
    table = {**LAYERS, **LOSSES}
    if name in table:
        return table[name]
    close = difflib.get_close_matches(str(name), table, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"unknown module {name!r}{hint} (choices: {', '.join(sorted(table))})")


# ---- argument checks (shared by the constructors) -------------------------------------------

def check_int(name, value, low=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (low is not None and value < low):
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def shape_text(x):
    """x's shape as the shape errors give it, the batch axis as N: "(N, 1, 28, 28)"."""
    return f"(N, {', '.join(map(str, x.shape[1:]))})"


def check_number(name, value, low, high, low_open=False, high_open=False):
    """Accepts ints and floats (never bools) in the interval given; brackets follow the flags."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == np.inf else ']'}"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return float(value)


# ---- weight initialisation -----------------------------------------------------------------

INITS = ("he", "xavier", "normal", "uniform")


def init_weight(shape, fan_in, fan_out, init, std, rng, dtype):
    """A new weight array drawn from `rng`.

    he:      N(0, 2 / fan_in), for ReLU nets (He et al. 2015); the default.
    xavier:  U(-a, a), a = sqrt(6 / (fan_in + fan_out)), for tanh and sigmoid (Glorot & Bengio 2010).
    normal:  N(0, std**2).
    uniform: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for Linear.
    """
    rng = np.random.default_rng() if rng is None else rng
    if init == "he":
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    elif init == "xavier":
        a = np.sqrt(6.0 / (fan_in + fan_out))
        w = rng.uniform(-a, a, shape)
    elif init == "normal":
        w = rng.normal(0.0, std, shape)
    elif init == "uniform":
        a = 1.0 / np.sqrt(fan_in)
        w = rng.uniform(-a, a, shape)
    else:
        raise ValueError(f"init: expected one of {', '.join(INITS)}, got {init!r}")
    return w.astype(dtype)


def init_bias(n, bias_std, rng):
    """A new bias vector: zeros, or N(0, bias_std**2) when bias_std > 0 (drawn after the weight)."""
    if bias_std == 0:
        return np.zeros(n)
    rng = np.random.default_rng() if rng is None else rng
    return rng.normal(0.0, bias_std, n)


# ---- the contract ----------------------------------------------------------------------------

class NNModule:
    """Base class. forward(x) -> y; backward(grad_y) -> grad_x; params/grads share keys.

    `needs_grad_x = False` lets a layer whose input is the data skip computing dL/dx (a third
    of a first Linear layer's work) and return None; the trainer sets it, tests never do.
    """

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.params, self.grads, self.state, self.training = {}, {}, {}, True
        self.needs_grad_x = True

    def add_param(self, name, value):
        """Registers a parameter and its gradient buffer (same shape and dtype)."""
        self.params[name] = np.ascontiguousarray(value, dtype=self.dtype)
        self.grads[name] = np.zeros_like(self.params[name])

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def backward(self, grad_y):
        raise NotImplementedError(f"{type(self).__name__} must implement backward()")

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def map_arrays(self, fn):
        """Replaces every array of params, grads and state by fn(array): how the engine moves a
        layer to the GPU (fn = Backend.to_device). A layer never moves its own data."""
        for table in (self.params, self.grads, self.state):
            for name, array in table.items():
                table[name] = fn(array)
        return self

    def eval(self):
        return self.train(False)

    def multiply_adds(self, y_shape):
        """Multiply-adds of one example's forward pass, given its output shape (for summaries)."""
        return 0

    def extra_repr(self):
        return ""

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


# ---- layers ----------------------------------------------------------------------------------

@register
class Linear(NNModule):
    """Fully connected layer: y = x @ weight + bias.

    Args:
        n_in, n_out: input and output features.
        init: "he" (default), "xavier", "normal" (with `std`, default 0.01) or "uniform"; see `init_weight`.
        bias_std: biases start at 0 (the default, 0.0), else drawn from N(0, bias_std**2)
            (NNDL's network.py draws them from N(0, 1): bias_std 1.0).
    Shape: x (N, n_in) -> y (N, n_out).
    Params: weight (n_in, n_out), bias (n_out,).
    """

    def __init__(self, n_in, n_out, init="he", std=0.01, bias_std=0.0, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.n_in, self.n_out = check_int("n_in", n_in, 1), check_int("n_out", n_out, 1)
        self.init, self.std = init, check_number("std", std, 0, np.inf, low_open=True)
        self.bias_std = check_number("bias_std", bias_std, 0, np.inf)
        self.add_param("weight", init_weight((n_in, n_out), n_in, n_out, init, std, rng, dtype))
        self.add_param("bias", init_bias(n_out, self.bias_std, rng))
        self.x = None

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"expected (N, {self.n_in}) inputs, got {shape_text(x)}")
        self.x = x
        y = x @ self.params["weight"]
        y += self.params["bias"]
        return y

    def backward(self, grad_y):
        np.matmul(self.x.T, grad_y, out=self.grads["weight"])    # dL/dweight = x.T @ dL/dy
        np.sum(grad_y, axis=0, out=self.grads["bias"])           # dL/db = sum over the batch
        if not self.needs_grad_x:
            return None
        return grad_y @ self.params["weight"].T                  # dL/dx = dL/dy @ weight.T

    def multiply_adds(self, y_shape):
        return self.n_in * self.n_out

    def extra_repr(self):
        return f"n_in={self.n_in}, n_out={self.n_out}"


@register
class ReLU(NNModule):
    """y = max(x, 0). Any shape."""

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.mask = None

    def forward(self, x):
        self.mask = x > 0
        return np.maximum(x, 0)

    def backward(self, grad_y):
        return grad_y * self.mask        # dy/dx is 1 where x > 0, else 0


@register
class LeakyReLU(NNModule):
    """y = x where x > 0, else negative_slope * x. Any shape."""

    def __init__(self, negative_slope=0.01, dtype=np.float32):
        super().__init__(dtype)
        self.negative_slope = check_number("negative_slope", negative_slope, 0, 1)
        self.slope = None

    def forward(self, x):
        self.slope = np.where(x > 0, self.dtype.type(1), self.dtype.type(self.negative_slope))
        return x * self.slope

    def backward(self, grad_y):
        return grad_y * self.slope

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


@register
class Tanh(NNModule):
    """y = tanh(x). Any shape."""

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.y = None

    def forward(self, x):
        self.y = np.tanh(x)
        return self.y

    def backward(self, grad_y):
        return grad_y * (1 - self.y * self.y)       # tanh' = 1 - tanh^2


def sigmoid(x, out=None):
    """1 / (1 + exp(-x)), computed as (1 + tanh(x / 2)) / 2: the same function, without exp
    overflowing for large -x. Written into `out` if given, which may be x itself (or a view)."""
    y = np.multiply(x, 0.5, out=out)
    np.tanh(y, out=y)
    y += 1
    y *= 0.5
    return y


@register
class Sigmoid(NNModule):
    """y = 1 / (1 + exp(-x)). Any shape."""

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.y = None

    def forward(self, x):
        self.y = sigmoid(x)
        return self.y

    def backward(self, grad_y):
        return grad_y * self.y * (1 - self.y)        # sigmoid' = y (1 - y)


@register
class Softmax(NNModule):
    """y_i = exp(x_i) / sum_j exp(x_j) over the last axis; x (N, K) -> y (N, K).

    Trained with CrossEntropyLoss, the engine fuses the two into SoftmaxCrossEntropyLoss on
    the logits (the same loss and gradient), which stays finite where a probability underflows.
    """

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.y = None

    def forward(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))      # softmax is shift-invariant; exp <= 1
        self.y = e / e.sum(axis=-1, keepdims=True)
        return self.y

    def backward(self, grad_y):
        # dL/dx_i = y_i * (dL/dy_i - sum_j dL/dy_j * y_j)
        return self.y * (grad_y - (grad_y * self.y).sum(axis=-1, keepdims=True))


# ---- convolution and pooling ---------------------------------------------------------------

def taps(x, size, stride):
    """The size*size taps of every size x size window of x (N, C, H, W), as strided views: for
    each (i, j) in row-major order, x[:, :, i + stride*a, j + stride*b] over every output pixel
    (a, b), of shape (N, C, OH, OW) with OH = (H - size) // stride + 1. A window is read one tap
    at a time across the whole batch, never one pixel at a time. Writing into a tap writes into x.
    (numpy's sliding_window_view gives the same windows, but CuPy's waits on the GPU at every call.)"""
    oh, ow = (x.shape[2] - size) // stride + 1, (x.shape[3] - size) // stride + 1
    return [x[:, :, i:i + stride * oh:stride, j:j + stride * ow:stride] for i in range(size) for j in range(size)]


def pad(x, padding):
    """x (N, C, H, W) with `padding` zeros around each image."""
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))) if padding else x


def im2col(x, k, stride, padding):
    """Every k x k window of x (N, C, H, W), zero-padded, as a column: (C*k*k, N*OH*OW), row
    (c, tap) and column (n, a, b). One copy of the k*k taps, with channels first."""
    windows = taps(pad(x, padding).transpose(1, 0, 2, 3), k, stride)      # k*k views, each (C, N, OH, OW)
    c, n, oh, ow = windows[0].shape
    cols = np.empty_like(x, shape=(c, k * k, n, oh, ow), order="C")
    np.stack(windows, axis=1, out=cols)          # into C order, so that the reshape below copies nothing
    return cols.reshape(c * k * k, n * oh * ow)


def col2im(grad_cols, x_shape, k, stride, padding):
    """The adjoint of `im2col`: adds each column's gradient back onto the pixels its window
    read, so a pixel read by several windows gets the sum; returns (N, C, H, W). One slice-add
    per tap, never per pixel."""
    n, c, h, w = x_shape
    grad = np.zeros_like(grad_cols, shape=(c, n, h + 2 * padding, w + 2 * padding))   # channels first, like im2col
    grad_taps = grad_cols.reshape(c, k * k, n, -1)                                    # (C, k*k, N, OH*OW)
    for t, tap in enumerate(taps(grad, k, stride)):
        tap += grad_taps[:, t].reshape(tap.shape)          # tap t = (i, j) of window (a, b) read pixel (a*stride + i, b*stride + j)
    return grad[:, :, padding:padding + h, padding:padding + w].transpose(1, 0, 2, 3)


def check_image(x, channels, kernel_size, padding):
    """ValueError unless x is (N, channels, H, W) with H, W + 2 padding >= kernel_size."""
    if x.ndim != 4 or (channels is not None and x.shape[1] != channels):
        want = f"(N, {channels}, H, W)" if channels is not None else "(N, C, H, W)"
        raise ValueError(f"expected {want} inputs, got {shape_text(x)}")
    if min(x.shape[2:]) + 2 * padding < kernel_size:
        raise ValueError(f"kernel_size {kernel_size} is larger than the padded input "
                         f"{x.shape[2] + 2 * padding}x{x.shape[3] + 2 * padding}")


@register
class Conv2D(NNModule):
    """2-D convolution (cross-correlation, as in every deep-learning library), by im2col:

        y[n, f, i, j] = bias[f] + sum_{c, k, l} weight[f, c, k, l] * xp[n, c, i*stride + k, j*stride + l]

    where xp is x zero-padded by `padding` pixels on each side. `naive_conv` in
    tests/test_layers.py computes exactly this with four loops; the tests hold this layer to it.
    Here the loops become one matrix product: im2col lays every window out as a column.

    Args:
        in_channels, out_channels: C and F.
        kernel_size: k, for a square k x k kernel.
        stride: >= 1. padding: >= 0.
        init: "he" (default), "xavier", "normal" (with `std`, default 0.01) or "uniform"; see `init_weight`.
        bias_std: biases start at 0 (the default), else drawn from N(0, bias_std**2); see `Linear`.
    Shape: x (N, C, H, W) -> y (N, F, OH, OW), OH = (H + 2 padding - k) // stride + 1, same for OW.
    Params: weight (F, C, k, k), bias (F,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, init="he", std=0.01,
                 bias_std=0.0, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int("out_channels", out_channels, 1)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.stride, self.padding = check_int("stride", stride, 1), check_int("padding", padding, 0)
        self.init, self.std = init, check_number("std", std, 0, np.inf, low_open=True)
        self.bias_std = check_number("bias_std", bias_std, 0, np.inf)
        k = kernel_size
        shape = (out_channels, in_channels, k, k)
        self.add_param("weight", init_weight(shape, in_channels * k * k, out_channels * k * k, init, std, rng, dtype))
        self.add_param("bias", init_bias(out_channels, self.bias_std, rng))
        self.cols, self.x, self.x_shape = None, None, None

    def forward(self, x):
        check_image(x, self.in_channels, self.kernel_size, self.padding)
        n, c, h, w = x.shape
        f, k, s, p = self.out_channels, self.kernel_size, self.stride, self.padding
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        self.x_shape = x.shape
        cols = im2col(x, k, s, p)                                                # (C*k*k, N*OH*OW)
        # eval mode keeps x, not its k*k times larger columns; a backward in eval (a saliency map,
        # explain.py) makes them again
        self.cols, self.x = (cols, None) if self.training else (None, x)
        y = self.params["weight"].reshape(f, c * k * k) @ cols                   # (F, N*OH*OW)
        y += self.params["bias"][:, None]
        return y.reshape(f, n, oh, ow).transpose(1, 0, 2, 3)                      # (N, F, OH, OW)

    def backward(self, grad_y):
        n, f, oh, ow = grad_y.shape
        c, k = self.in_channels, self.kernel_size
        grad_rows = grad_y.transpose(1, 0, 2, 3).reshape(f, n * oh * ow)             # (F, N*OH*OW)
        cols = self.cols if self.cols is not None else im2col(self.x, k, self.stride, self.padding)
        np.matmul(grad_rows, cols.T, out=self.grads["weight"].reshape(f, c * k * k))   # dL/dweight = dL/dy @ cols.T
        np.sum(grad_rows, axis=1, out=self.grads["bias"])
        if not self.needs_grad_x:
            return None
        # dL/dcols = weight.T @ dL/dy: (C*k*k, N*OH*OW)
        grad_cols = self.params["weight"].reshape(f, c * k * k).T @ grad_rows
        return col2im(grad_cols, self.x_shape, k, self.stride, self.padding)

    def multiply_adds(self, y_shape):                # every output value is a C*k*k dot product
        return int(np.prod(y_shape)) * self.in_channels * self.kernel_size ** 2

    def extra_repr(self):
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
                f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}")


class _Pool2D(NNModule):
    """What MaxPool2D and AvgPool2D share: the constructor (a square window, moved by stride
    over each channel of each image) and the repr. Not registered: it is no layer by itself."""

    def __init__(self, kernel_size, stride=None, dtype=np.float32):
        super().__init__(dtype)
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        self.stride = kernel_size if stride is None else check_int("stride", stride, 1)
        self.x_shape = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


@register
class MaxPool2D(_Pool2D):
    """y[n, c, i, j] = max of the kernel_size x kernel_size window at (i*stride, j*stride).

    The gradient of each window goes to exactly one element, its first maximum in row-major
    order (MNIST's flat background makes ties common, and a tie must not double the gradient).

    Args:
        kernel_size: k, for a square k x k window.
        stride: >= 1; None (the default) means kernel_size, windows side by side.
    Shape: (N, C, H, W) -> (N, C, OH, OW), OH = (H - k) // stride + 1, same for OW.
    """

    def __init__(self, kernel_size, stride=None, dtype=np.float32):
        super().__init__(kernel_size, stride, dtype)
        self.winner = None

    def forward(self, x):
        check_image(x, None, self.kernel_size, 0)
        window = taps(x, self.kernel_size, self.stride)
        y = window[0].copy()                                      # C order, whatever the layout of x
        for tap in window[1:]:
            np.maximum(y, tap, out=y)
        # winner[t]: tap t is where its window's gradient goes, the first tap equal to the max
        self.winner = np.empty_like(y, dtype=bool, shape=(len(window), *y.shape))
        taken = np.zeros_like(y, dtype=bool)                      # a tie keeps the earlier tap
        for t, tap in enumerate(window):
            is_max = tap == y
            np.greater(is_max, taken, out=self.winner[t])        # is_max and not taken, in one pass
            taken |= is_max
        self.x_shape = x.shape
        return y

    def backward(self, grad_y):
        k, s, (oh, ow) = self.kernel_size, self.stride, grad_y.shape[2:]
        tiled = s == k and self.x_shape[2] == k * oh and self.x_shape[3] == k * ow   # windows cover x once
        grad_x = (np.empty_like if tiled else np.zeros_like)(grad_y, shape=self.x_shape)
        for t, into in enumerate(taps(grad_x, k, s)):             # the pixels tap t read
            if tiled:
                np.multiply(grad_y, self.winner[t], out=into)
            else:                                                 # overlapping windows add up
                into += grad_y * self.winner[t]
        return grad_x


@register
class AvgPool2D(_Pool2D):
    """y[n, c, i, j] = mean of the kernel_size x kernel_size window at (i*stride, j*stride).

    Args:
        kernel_size: k, for a square k x k window.
        stride: >= 1; None (the default) means kernel_size, windows side by side.
    Shape: (N, C, H, W) -> (N, C, OH, OW), OH = (H - k) // stride + 1, same for OW.
    """

    def forward(self, x):
        check_image(x, None, self.kernel_size, 0)
        self.x_shape = x.shape
        return sum(taps(x, self.kernel_size, self.stride)) / self.kernel_size ** 2

    def backward(self, grad_y):
        grad_x = np.zeros_like(grad_y, shape=self.x_shape)
        share = grad_y / self.kernel_size ** 2                    # every tap gets dL/dy / k^2
        for into in taps(grad_x, self.kernel_size, self.stride):
            into += share                                         # overlapping windows add up
        return grad_x


# ---- shape, regularisation and normalisation ---------------------------------------------

@register
class Flatten(NNModule):
    """(N, ...) -> (N, prod(...)); backward restores the shape."""

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.x_shape = None

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(len(x), -1)

    def backward(self, grad_y):
        return grad_y.reshape(self.x_shape)


@register
class Reshape(NNModule):
    """(N, ...) -> (N, *shape), e.g. shape [1, 28, 28] turns flat MNIST rows into images."""

    def __init__(self, shape, dtype=np.float32):
        super().__init__(dtype)
        if not isinstance(shape, (list, tuple)) or not shape:
            raise ValueError(f"shape: expected a list of positive integers, got {shape!r}")
        self.shape = tuple(check_int("shape", d, 1) for d in shape)
        self.x_shape = None

    def forward(self, x):
        if np.prod(x.shape[1:]) != np.prod(self.shape):
            raise ValueError(f"cannot reshape {x.shape[1:]} ({np.prod(x.shape[1:])} values) into "
                             f"{self.shape} ({np.prod(self.shape)} values)")
        self.x_shape = x.shape
        return x.reshape(len(x), *self.shape)

    def backward(self, grad_y):
        return grad_y.reshape(self.x_shape)

    def extra_repr(self):
        return f"shape={list(self.shape)}"


@register
class Dropout(NNModule):
    """Inverted dropout: in training, each element is zeroed with probability p and the rest
    are scaled by 1 / (1 - p), so eval mode is the identity with the same expected output.
    Any shape.
    """

    def __init__(self, p=0.5, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.p = check_number("p", p, 0, 1, high_open=True)
        self.rng = np.random.default_rng() if rng is None else rng
        self.mask = None

    def forward(self, x):
        if not self.training or self.p == 0:
            self.mask = None
            return x
        self.mask = (self.rng.random(x.shape, dtype=np.float32) >= self.p).astype(self.dtype)
        self.mask /= 1 - self.p
        return x * self.mask

    def backward(self, grad_y):
        return grad_y if self.mask is None else grad_y * self.mask

    def extra_repr(self):
        return f"p={self.p}"


def per_channel_dot(a, b):
    """sum(a * b) over every axis but the channel axis 1, for (N, C) or (N, C, H, W) arrays a
    and b: (C,). One pass over both, without writing the product a * b to memory first."""
    n, c = a.shape[:2]
    return np.einsum("ncx,ncx->c", a.reshape(n, c, -1), b.reshape(n, c, -1))


@register
class BatchNorm(NNModule):
    """Batch normalisation (Ioffe and Szegedy 2015), for each feature or channel:
        x_hat = (x - mean) / sqrt(var + eps),    y = gamma * x_hat + beta
    In training, mean and var are the batch's (over N, or N, H and W; var biased) and the
    running averages move towards them: running = momentum * running + (1 - momentum) * batch
    (momentum weighs the old value, as in Keras: PyTorch's 0.1 is 0.9 here). Eval mode uses the
    running averages, kept in `state`: saved, never trained. parallel.SplitBatchNorm computes
    the same for a batch cut into slices across threads.

    Args: num_features C; momentum in [0, 1) (default 0.9); eps in (0, 1], added to var (1e-5).
    Shape: (N, C) or (N, C, H, W). Params: gamma, beta (C,). State: running_mean, running_var (C,).
    """

    def __init__(self, num_features, momentum=0.9, eps=1e-5, dtype=np.float32):
        super().__init__(dtype)
        self.num_features = check_int("num_features", num_features, 1)
        self.momentum = check_number("momentum", momentum, 0, 1, high_open=True)
        self.eps = check_number("eps", eps, 0, 1, low_open=True)
        self.add_param("gamma", np.ones(num_features))
        self.add_param("beta", np.zeros(num_features))
        self.state = {"running_mean": np.zeros(num_features, self.dtype), "running_var": np.ones(num_features, self.dtype)}
        self.x_hat, self.inv_std, self.axes = None, None, None

    def forward(self, x):
        if x.ndim not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(f"num_features is {self.num_features}, but the input has shape {shape_text(x)}; "
                             f"expected (N, C) or (N, C, H, W) with C = {self.num_features}")
        self.axes = (0,) if x.ndim == 2 else (0, 2, 3)            # where one channel's values lie
        if not self.training:
            return self.normalize(x - self.per_channel(self.state["running_mean"]), self.state["running_var"])
        m = x.size // self.num_features                             # values a channel
        mean = x.mean(axis=self.axes)
        centred = x - self.per_channel(mean)
        var = per_channel_dot(centred, centred) / m                 # mean((x - mean)^2)
        self.track(mean, var, m)
        return self.normalize(centred, var)

    def track(self, mean, var, count):
        """Moves the running averages towards the batch's (one value a channel has no variance)."""
        if count > 1:
            for key, batch in (("running_mean", mean), ("running_var", var)):
                self.state[key] *= self.momentum                   # momentum running + (1 - momentum) batch
                self.state[key] += (1 - self.momentum) * batch

    def normalize(self, centred, var):
        """y from centred = x - mean, a new array that becomes x_hat in place."""
        self.inv_std = (var + self.eps) ** -0.5                    # kept, with x_hat, for backward
        self.x_hat = centred
        self.x_hat *= self.per_channel(self.inv_std)
        y = self.x_hat * self.per_channel(self.params["gamma"])
        y += self.per_channel(self.params["beta"])
        return y

    def backward(self, grad_y):
        self.grads["beta"][...] = grad_y.sum(axis=self.axes)                  # dL/dbeta = sum dL/dy
        self.grads["gamma"][...] = per_channel_dot(grad_y, self.x_hat)        # dL/dgamma = sum dL/dy x_hat
        return self.grad_x(grad_y, self.grads["beta"], self.grads["gamma"], grad_y.size // self.num_features)

    def grad_x(self, grad_y, grad_beta, grad_gamma, m):
        """dL/dx from the batch's dL/dbeta and dL/dgamma, m values a channel. In training mean and
        var depend on x; as sum(dL/dx_hat) = gamma dL/dbeta, sum(dL/dx_hat x_hat) = gamma dL/dgamma:
            dL/dx = gamma * inv_std * (dL/dy - dL/dbeta / m - x_hat * dL/dgamma / m)"""
        scale = self.per_channel(self.params["gamma"] * self.inv_std)
        if not self.training:                                      # mean and var are constants
            return grad_y * scale
        grad_x = grad_y - self.per_channel(grad_beta / m)
        grad_x -= self.x_hat * self.per_channel(grad_gamma / m)
        grad_x *= scale
        return grad_x

    def per_channel(self, v):                                      # (C,) -> (1, C) or (1, C, 1, 1)
        return v.reshape((1, -1) + (1,) * (len(self.axes) - 1))

    def extra_repr(self):
        return f"num_features={self.num_features}, momentum={self.momentum}, eps={self.eps}"


# ---- recurrent layers ----------------------------------------------------------------------

class Recurrent(NNModule):
    """What RNN, LSTM and GRU share: the input projection, the loops over time, and the weight
    gradients of backpropagation through time (BPTT). Not registered: it is no layer by itself.
    In the docstrings of these layers H is n_hidden, the size of the state h_t (they see no
    images, so it is never a height); t is a time step, T their number.

    Each layer has `blocks` H-wide blocks in its projections (RNN 1, LSTM 4, GRU 3), so that
    weight_ih is (n_in, blocks*H) and weight_hh is (H, blocks*H), and writes one time step
    each way:
      * `step(t, xw_t, h_prev)` writes h_t into `self.hs[t + 1]`, where
        xw_t = x_t @ weight_ih + biases[0] comes precomputed for all t in one matrix product;
      * `step_back(t, grad_h) -> dL/dh_{t-1}` takes dL/dh_t (from y and from step t + 1) and
        writes dL/dxw_t into `grad_xw[t]` and dL/dhw_t into `grad_hw[t]`, hw_t being the
        pre-activation sum h_{t-1} @ weight_hh (+ biases[1]). Where a layer only ever adds xw_t
        and hw_t (RNN, LSTM), the two are the same array.
    Then every parameter gradient is one matrix product over all T*N rows, after the loop:
        dL/dweight_ih = sum_t x_t.T @ grad_xw[t]     dL/dweight_hh = sum_t h_{t-1}.T @ grad_hw[t]
        dL/dbiases[0] = sum_t,n grad_xw[t]           dL/dbiases[1] = sum_t,n grad_hw[t]
        dL/dx_t = grad_xw[t] @ weight_ih.T
    Inside, arrays are time-major ((T, N, ...): the slice of step t is contiguous); the input
    and output are batch-first like every other layer's. The initial state is zero.

    Args:
        n_in: features per time step. n_hidden: H, the size of the state h_t.
        return_sequences: true: y is every h_t; false (default): only the last one.
        init: "xavier" (default), "he", "normal" (with `std`) or "uniform" for both weights,
            with fan_in their rows and fan_out H (each block is a map of its own). PyTorch
            draws everything from U(-1/sqrt(H), 1/sqrt(H)), which "uniform" gives weight_hh.
    Shape: x (N, T, n_in) -> y (N, T, H) with return_sequences, else (N, H).
    """

    blocks = 1
    biases = ("bias",)

    def __init__(self, n_in, n_hidden, return_sequences=False, init="xavier", std=0.01, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.n_in, self.n_hidden = check_int("n_in", n_in, 1), check_int("n_hidden", n_hidden, 1)
        if not isinstance(return_sequences, bool):
            raise ValueError(f"return_sequences: expected true or false, got {return_sequences!r}")
        self.return_sequences = return_sequences
        self.init, self.std = init, check_number("std", std, 0, np.inf, low_open=True)
        k = self.blocks * n_hidden
        self.add_param("weight_ih", init_weight((n_in, k), n_in, n_hidden, init, std, rng, dtype))
        self.add_param("weight_hh", init_weight((n_hidden, k), n_hidden, n_hidden, init, std, rng, dtype))
        for name in self.biases:
            self.add_param(name, np.zeros(k))
        self.xs, self.hs, self.grad_xw, self.grad_hw = None, None, None, None
        self.steps = None        # T of the last forward pass, for `multiply_adds`

    def forward(self, x):
        if x.ndim != 3 or x.shape[2] != self.n_in:
            raise ValueError(f"expected (N, T, {self.n_in}) inputs, got {shape_text(x)}")
        n, steps, _ = x.shape
        self.steps = steps
        self.xs = x.transpose(1, 0, 2).copy()                                    # (T, N, n_in)
        xw = (self.xs.reshape(steps * n, self.n_in) @ self.params["weight_ih"]).reshape(steps, n, -1)   # (T, N, k)
        xw += self.params[self.biases[0]]
        self.hs = np.zeros_like(xw, shape=(steps + 1, n, self.n_hidden))         # hs[t + 1] = h_t
        self.allocate(xw)
        for t in range(steps):
            self.step(t, xw[t], self.hs[t])
        return self.hs[1:].transpose(1, 0, 2) if self.return_sequences else self.hs[steps]

    def backward(self, grad_y):
        steps, n, hidden = self.steps, self.hs.shape[1], self.n_hidden
        self.grad_xw = np.empty_like(self.hs, shape=(steps, n, self.blocks * hidden))
        self.grad_hw = self.grad_xw if len(self.biases) == 1 else np.empty_like(self.grad_xw)
        grad_ys = grad_y.transpose(1, 0, 2) if self.return_sequences else None       # (T, N, n_hidden)
        grad_h = np.zeros_like(self.hs[0])                  # what h_t gets from step t + 1; none at the end
        for t in reversed(range(steps)):
            if self.return_sequences:
                grad_h = grad_h + grad_ys[t]
            elif t == steps - 1:
                grad_h = grad_h + grad_y
            grad_h = self.step_back(t, grad_h)
        rows_xw, rows_hw = self.grad_xw.reshape(steps * n, -1), self.grad_hw.reshape(steps * n, -1)   # (T*N, k)
        np.matmul(self.xs.reshape(steps * n, self.n_in).T, rows_xw, out=self.grads["weight_ih"])
        np.matmul(self.hs[:-1].reshape(steps * n, hidden).T, rows_hw, out=self.grads["weight_hh"])   # rows of h_{t-1}
        np.sum(rows_xw, axis=0, out=self.grads[self.biases[0]])
        if len(self.biases) == 2:
            np.sum(rows_hw, axis=0, out=self.grads[self.biases[1]])
        if not self.needs_grad_x:
            return None
        # dL/dx_t = grad_xw[t] @ weight_ih.T, for every t at once
        grad_xs = (rows_xw @ self.params["weight_ih"].T).reshape(steps, n, self.n_in)
        return grad_xs.transpose(1, 0, 2)

    def allocate(self, xw):
        """Creates the caches of one forward pass beside xw (T, N, blocks*H)."""
        raise NotImplementedError(f"{type(self).__name__} must implement allocate()")

    def step(self, t, xw_t, h_prev):
        """Time step t forward: h_t from xw_t = x_t @ weight_ih + biases[0], (N, blocks*H), and
        h_prev = h_{t-1}, (N, H). Writes h_t, (N, H), into self.hs[t + 1] and caches what
        step_back(t) needs; returns nothing."""
        raise NotImplementedError(f"{type(self).__name__} must implement step()")

    def step_back(self, t, grad_h):
        """Time step t backward: given grad_h = dL/dh_t, (N, H) (from y and from step t + 1),
        writes dL/dxw_t into self.grad_xw[t] and dL/dhw_t into self.grad_hw[t], each
        (N, blocks*H), and returns dL/dh_{t-1}, (N, H), through h_{t-1}'s part in step t."""
        raise NotImplementedError(f"{type(self).__name__} must implement step_back()")

    def split(self, a):
        """The `blocks` H-wide blocks of a (..., blocks*H), in order, as views of a."""
        hidden = self.n_hidden
        return [a[..., b * hidden:(b + 1) * hidden] for b in range(self.blocks)]

    def multiply_adds(self, y_shape):
        """Per example: T steps of both projections, (n_in + H) * blocks*H (gates' products not counted)."""
        return self.steps * (self.n_in + self.n_hidden) * self.blocks * self.n_hidden

    def extra_repr(self):
        return f"n_in={self.n_in}, n_hidden={self.n_hidden}, return_sequences={self.return_sequences}"


@register
class RNN(Recurrent):
    """Elman recurrent layer (torch.nn.RNN with tanh):

        forward:  h_t = tanh(x_t @ weight_ih + h_{t-1} @ weight_hh + bias)
        backward: a_t = dL/dh_t * (1 - h_t^2)           (grad_xw[t] = grad_hw[t] = a_t)
                  dL/dh_{t-1} = a_t @ weight_hh.T

    Args: n_in, n_hidden (H), return_sequences, init, std; see `Recurrent`.
    Shape: x (N, T, n_in) -> y (N, T, H), or (N, H) without return_sequences.
    Params: weight_ih (n_in, H), weight_hh (H, H), bias (H,).
    """
    blocks = 1

    def allocate(self, xw):
        pass                                                     # h_t in `hs` is all backward needs

    def step(self, t, xw_t, h_prev):
        h = self.hs[t + 1]
        np.matmul(h_prev, self.params["weight_hh"], out=h)
        h += xw_t
        np.tanh(h, out=h)

    def step_back(self, t, grad_h):
        h, a = self.hs[t + 1], self.grad_xw[t]
        np.multiply(grad_h, 1 - h * h, out=a)                    # tanh' = 1 - tanh^2
        return a @ self.params["weight_hh"].T


@register
class LSTM(Recurrent):
    """Long short-term memory (Hochreiter & Schmidhuber 1997), as torch.nn.LSTM. With
    z_t = x_t @ weight_ih + h_{t-1} @ weight_hh + bias, cut into four H-wide blocks in
    PyTorch's order [i, f, g, o] (input, forget, cell candidate, output):

        forward:  i = sigmoid(z_i)  f = sigmoid(z_f)  g = tanh(z_g)  o = sigmoid(z_o)
                  c_t = f * c_{t-1} + i * g           h_t = o * tanh(c_t)
        backward: dc = dL/dh_t * o * (1 - tanh(c_t)^2) + dL/dc_t from step t + 1
                  dz_i = dc * g * i (1 - i)           dz_f = dc * c_{t-1} * f (1 - f)
                  dz_g = dc * i * (1 - g^2)           dz_o = dL/dh_t * tanh(c_t) * o (1 - o)
                  dL/dc_{t-1} = dc * f                dL/dh_{t-1} = dz @ weight_hh.T

    The four blocks are computed together, as whole (N, 4H) arrays (a quarter-width slice
    is a strided array, several times slower per element): sigmoid(z) = (1 + tanh(z / 2)) / 2,
    so with scale = 1/2 on the sigmoid blocks and 1 on g, and shift = 1/2 and 0,
        gates = scale * tanh(scale * z) + shift,   dgates/dz = scale^2 - (gates - shift)^2
    which is i (1 - i) on a sigmoid block and 1 - g^2 on g.
    The forget block of the bias starts at 1, so that c_t is kept rather than forgotten
    while training begins (Jozefowicz et al. 2015; Keras's unit_forget_bias).
    Args: n_in, n_hidden (H), return_sequences, init, std; see `Recurrent`.
    Shape: x (N, T, n_in) -> y (N, T, H), or (N, H) without return_sequences.
    Params: weight_ih (n_in, 4H), weight_hh (H, 4H), bias (4H,).
    """
    blocks = 4

    def __init__(self, n_in, n_hidden, return_sequences=False, init="xavier", std=0.01, dtype=np.float32, rng=None):
        super().__init__(n_in, n_hidden, return_sequences, init, std, dtype, rng)
        self.split(self.params["bias"])[1][...] = 1                     # the forget block
        self.gates, self.cs, self.tanh_cs, self.grad_c = None, None, None, None
        self.scale, self.shift, self.scale2 = None, None, None

    def allocate(self, xw):
        self.gates = np.empty_like(xw)                                   # (T, N, 4 n_hidden): i, f, g, o
        self.cs = np.zeros_like(self.hs)                                  # cs[t + 1] = c_t, cs[0] = 0
        self.tanh_cs = np.empty_like(self.hs[1:])                         # (T, N, n_hidden)
        self.scale = np.full_like(xw[0, 0], 0.5)                          # (4 n_hidden,)
        self.split(self.scale)[2][...] = 1                                # g's block
        self.shift = self.scale * (self.scale < 1)                        # 1/2 on sigmoid blocks, 0 on g
        self.scale2 = self.scale * self.scale

    def step(self, t, xw_t, h_prev):
        gates = self.gates[t]
        np.matmul(h_prev, self.params["weight_hh"], out=gates)
        gates += xw_t                                                     # z_t
        gates *= self.scale                                               # i, f, g, o in four passes
        np.tanh(gates, out=gates)
        gates *= self.scale
        gates += self.shift
        i, f, g, o = self.split(gates)
        c = self.cs[t + 1]
        np.multiply(f, self.cs[t], out=c)
        c += i * g
        np.tanh(c, out=self.tanh_cs[t])
        np.multiply(o, self.tanh_cs[t], out=self.hs[t + 1])

    def step_back(self, t, grad_h):
        gates, tanh_c = self.gates[t], self.tanh_cs[t]
        i, f, g, o = self.split(gates)
        if t == self.steps - 1:
            self.grad_c = np.zeros_like(tanh_c)                           # nothing comes after c_{T-1}
        dc = grad_h * o * (1 - tanh_c * tanh_c) + self.grad_c
        dz = self.grad_xw[t]                                              # (N, 4 n_hidden): first dL/dgates
        dz_i, dz_f, dz_g, dz_o = self.split(dz)
        np.multiply(dc, g, out=dz_i)
        np.multiply(dc, self.cs[t], out=dz_f)
        np.multiply(dc, i, out=dz_g)
        np.multiply(grad_h, tanh_c, out=dz_o)
        centred = gates - self.shift
        dz *= self.scale2 - centred * centred                             # times dgates/dz: now dL/dz
        self.grad_c = dc * f
        return dz @ self.params["weight_hh"].T


@register
class GRU(Recurrent):
    """Gated recurrent unit (Cho et al. 2014), as torch.nn.GRU. With xw = x_t @ weight_ih + bias_ih
    and hw = h_{t-1} @ weight_hh + bias_hh, each cut into three H-wide blocks in PyTorch's order
    [r, z, n] (reset, update, new):

        forward:  r = sigmoid(xw_r + hw_r)    z = sigmoid(xw_z + hw_z)    n = tanh(xw_n + r * hw_n)
                  h_t = (1 - z) * n + z * h_{t-1}
        backward: dn = dL/dh_t * (1 - z) * (1 - n^2)       dz = dL/dh_t * (h_{t-1} - n) * z (1 - z)
                  dr = dn * hw_n * r (1 - r)
                  dL/dxw = [dr, dz, dn]                    dL/dhw = [dr, dz, dn * r]
                  dL/dh_{t-1} = dL/dh_t * z + dL/dhw @ weight_hh.T

    The reset gate multiplies hw_n after its bias is added, which is why GRU has two biases.
    Args: n_in, n_hidden (H), return_sequences, init, std; see `Recurrent`.
    Shape: x (N, T, n_in) -> y (N, T, H), or (N, H) without return_sequences.
    Params: weight_ih (n_in, 3H), weight_hh (H, 3H), bias_ih (3H,), bias_hh (3H,).
    """
    blocks = 3
    biases = ("bias_ih", "bias_hh")

    def __init__(self, n_in, n_hidden, return_sequences=False, init="xavier", std=0.01, dtype=np.float32, rng=None):
        super().__init__(n_in, n_hidden, return_sequences, init, std, dtype, rng)
        self.gates, self.hws = None, None

    def allocate(self, xw):
        self.gates = np.empty_like(xw)                                   # (T, N, 3 n_hidden): r, z, n
        self.hws = np.empty_like(xw)                                     # (T, N, 3 n_hidden): hw of each step

    def step(self, t, xw_t, h_prev):
        rz, gates, hw = slice(0, 2 * self.n_hidden), self.gates[t], self.hws[t]   # rz: r and z side by side
        np.matmul(h_prev, self.params["weight_hh"], out=hw)
        hw += self.params["bias_hh"]
        rz_gates = gates[:, rz]
        np.add(xw_t[:, rz], hw[:, rz], out=rz_gates)
        sigmoid(rz_gates, out=rz_gates)
        r, z, n = self.split(gates)
        np.multiply(r, self.split(hw)[2], out=n)
        n += self.split(xw_t)[2]
        np.tanh(n, out=n)
        h = self.hs[t + 1]                                                 # h = n + z * (h_prev - n)
        np.subtract(h_prev, n, out=h)
        h *= z
        h += n

    def step_back(self, t, grad_h):
        rz, hw_n, h_prev = slice(0, 2 * self.n_hidden), self.split(self.hws[t])[2], self.hs[t]
        r, z, n = self.split(self.gates[t])
        dxw, dhw = self.grad_xw[t], self.grad_hw[t]
        dr, dz, dn = self.split(dxw)
        np.multiply(grad_h * (1 - z), 1 - n * n, out=dn)
        np.multiply(dn * hw_n, r * (1 - r), out=dr)
        np.multiply(grad_h * (h_prev - n), z * (1 - z), out=dz)
        dhw[:, rz] = dxw[:, rz]                                            # r and z add xw and hw
        np.multiply(dn, r, out=self.split(dhw)[2])
        grad_h_prev = dhw @ self.params["weight_hh"].T
        grad_h_prev += grad_h * z
        return grad_h_prev


# ---- losses ----------------------------------------------------------------------------------

class Loss:
    """Base class. forward(pred, labels) -> mean loss over the batch; backward() -> dL/dpred.

    forward returns the loss as a 0-d array where `pred` is (on a GPU, a device array): the
    trainer brings many batches' losses to the host at once, so a step never waits for one.

    A loss is built like a layer, with the network's dtype (`LOSSES[name](dtype)`, in
    model.build_trainable and the gradcheck task), so building one needs no special case.
    The losses here store `dtype` but never read it: they compute in the dtype of `pred`,
    which is already the network's. A loss of your own may use it for arrays it creates.
    """

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)

    def forward(self, pred, labels):
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def backward(self):
        raise NotImplementedError(f"{type(self).__name__} must implement backward()")

    def __repr__(self):
        return f"{type(self).__name__}()"


@register_loss
class SoftmaxCrossEntropyLoss(Loss):
    """L = -mean_n log softmax(logits_n)[label_n], computed in log space.

    Shape: logits (N, K), labels (N,) integers in [0, K).
    """

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.log_probs, self.labels, self.rows = None, None, None

    def forward(self, logits, labels):
        shifted = logits - logits.max(axis=1, keepdims=True)     # exp(shifted) <= 1: no overflow
        self.log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self.labels = labels
        self.rows = np.arange(len(labels), like=logits)
        return -self.log_probs[self.rows, labels].mean()

    def backward(self):                                          # dL/dlogits = (softmax - onehot) / N
        grad = np.exp(self.log_probs)
        grad[self.rows, self.labels] -= 1
        return grad / len(self.labels)


@register_loss
class CrossEntropyLoss(Loss):
    """L = -mean_n log probs_n[label_n], on probabilities (the network ends in Softmax).

    Shape: probs (N, K), labels (N,) integers in [0, K). A probability of exactly 0 gives an
    infinite loss, which the trainer reports as divergence; the engine avoids it by fusing a
    final Softmax with this loss into SoftmaxCrossEntropyLoss.
    """

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.probs, self.labels = None, None

    def forward(self, probs, labels):
        self.probs, self.labels = probs, labels
        rows = np.arange(len(labels), like=probs)
        with np.errstate(divide="ignore"):                       # log(0) = -inf is the honest answer
            return -np.log(probs[rows, labels]).mean()

    def backward(self):                                          # dL/dp = -1 / (N p) at the label
        n = len(self.labels)
        rows = np.arange(n, like=self.probs)
        grad = np.zeros_like(self.probs)
        grad[rows, self.labels] = -1 / (n * self.probs[rows, self.labels])
        return grad


def one_hot_targets(target, pred):
    """target as rows like pred's: class labels (N,) become one-hot rows (N, K); rows stay."""
    if target.shape == pred.shape:
        return target
    return (target[:, None] == np.arange(pred.shape[1], like=pred)).astype(pred.dtype)


@register_loss
class MSELoss(Loss):
    """L = mean over all elements of (pred - target)^2.

    Shape: pred (N, K); target (N, K), or class labels (N,) which become one-hot rows.
    """

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.diff = None

    def forward(self, pred, target):
        target = one_hot_targets(target, pred)
        self.diff = pred - target
        return (self.diff * self.diff).mean()

    def backward(self):
        return 2 * self.diff / self.diff.size                    # d/dpred of mean((pred - t)^2)


@register_loss
class QuadraticLoss(Loss):
    """L = 1/(2N) sum_n ||pred_n - target_n||^2: summed over the outputs, averaged over examples.

    NNDL's quadratic cost (ch. 1, network.py). MSELoss averages over the K outputs too, so
    MSELoss's gradient is 2/K times this one: lr on MSELoss = lr on QuadraticLoss * K / 2.
    Shape: pred (N, K); target (N, K), or class labels (N,) which become one-hot rows.
    """

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.diff = None

    def forward(self, pred, target):
        target = one_hot_targets(target, pred)
        self.diff = pred - target
        return (self.diff * self.diff).sum() / (2 * len(self.diff))

    def backward(self):
        return self.diff / len(self.diff)                        # d/dpred of sum((pred - t)^2) / (2N)


@register_loss
class SigmoidCrossEntropyLoss(Loss):
    """L = -1/N sum_n sum_k [y ln a + (1 - y) ln(1 - a)], a = sigmoid(logits), in log space.

    NNDL's CrossEntropyCost (ch. 3, network2.py): K independent sigmoid outputs, not a softmax.
    Per element the loss is softplus(z) - y z (= -ln a if y = 1, -ln(1 - a) if y = 0), which
    stays finite for any z; so the network ends in its last Linear, without a Sigmoid.
    Shape: logits (N, K); target (N, K), or class labels (N,) which become one-hot rows.
    """

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.logits, self.target = None, None

    def forward(self, logits, target):
        target = one_hot_targets(target, logits)
        self.logits, self.target = logits, target
        return (np.logaddexp(0, logits) - target * logits).sum() / len(logits)

    def backward(self):                                          # dL/dz = (sigmoid(z) - y) / N
        return (sigmoid(self.logits) - self.target) / len(self.logits)
