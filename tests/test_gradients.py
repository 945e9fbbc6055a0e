"""Every registered layer and loss, and a whole Model, against float64 central differences,
on every backend present (numpy, the strict stand-in for a GPU, and CuPy's where there is one).

For a layer, f(x) = sum(forward(x) * g) with a fixed random g, so df/dx = backward(g) and
df/dparams[k] = grads[k]. The relative error ||analytic - numeric|| / (||analytic|| + ||numeric||)
must stay below 1e-6. The differences are gradcheck.py's (the gradcheck task's), here taken on
every entry of every array.
"""
import numpy as np
import pytest

from backend import to_numpy
from conftest import on_device
from gradcheck import TOLERANCE, away_from_kinks, numeric_grad, relative_error
from model import build_model
from nn_module import LAYERS, LOSSES, NNModule, get_module, register

# name -> list of (constructor arguments, per-example input shape); covers every built-in layer.
LAYER_CASES = {
    "Linear": [({"n_in": 5, "n_out": 4}, (5,))],
    "ReLU": [({}, (7,)), ({}, (2, 3, 3))],
    "LeakyReLU": [({"negative_slope": 0.1}, (7,))],
    "Tanh": [({}, (7,))],
    "Sigmoid": [({}, (7,))],
    "Softmax": [({}, (6,))],
    "Conv2D": [({"in_channels": 2, "out_channels": 3, "kernel_size": k, "stride": s, "padding": p}, (2, 7, 6))
               for k, s, p in [(3, 1, 0), (3, 1, 1), (3, 2, 0), (3, 2, 1), (2, 2, 0), (5, 2, 2), (1, 1, 0)]],
    "MaxPool2D": [({"kernel_size": k, "stride": s}, (2, 6, 7)) for k, s in [(2, 2), (3, 1), (3, 2), (2, 1)]],
    "AvgPool2D": [({"kernel_size": k, "stride": s}, (2, 6, 7)) for k, s in [(2, 2), (3, 1), (3, 2), (2, 1)]],
    "Flatten": [({}, (2, 3, 2))],
    "Reshape": [({"shape": [2, 3]}, (6,))],
    "Dropout": [({"p": 0.3}, (8,)), ({"p": 0.5}, (2, 3, 3))],
    "BatchNorm": [({"num_features": 4}, (4,)), ({"num_features": 3}, (3, 4, 5))],
    **{name: [({"n_in": 3, "n_hidden": 4, "return_sequences": sequences}, (steps, 3))
              for sequences in (False, True) for steps in (1, 5)] for name in ("RNN", "LSTM", "GRU")},
}


def error(analytic, f, array):
    """The relative error of `analytic` (any device) against central differences of the scalar
    f() on every entry of `array` (perturbed in place)."""
    index = np.unravel_index(np.arange(array.size), array.shape)
    return relative_error(to_numpy(analytic)[index], numeric_grad(f, array, index))


def check_module(module, x, rng, device):
    """Asserts grad_x and every grads[k] match central differences of sum(forward(x) * g), with
    the module and x moved to `device` (a backend.Backend)."""
    seed = int(rng.integers(1 << 30))
    on_device(module, device)
    x = device.to_device(x)

    def f():
        if hasattr(module, "rng"):                 # Dropout: the same mask on every call
            module.rng = device.random(np.random.default_rng(seed))
        return float(np.sum(module.forward(x) * g))

    g = device.to_device(rng.normal(size=module.forward(x).shape))
    f()
    grad_x = module.backward(g.copy())
    analytic = {k: v.copy() for k, v in module.grads.items()}
    assert error(grad_x, f, x) < TOLERANCE, "grad_x"
    assert analytic.keys() == module.params.keys()
    for k, p in module.params.items():
        assert error(analytic[k], f, p) < TOLERANCE, f"grads[{k!r}]"


def test_every_layer_has_a_case():
    """Every built-in layer; a user's own layers (layers/*.py) share the table but not this file."""
    assert set(LAYER_CASES) == {name for name, cls in LAYERS.items() if cls.__module__ == "nn_module"}


def test_a_user_layer_needs_no_case():
    @register
    class Throwaway(NNModule):                    # as a file under layers/ registers its class
        pass
    try:
        assert Throwaway.__module__ != "nn_module" and "Throwaway" not in LAYER_CASES
        test_every_layer_has_a_case()
    finally:
        del LAYERS["Throwaway"]


@pytest.mark.parametrize("name,arguments,shape",
                         [(n, a, s) for n, cases in LAYER_CASES.items() for a, s in cases])
def test_layer_gradients(name, arguments, shape, device):
    rng = np.random.default_rng(0)
    extra = {"rng": rng} if "rng" in get_module(name).__init__.__code__.co_varnames else {}
    module = get_module(name)(**arguments, dtype=np.float64, **extra)
    module.train()
    check_module(module, away_from_kinks((3, *shape), rng), rng, device)


def test_batchnorm_gradients_in_eval_mode(device):
    rng = np.random.default_rng(4)
    module = get_module("BatchNorm")(num_features=3, dtype=np.float64)
    module.forward(rng.normal(size=(6, 3, 2, 2)) * 2 + 1)       # moves the running averages
    module.eval()
    check_module(module, rng.normal(size=(5, 3, 2, 2)), rng, device)


def test_model_gradients(device):
    rng = np.random.default_rng(1)
    model = build_model([{"class": "Linear", "n_in": 6, "n_out": 5}, {"class": "Tanh"},
                         {"class": "Linear", "n_in": 5, "n_out": 3}, {"class": "Softmax"}],
                        dtype=np.float64, rng=rng)
    check_module(model, rng.normal(size=(4, 6)), rng, device)


def loss_inputs(name, rng):
    logits = rng.normal(size=(5, 4))
    if name == "CrossEntropyLoss":                       # probabilities, as after a Softmax
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True), rng.integers(0, 4, 5)
    return logits, rng.integers(0, 4, 5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_gradients(name, device):
    rng = np.random.default_rng(2)
    pred, labels = map(device.to_device, loss_inputs(name, rng))
    loss = get_module(name)(dtype=np.float64)
    f = lambda: loss.forward(pred, labels)
    f()
    analytic = loss.backward()
    assert error(analytic, f, pred) < TOLERANCE


def test_mse_gradient_with_target_array(device):
    rng = np.random.default_rng(3)
    pred, target = device.to_device(rng.normal(size=(4, 3))), device.to_device(rng.normal(size=(4, 3)))
    loss = get_module("MSELoss")(dtype=np.float64)
    f = lambda: loss.forward(pred, target)
    f()
    assert error(loss.backward(), f, pred) < TOLERANCE


def test_stacked_recurrent_model_gradients(device):
    """A sequence from one recurrent layer feeds the next: dL/dx flows back through both."""
    rng = np.random.default_rng(5)
    model = build_model([{"class": "Reshape", "shape": [4, 3]},
                         {"class": "LSTM", "n_in": 3, "n_hidden": 5, "return_sequences": True},
                         {"class": "GRU", "n_in": 5, "n_hidden": 4, "return_sequences": True},
                         {"class": "RNN", "n_in": 4, "n_hidden": 3},
                         {"class": "Linear", "n_in": 3, "n_out": 2}], dtype=np.float64, rng=rng)
    check_module(model, rng.normal(size=(3, 12)), rng, device)
