"""Optimizers: two steps against numbers worked by hand; schedules: the rate of each epoch."""
import copy
import math

import numpy as np
import pytest

from backend import to_numpy
from optim import OPTIMIZERS, SGD, AdaGrad, Adam, AdamW, Momentum, RMSProp, clip_grad_norm, learning_rate


def two_steps(optimizer, device):
    device.place_optimizer(optimizer)
    params = {"w": device.to_device(np.array([1.0]))}
    grads = {"w": device.to_device(np.array([0.5]))}
    array = params["w"]
    seen = []
    for _ in range(2):
        optimizer.step(params, grads)
        seen.append(float(to_numpy(params["w"])[0]))
    assert params["w"] is array                     # updated in place, never rebound
    return seen


@pytest.mark.parametrize("optimizer,expected", [
    (SGD(lr=0.1), [0.95, 0.9]),                                        # p -= lr g
    (SGD(lr=0.1, momentum=0.9), [0.95, 0.855]),                        # v = 0.5, then 0.95
    (SGD(lr=0.1, momentum=0.9, nesterov=True), [0.905, 0.7695]),       # p -= lr (g + 0.9 v)
    (SGD(lr=0.1, weight_decay=0.1), [0.94, 0.8806]),                   # g + 0.1 p
    (Momentum(lr=0.1), [0.95, 0.855]),                                 # momentum 0.9 by default
    (Adam(lr=0.1), [0.9, 0.8]),                        # a constant gradient: bias-corrected steps of lr
    (AdamW(lr=0.1, weight_decay=0.1), [0.89, 0.7811]),                 # p *= 1 - 0.01 first
    (Adam(lr=0.1, weight_decay=0.1),                   # g = 0.6, then 0.59: m = 0.113, v = 0.00070774
     [0.9, 0.9 - 0.1 * (0.113 / 0.19) / np.sqrt(0.00070774 / 0.001999)]),
    (AdaGrad(lr=0.1), [0.9, 0.9 - 0.05 / np.sqrt(0.5)]),               # s = 0.25, then 0.5
    (RMSProp(lr=0.1), [1 - 0.05 / np.sqrt(0.025), 1 - 0.05 / np.sqrt(0.025) - 0.05 / np.sqrt(0.0475)]),
])
def test_two_steps(optimizer, expected, device):
    assert two_steps(copy.deepcopy(optimizer), device) == pytest.approx(expected)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_grad_norm_on_every_device(device, dtype):
    grads = {"a": device.to_device(np.array([3.0], dtype)), "b": device.to_device(np.array([4.0], dtype))}
    assert float(clip_grad_norm(grads, 10.0)) == pytest.approx(5.0)
    assert to_numpy(grads["a"])[0] == 3.0 and to_numpy(grads["b"])[0] == 4.0    # within bounds: untouched
    assert float(clip_grad_norm(grads, 5.0)) == pytest.approx(5.0)
    assert to_numpy(grads["a"])[0] == 3.0 and to_numpy(grads["b"])[0] == 4.0    # on the bound too: a scale of 1
    assert float(clip_grad_norm(grads, 1.0)) == pytest.approx(5.0)
    a, b = to_numpy(grads["a"]), to_numpy(grads["b"])
    assert a[0] == pytest.approx(0.6) and b[0] == pytest.approx(0.8) and a.dtype == b.dtype == dtype


def test_state_is_kept_per_name():
    optimizer = SGD(lr=0.1, momentum=0.9)
    params = {"a": np.array([1.0]), "b": np.array([1.0])}
    optimizer.step(params, {"a": np.array([1.0]), "b": np.array([0.0])})
    assert set(optimizer.velocity) == {"a", "b"}
    assert optimizer.velocity["a"][0] == pytest.approx(1.0)
    assert optimizer.velocity["b"][0] == 0.0


@pytest.mark.parametrize("cls", [SGD, Momentum, AdaGrad, RMSProp, Adam, AdamW])
def test_decay_biases_false_spares_the_biases_only(cls):
    """With a zero gradient only weight decay moves a parameter: the weights shrink, and the
    biases, BatchNorm's gamma and beta and the packed "biases" stay where they are."""
    names = ["0.weight", "1.weight_ih", "weights", "0.bias", "2.gamma", "2.beta", "biases"]
    params = {name: np.ones(2) for name in names}
    cls(lr=0.1, weight_decay=0.1, decay_biases=False).step(params, {name: np.zeros(2) for name in names})
    assert [bool(np.all(params[name] < 1)) for name in names] == [True] * 3 + [False] * 4
    assert all(np.array_equal(params[name], np.ones(2)) for name in names[3:])


