"""Layers, activations and losses, each with a hand-written forward and backward pass.

This file is the maths of the project and nothing else: it imports only numpy, never prints,
and knows nothing of configs, data, optimizers or files.

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


def check_number(name, value, low, high, low_open=False, high_open=False):
    """Accepts ints and floats (never bools) in the interval given; brackets follow the flags."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
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


# ---- the contract ----------------------------------------------------------------------------

class NNModule:
    """Base class. forward(x) -> y; backward(grad_y) -> grad_x; params/grads share keys."""

    def __init__(self, dtype=np.float32):
        self.dtype = np.dtype(dtype)
        self.params, self.grads, self.state, self.training = {}, {}, {}, True

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

    def eval(self):
        return self.train(False)

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
        init: "he" (default), "xavier", "normal" (with `std`) or "uniform"; see `init_weight`.
    Shape: x (N, n_in) -> y (N, n_out).
    Params: weight (n_in, n_out), bias (n_out,).
    """

    def __init__(self, n_in, n_out, init="he", std=0.01, dtype=np.float32, rng=None):
        super().__init__(dtype)
        self.n_in, self.n_out = check_int("n_in", n_in, 1), check_int("n_out", n_out, 1)
        self.init, self.std = init, check_number("std", std, 0, np.inf, low_open=True)
        self.add_param("weight", init_weight((n_in, n_out), n_in, n_out, init, std, rng, dtype))
        self.add_param("bias", np.zeros(n_out))
        self.x = None

    def forward(self, x):
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise ValueError(f"expected (N, {self.n_in}) inputs, got (N, {', '.join(map(str, x.shape[1:]))})")
        self.x = x
        return x @ self.params["weight"] + self.params["bias"]

    def backward(self, grad_y):
        np.matmul(self.x.T, grad_y, out=self.grads["weight"])    # dL/dW = x.T @ dL/dy
        np.sum(grad_y, axis=0, out=self.grads["bias"])           # dL/db = sum over the batch
        return grad_y @ self.params["weight"].T                  # dL/dx = dL/dy @ W.T

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
        return x * self.mask

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
        self.slope = np.where(x > 0, 1, self.negative_slope).astype(self.dtype)
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


@register
class Sigmoid(NNModule):
    """y = 1 / (1 + exp(-x)). Any shape."""

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.y = None

    def forward(self, x):
        self.y = 0.5 * (1 + np.tanh(0.5 * x))        # the same function, without exp overflow
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


# ---- losses ----------------------------------------------------------------------------------

class Loss:
    """Base class. forward(pred, labels) -> mean loss over the batch; backward() -> dL/dpred."""

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
        self.log_probs, self.labels = None, None

    def forward(self, logits, labels):
        shifted = logits - logits.max(axis=1, keepdims=True)     # exp(shifted) <= 1: no overflow
        self.log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self.labels = labels
        return float(-self.log_probs[np.arange(len(labels)), labels].mean())

    def backward(self):                                          # dL/dlogits = (softmax - onehot) / N
        grad = np.exp(self.log_probs)
        grad[np.arange(len(self.labels)), self.labels] -= 1
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
        with np.errstate(divide="ignore"):                       # log(0) = -inf is the honest answer
            return float(-np.log(probs[np.arange(len(labels)), labels]).mean())

    def backward(self):                                          # dL/dp = -1 / (N p) at the label
        n = len(self.labels)
        grad = np.zeros_like(self.probs)
        grad[np.arange(n), self.labels] = -1 / (n * self.probs[np.arange(n), self.labels])
        return grad


@register_loss
class MSELoss(Loss):
    """L = mean over all elements of (pred - target)^2.

    Shape: pred (N, K); target (N, K), or class labels (N,) which become one-hot rows.
    """

    def __init__(self, dtype=np.float32):
        super().__init__(dtype)
        self.diff = None

    def forward(self, pred, target):
        if target.shape != pred.shape:                           # labels -> one-hot targets
            target = np.eye(pred.shape[1], dtype=pred.dtype)[target]
        self.diff = pred - target
        return float((self.diff * self.diff).mean())

    def backward(self):
        return 2 * self.diff / self.diff.size                    # d/dpred of mean((pred - t)^2)
