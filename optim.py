"""Optimizers and learning-rate schedules.

An optimizer updates parameters in place from their gradients, both given as dicts keyed by
the same names, and keeps its own state per name. It never sees a layer. The trainer gives it
`Model.packed_params` and `Model.packed_grads`: the whole network in one flat array named
"all" (see `Model.pack`), so its state is one array per running average; every update below is
elementwise, so that gives the same numbers as one entry per parameter (`Model.params`).
With `decay_biases` false, weight decay shrinks the weights only, as NNDL's L2 term does, and
the trainer packs two arrays instead, "weights" and "biases" (see `pack_group`).
A schedule maps the epoch number (1-based) to a learning rate.

The learning rate and Adam's step count are 0-d arrays, not Python numbers: the trainer moves
them to the parameters' device with the rest of the optimizer's state, `set_lr` writes each
epoch's rate into the same array, and `t += 1` counts on the device. So a step asks the host
nothing and takes no value from it that changes between steps, as a step replayed from a
captured CUDA graph must. The scalars are worked out in float64, as Python's floats are, and
applied in the parameters' dtype (`scalar`), as numpy applies a Python float: a float32 run
gets the numbers that Python floats give.

Optimizers are looked up by lower-case class name: config `{"name": "adam", "beta1": 0.9}`
builds `Adam(lr=..., beta1=0.9)`.
"""
import math
import numbers

import numpy as np

OPTIMIZERS = {}   # config name (lower-case class name) -> optimizer class


def register(cls):
    name = cls.__name__.lower()
    if name in OPTIMIZERS:
        raise ValueError(f"{name} is registered twice")
    OPTIMIZERS[name] = cls
    return cls


def check_number(name, value, low, high, low_open=False, high_open=False):
    """Accepts ints and floats (never bools) in the interval given; brackets follow the flags.
    nn_module.check_number's twin, kept twice on purpose: optimizers never import the layers,
    and nn_module.py imports only numpy, so each file reads on its own."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
        raise ValueError(f"{name}: expected a number in {interval}, got {value!r}")
    return float(value)


def scalar(value, p):
    """A float64 0-d array (or numpy scalar) in p's dtype, for multiplying p or its gradient."""
    return value.astype(p.dtype, copy=False)


def is_weight(name):
    """Whether weight decay reaches parameter `name` when biases are spared: a weight's own name
    starts with "weight" ("0.weight", "3.weight_ih", the packed "weights"); a bias, and
    BatchNorm's gamma and beta, are not weights."""
    return name.rsplit(".", 1)[-1].startswith("weight")


class Optimizer:
    """Base class: `step(params, grads)` updates every `params[name]` in place.

    Every optimizer takes `weight_decay` (L2, >= 0) and `decay_biases` (whether the decay
    reaches the biases too; true unless given, as in PyTorch and Keras). `lr` is a 0-d float64
    array (see the module docstring). STATE names the attributes a resumed run needs besides
    the parameters; the rate is not one of them: the schedule sets it at every epoch's start.
    """

    STATE = ()

    def __init__(self, lr, weight_decay=0.0, decay_biases=True):
        self.lr = np.array(check_number("lr", lr, 0, math.inf, low_open=True))
        self.weight_decay = check_number("weight_decay", weight_decay, 0, math.inf)
        if not isinstance(decay_biases, bool):
            raise ValueError(f"decay_biases: expected true or false, got {decay_biases!r}")
        self.decay_biases = decay_biases

    def set_lr(self, value):
        """Makes `value` the learning rate, written into the array `lr`, wherever it lives."""
        self.lr[...] = value

    def decay(self, name):
        """The weight decay of parameter `name`: weight_decay, or 0 for a bias that is spared."""
        return self.weight_decay if self.decay_biases or is_weight(name) else 0.0

    def add_decay(self, name, p, g):
        """g + decay * p: the gradient plus that of the L2 term (decay / 2) * ||p||^2."""
        decay = self.decay(name)
        return g + decay * p if decay else g

    def pack_group(self, name):
        """The flat array (Model.pack) that parameter `name` joins: "all", or "weights" and
        "biases" when the biases are spared, so that `decay` can tell the two apart."""
        if self.decay_biases:
            return "all"
        return "weights" if is_weight(name) else "biases"

    def step(self, params, grads):
        for name, p in params.items():
            self.update(name, p, grads[name])

    def update(self, name, p, g):
        raise NotImplementedError(f"{type(self).__name__} must implement update()")

    def state_dict(self):
        return {key: getattr(self, key) for key in self.STATE}

    def load_state_dict(self, state):
        for key in self.STATE:
            setattr(self, key, state[key])

    def __repr__(self):
        return f"{type(self).__name__}(lr={float(self.lr):g})"