def test_float32_stays_float32():
    params = {"w": np.ones(3, np.float32)}
    SGD(lr=0.1, momentum=0.9, weight_decay=1e-4).step(params, {"w": np.ones(3, np.float32)})
    assert params["w"].dtype == np.float32


@pytest.mark.parametrize("arguments,message", [
    ({"lr": 0}, "lr: expected a number in (0, inf), got 0"),
    ({"lr": -1}, "lr: expected"),
    ({"lr": True}, "lr: expected"),
    ({"lr": 0.1, "momentum": 1.0}, "momentum: expected a number in [0, 1), got 1.0"),
    ({"lr": 0.1, "weight_decay": -1}, "weight_decay: expected"),
    ({"lr": 0.1, "nesterov": True}, "nesterov: expected true (with momentum > 0)"),
    ({"lr": 0.1, "decay_biases": "no"}, "decay_biases: expected true or false, got 'no'"),
])
def test_bad_hyperparameters_are_named(arguments, message):
    with pytest.raises(ValueError) as err:
        SGD(**arguments)
    assert str(err.value).startswith(message)


def test_registry_names():
    assert OPTIMIZERS == {"sgd": SGD, "momentum": Momentum, "adagrad": AdaGrad, "rmsprop": RMSProp,
                          "adam": Adam, "adamw": AdamW}


@pytest.mark.parametrize("cls,arguments,message", [
    (Adam, {"beta1": 1.0}, "beta1: expected a number in [0, 1), got 1.0"),
    (Adam, {"beta2": -0.1}, "beta2: expected"),
    (AdamW, {"eps": 0}, "eps: expected a number in (0, 1], got 0"),
    (RMSProp, {"rho": 2}, "rho: expected"),
    (AdaGrad, {"weight_decay": -1}, "weight_decay: expected"),
])
def test_adaptive_hyperparameters_are_checked(cls, arguments, message):
    with pytest.raises(ValueError) as err:
        cls(lr=0.1, **arguments)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("kwargs,expected", [
    ({"schedule": "step"}, [1, 1, 1, 1, 1]),
    ({"schedule": "step", "decay_rate": 0.5, "start_epoch_decay": 3}, [1, 1, 0.5, 0.25, 0.125]),
    ({"schedule": "exponential", "decay_rate": 0.5}, [1, 0.5, 0.25, 0.125, 0.0625]),
    ({"schedule": "cosine", "num_epochs": 4}, [1, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                               (1 + math.cos(3 * math.pi / 4)) / 2, 0]),
    ({"schedule": "step", "warmup_epochs": 2}, [1 / 3, 2 / 3, 1, 1, 1]),
    ({"schedule": "cosine", "num_epochs": 4, "warmup_epochs": 2}, [1 / 3, 2 / 3, 1, 0.5, 0]),
])
def test_schedules(kwargs, expected):
    assert [learning_rate(e, 1.0, **kwargs) for e in range(1, 6)] == pytest.approx(expected, abs=1e-12)


def test_float32_steps_are_those_of_python_scalars():
    """The rate and Adam's step count are 0-d arrays, so that a step takes no changing value from
    the host; a float32 run still gets, bit for bit, the steps written with Python floats."""
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=50).astype(np.float32) for _ in range(200)]
    lr, beta1, beta2, eps, decay = 0.01, 0.9, 0.999, 1e-8, 0.05
    for decoupled in (False, True):
        p, m, v = np.ones(50, np.float32), np.zeros(50, np.float32), np.zeros(50, np.float32)
        ours, optimizer = {"w": p.copy()}, (AdamW if decoupled else Adam)(lr=lr, weight_decay=decay)
        for t, g in enumerate(grads, start=1):
            optimizer.set_lr(lr / t)                                    # a new rate every step
            optimizer.step(ours, {"w": g})
            rate = lr / t
            if decoupled:
                p *= 1 - rate * decay
            else:
                g = g + decay * p
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g * g
            p -= rate * (m / (1 - beta1 ** t)) / (np.sqrt(v / (1 - beta2 ** t)) + eps)
            assert np.array_equal(ours["w"], p), (decoupled, t)
    assert optimizer.t.ndim == 0 and int(optimizer.t) == len(grads)