@register
class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

        g = grad + weight_decay * p
        v = momentum * v + g                 (v starts at 0; skipped when momentum is 0)
        p -= lr * v                          (nesterov: p -= lr * (g + momentum * v))

    Args:
        lr: learning rate > 0.
        momentum: in [0, 1).
        nesterov: use Nesterov's look-ahead form (needs momentum > 0).
        weight_decay: L2 penalty coefficient >= 0, added to the gradient.
        decay_biases: false to decay the weights only.
    """

    STATE = ("velocity",)

    def __init__(self, lr, momentum=0.0, nesterov=False, weight_decay=0.0, decay_biases=True):
        super().__init__(lr, weight_decay, decay_biases)
        self.momentum = check_number("momentum", momentum, 0, 1, high_open=True)
        if not isinstance(nesterov, bool) or (nesterov and self.momentum == 0):
            raise ValueError(f"nesterov: expected true (with momentum > 0) or false, got {nesterov!r}")
        self.nesterov = nesterov
        self.velocity = {}               # name -> running sum of gradients, created once

    def update(self, name, p, g):
        g = self.add_decay(name, p, g)
        if self.momentum:
            if name not in self.velocity:
                self.velocity[name] = np.zeros_like(p)
            v = self.velocity[name]
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        p -= scalar(self.lr, p) * g


@register
class Momentum(SGD):
    """SGD with momentum 0.9 unless given: the seed's {"name": "momentum", "momentum": 0.9}."""

    def __init__(self, lr, momentum=0.9, nesterov=False, weight_decay=0.0, decay_biases=True):
        super().__init__(lr, momentum, nesterov, weight_decay, decay_biases)


class _Adaptive(Optimizer):
    """Shared by the optimizers that keep per-parameter running averages: checks `eps`, and
    counts steps (t, from 1; a 0-d integer array) for bias correction."""

    STATE = ("t", "slots")

    def __init__(self, lr, eps, weight_decay, decay_biases):
        super().__init__(lr, weight_decay, decay_biases)
        self.eps = check_number("eps", eps, 0, 1, low_open=True)
        self.t = np.array(0)
        self.slots = {}                  # name -> {"m": ..., "v": ...} or {"s": ...}, created once

    def step(self, params, grads):
        self.t += 1                      # in place: on the device, where the array is
        super().step(params, grads)

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if isinstance(self.t, int):      # a checkpoint written when t was a Python int
            self.t = np.array(self.t)

    def slot(self, name, key, like):
        """The running average `key` of parameter `name`, created as zeros on first use."""
        slots = self.slots.setdefault(name, {})
        if key not in slots:
            slots[key] = np.zeros_like(like)
        return slots[key]


@register
class AdaGrad(_Adaptive):
    """Adaptive gradient: a per-element rate that shrinks with the gradients seen so far.

        g = grad + weight_decay * p
        s += g^2
        p -= lr * g / (sqrt(s) + eps)
    """

    def __init__(self, lr, eps=1e-10, weight_decay=0.0, decay_biases=True):
        super().__init__(lr, eps, weight_decay, decay_biases)

    def update(self, name, p, g):
        g = self.add_decay(name, p, g)
        s = self.slot(name, "s", p)
        s += g * g
        p -= scalar(self.lr, p) * g / (np.sqrt(s) + self.eps)


@register
class RMSProp(_Adaptive):
    """AdaGrad with a forgetting average of squared gradients.

        g = grad + weight_decay * p
        s = rho * s + (1 - rho) * g^2
        p -= lr * g / (sqrt(s) + eps)
    """

    def __init__(self, lr, rho=0.9, eps=1e-8, weight_decay=0.0, decay_biases=True):
        super().__init__(lr, eps, weight_decay, decay_biases)
        self.rho = check_number("rho", rho, 0, 1, high_open=True)

    def update(self, name, p, g):
        g = self.add_decay(name, p, g)
        s = self.slot(name, "s", p)
        s *= self.rho
        s += (1 - self.rho) * g * g
        p -= scalar(self.lr, p) * g / (np.sqrt(s) + self.eps)


@register
class Adam(_Adaptive):
    """Adam (Kingma & Ba 2015), with L2 weight decay added to the gradient.

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
        p -= lr * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)      (t = 1, 2, ...)
    """

    decoupled = False                  # AdamW: weight decay acts on p, not through g

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, decay_biases=True):
        super().__init__(lr, eps, weight_decay, decay_biases)
        self.beta1 = check_number("beta1", beta1, 0, 1, high_open=True)
        self.beta2 = check_number("beta2", beta2, 0, 1, high_open=True)

    def update(self, name, p, g):
        g = g if self.decoupled else self.add_decay(name, p, g)
        m, v = self.slot(name, "m", p), self.slot(name, "v", p)
        m *= self.beta1
        m += (1 - self.beta1) * g
        v *= self.beta2
        v += (1 - self.beta2) * g * g
        m_hat = m / scalar(1 - self.beta1 ** self.t, p)        # bias correction: m, v start at 0
        v_hat = v / scalar(1 - self.beta2 ** self.t, p)
        p -= scalar(self.lr, p) * m_hat / (np.sqrt(v_hat) + self.eps)


@register
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): the decay shrinks the
    weights directly instead of passing through Adam's per-element scaling.

        p -= lr * weight_decay * p;   then Adam's update with g = grad
    """

    decoupled = True

    def __init__(self, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, decay_biases=True):
        super().__init__(lr, beta1, beta2, eps, weight_decay, decay_biases)

    def update(self, name, p, g):
        decay = self.decay(name)
        if decay:
            p *= scalar(1 - self.lr * decay, p)
        super().update(name, p, g)


def clip_grad_norm(grads, max_norm):
    """Scales every gradient in place so that their joint L2 norm is at most `max_norm`;
    returns the norm before clipping, a 0-d array beside the gradients (a numpy scalar on the CPU).

    The scale, max_norm / max(norm, max_norm), is exactly 1 where the norm is within bounds, so
    every gradient is multiplied by it and nothing has to come back to the host to decide
    whether to clip (on a GPU, reading the norm would wait for it)."""
    norm = np.sqrt(sum(np.vdot(g, g) for g in grads.values()))
    scale = max_norm / np.maximum(norm, max_norm)
    for g in grads.values():
        g *= scale
    return norm


# ---- learning-rate schedules -----------------------------------------------------------------

SCHEDULES = ("step", "exponential", "cosine")


def learning_rate(epoch, lr, schedule="step", num_epochs=1, decay_rate=1.0, start_epoch_decay=1,
                  warmup_epochs=0):
    """The learning rate of epoch `epoch` (1-based).

    step:        lr * decay_rate ** k, with k = epoch - start_epoch_decay + 1 from
                 start_epoch_decay on (the seed's decay: one multiplication per epoch), else lr.
    exponential: lr * decay_rate ** (epoch - 1).
    cosine:      lr * (1 + cos(pi * t)) / 2, t going from 0 at the first epoch after warm-up
                 to 1 one epoch past the last, so the final epoch still learns.
    warmup_epochs > 0 first ramps linearly: epoch e <= warmup_epochs uses lr * e / (warmup_epochs + 1),
    and the schedule above then counts epochs from the end of the warm-up.
    """
    if epoch <= warmup_epochs:
        return lr * epoch / (warmup_epochs + 1)
    e = epoch - warmup_epochs
    if schedule == "step":
        return lr * decay_rate ** max(0, e - start_epoch_decay + 1)
    if schedule == "exponential":
        return lr * decay_rate ** (e - 1)
    if schedule == "cosine":
        t = (e - 1) / max(1, num_epochs - warmup_epochs)
        return lr * (1 + math.cos(math.pi * t)) / 2
    raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
