"""Layers: one harness for the contract; conv and pooling against naive loops; dropout and batch norm."""
import numpy as np
import pytest

from backend import to_numpy
from conftest import on_device
from errors import ConfigError
from model import build_model
from nn_module import LAYERS, get_module
from test_gradients import LAYER_CASES


def build(name, arguments, dtype=np.float32):
    extra = {"rng": np.random.default_rng(0)} if "rng" in get_module(name).__init__.__code__.co_varnames else {}
    return get_module(name)(**arguments, dtype=dtype, **extra)


@pytest.mark.parametrize("name,arguments,shape",
                         [(n, a, s) for n, cases in LAYER_CASES.items() for a, s in cases])
def test_layer_contract(name, arguments, shape, device):
    """Built from its spec and moved to the device: float32 in and out, params/grads parity,
    repr, train/eval, grad_y untouched."""
    layer = on_device(build(name, arguments), device)
    x = device.to_device(np.random.default_rng(1).normal(size=(3, *shape)).astype(np.float32))
    y = layer.forward(x)
    assert y.dtype == np.float32 and len(y) == 3
    grad_y = np.ones_like(y)
    grad_x = layer.backward(grad_y)
    assert np.all(to_numpy(grad_y) == 1)                         # backward never modifies grad_y
    assert grad_x.shape == x.shape and grad_x.dtype == np.float32
    assert layer.params.keys() == layer.grads.keys()
    for k in layer.params:
        assert layer.grads[k].shape == layer.params[k].shape and layer.grads[k].dtype == np.float32
    assert repr(layer).startswith(f"{name}(") and all(f"{k}=" in repr(layer) for k in arguments)
    assert layer.eval() is layer and not layer.training
    assert layer.train() is layer and layer.training


def test_model_names_and_shares_arrays():
    model = build_model([{"class": "Linear", "n_in": 4, "n_out": 3}, {"class": "BatchNorm", "num_features": 3}])
    assert set(model.params) == {"0.weight", "0.bias", "1.gamma", "1.beta"}
    assert set(model.state) == {"1.running_mean", "1.running_var"}
    assert model.params["0.weight"] is model.layers[0].params["weight"]
    assert "(0): Linear(n_in=4, n_out=3)" in repr(model)
    model.eval()
    assert not any(layer.training for layer in model.layers)


def test_summary_counts_parameters():
    model = build_model([{"class": "Linear", "n_in": 784, "n_out": 200}, {"class": "Tanh"},
                         {"class": "Linear", "n_in": 200, "n_out": 10}])
    text = model.summary((784,))
    assert "Total params: 159,010" in text and "(200,)" in text


# ---- conv and pooling against loops written here -------------------------------------------

def naive_conv(x, weight, bias, stride, padding):
    n, c, h, w = x.shape
    f, _, k, _ = weight.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh, ow = (h + 2 * padding - k) // stride + 1, (w + 2 * padding - k) // stride + 1
    y = np.zeros((n, f, oh, ow))
    for a in range(n):
        for b in range(f):
            for i in range(oh):
                for j in range(ow):
                    y[a, b, i, j] = np.sum(xp[a, :, i * stride:i * stride + k, j * stride:j * stride + k]
                                           * weight[b]) + bias[b]
    return y


def naive_pool(x, k, stride, reduce):
    """(y, grad_x for grad_y = 1) with max going to the first maximum of each window."""
    n, c, h, w = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    y, grad = np.zeros((n, c, oh, ow)), np.zeros_like(x, dtype=np.float64)
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    window = x[a, b, i * stride:i * stride + k, j * stride:j * stride + k]
                    if reduce == "max":
                        y[a, b, i, j] = window.max()
                        r, s = np.unravel_index(np.argmax(window), window.shape)
                        grad[a, b, i * stride + r, j * stride + s] += 1
                    else:
                        y[a, b, i, j] = window.mean()
                        grad[a, b, i * stride:i * stride + k, j * stride:j * stride + k] += 1 / (k * k)
    return y, grad


@pytest.mark.parametrize("k,stride,padding", [(3, 1, 0), (3, 1, 1), (3, 2, 1), (5, 2, 2), (2, 2, 0)])
def test_conv_matches_loops(k, stride, padding, device):
    rng = np.random.default_rng(2)
    conv = get_module("Conv2D")(in_channels=3, out_channels=4, kernel_size=k, stride=stride, padding=padding,
                                dtype=np.float64, rng=rng)
    conv.params["bias"][...] = rng.normal(size=4)
    x = rng.normal(size=(2, 3, 9, 8))
    expected = naive_conv(x, conv.params["weight"], conv.params["bias"], stride, padding)
    conv.map_arrays(device.to_device)
    np.testing.assert_allclose(to_numpy(conv.forward(device.to_device(x))), expected, atol=1e-12)


@pytest.mark.parametrize("reduce", ["max", "avg"])
@pytest.mark.parametrize("k,stride", [(2, 2), (3, 1), (3, 2), (17, 1)])
def test_pool_matches_loops(reduce, k, stride, device):
    x = np.random.default_rng(3).normal(size=(2, 3, 7, 8) if k < 8 else (1, 2, 18, 19))
    pool = get_module("MaxPool2D" if reduce == "max" else "AvgPool2D")(kernel_size=k, stride=stride,
                                                                      dtype=np.float64)
    y, grad = naive_pool(x, k, stride, reduce)
    np.testing.assert_allclose(to_numpy(pool.forward(device.to_device(x))), y, atol=1e-12)
    np.testing.assert_allclose(to_numpy(pool.backward(device.to_device(np.ones_like(y)))), grad, atol=1e-12)


@pytest.mark.parametrize("k,stride", [(2, 2), (3, 2)])
def test_maxpool_on_real_mnist_ties(mnist, k, stride):
    """MNIST's flat background ties every window: each must pass its gradient to exactly one pixel."""
    x = mnist["x_test"][:8].reshape(8, 1, 28, 28)
    pool = get_module("MaxPool2D")(kernel_size=k, stride=stride)
    y, grad = naive_pool(x, k, stride, "max")
    np.testing.assert_array_equal(pool.forward(x), y)
    grad_x = pool.backward(np.ones_like(y, dtype=np.float32))
    np.testing.assert_array_equal(grad_x, grad)
    assert grad_x.sum() == y.size                                # one unit of gradient per window


def test_conv_on_real_mnist_matches_loops(mnist):
    rng = np.random.default_rng(4)
    x = mnist["x_test"][:2].reshape(2, 1, 28, 28).astype(np.float64)
    conv = get_module("Conv2D")(in_channels=1, out_channels=2, kernel_size=3, padding=1, dtype=np.float64, rng=rng)
    np.testing.assert_allclose(conv.forward(x), naive_conv(x, conv.params["weight"], conv.params["bias"], 1, 1),
                               atol=1e-12)


# ---- dropout and batch norm ----------------------------------------------------------------

def test_dropout_eval_is_identity_and_train_keeps_the_mean():
    dropout = build("Dropout", {"p": 0.25})
    x = np.ones((200, 500), np.float32)
    y = dropout.forward(x)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75)                 # inverted: survivors scaled by 1/(1-p)
    assert abs(y.mean() - 1) < 0.02
    dropout.eval()
    assert dropout.forward(x) is x and dropout.backward(x) is x


def test_batchnorm_normalises_in_train_and_uses_running_averages_in_eval():
    bn = build("BatchNorm", {"num_features": 2, "momentum": 0.5}, dtype=np.float64)
    x = np.random.default_rng(5).normal(3.0, 2.0, size=(1000, 2))
    y = bn.forward(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-9)
    np.testing.assert_allclose(y.std(axis=0), 1, atol=1e-4)
    np.testing.assert_allclose(bn.state["running_mean"], 0.5 * x.mean(axis=0))     # 0.5 * 0 + 0.5 * mean
    np.testing.assert_allclose(bn.state["running_var"], 0.5 + 0.5 * x.var(axis=0))
    bn.eval()
    expected = (x - bn.state["running_mean"]) / np.sqrt(bn.state["running_var"] + 1e-5)
    np.testing.assert_allclose(bn.forward(x), expected)
    assert "running_mean" not in bn.params


@pytest.mark.parametrize("network,message", [
    ([{"class": "Reshape", "shape": [1, 28, 28]}, {"class": "Conv2D", "in_channels": 1, "out_channels": 2,
                                                   "kernel_size": 31, "padding": 1}],
     "network[1] (Conv2D) does not fit: kernel_size 31 is larger than the padded input 30x30"),
    ([{"class": "Reshape", "shape": [1, 28, 28]}, {"class": "Conv2D", "in_channels": 1, "out_channels": 2,
                                                   "kernel_size": 3, "stride": 0}],
     "network[1].stride: expected an integer >= 1, got 0"),
    ([{"class": "Reshape", "shape": [1, 28, 28]}, {"class": "Conv2D", "in_channels": 1, "out_channels": 2,
                                                   "kernel_size": 3, "padding": -1}],
     "network[1].padding: expected an integer >= 0, got -1"),
    ([{"class": "Reshape", "shape": [1, 28, 28]}, {"class": "Conv2D", "in_channels": 3, "out_channels": 2,
                                                   "kernel_size": 3}],
     "network[1] (Conv2D) does not fit: expected (N, 3, H, W) inputs, got (N, 1, 28, 28)"),
    ([{"class": "Dropout", "p": 1}], "network[0].p: expected a number in [0, 1), got 1"),
    ([{"class": "Linear", "n_in": 784, "n_out": 8}, {"class": "BatchNorm", "num_features": 6}],
     "network[1] (BatchNorm) does not fit: num_features is 6, but the input has shape (N, 8)"),
    ([{"class": "Reshape", "shape": [1, 27, 27]}], "network[0] (Reshape) does not fit: cannot reshape (784,)"),
    ([{"class": "Linear", "n_in": 784, "n_out": 8, "init": "zeros"}], "network[0].init: expected one of he, xavier"),
])
def test_bad_layer_arguments_name_the_layer(network, message):
    with pytest.raises(ConfigError) as err:
        build_model(network).output_shapes((784,))
    assert str(err.value).startswith(message)


@pytest.mark.parametrize("init,check", [
    ("he", lambda w: abs(w.std() - np.sqrt(2 / 400)) < 0.005),
    ("xavier", lambda w: abs(w).max() <= np.sqrt(6 / 600) and abs(w.std() - np.sqrt(2 / 600)) < 0.005),
    ("normal", lambda w: abs(w.std() - 0.05) < 0.005),
    ("uniform", lambda w: abs(w).max() <= 1 / 20 and abs(w.std() - 1 / 20 / np.sqrt(3)) < 0.005),
])
def test_init(init, check):
    layer = get_module("Linear")(n_in=400, n_out=200, init=init, std=0.05, rng=np.random.default_rng(0))
    assert check(layer.params["weight"])


def test_every_layer_is_registered_under_its_own_name():
    assert all(cls.__name__ == name for name, cls in LAYERS.items())
    with pytest.raises(ValueError, match="did you mean 'Linear'"):
        get_module("Lineer")


def test_skipping_the_input_gradient_keeps_every_parameter_gradient():
    network = [{"class": "Reshape", "shape": [1, 6, 6]},
               {"class": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 3},
               {"class": "Flatten"}, {"class": "Linear", "n_in": 32, "n_out": 3}]
    rng = np.random.default_rng(6)
    x, g = rng.normal(size=(4, 36)), rng.normal(size=(4, 3))
    full, skip = (build_model(network, np.float64, np.random.default_rng(0)) for _ in range(2))
    skip.skip_input_grad()
    full.forward(x), skip.forward(x)
    assert full.backward(g).shape == x.shape and skip.backward(g) is None
    assert [layer.needs_grad_x for layer in skip.layers] == [False, False, True, True]
    for name in full.grads:
        np.testing.assert_array_equal(full.grads[name], skip.grads[name])


@pytest.mark.parametrize("optimizer,decay_biases", [("sgd", True), ("adam", True), ("sgd", False), ("adamw", False)])
def test_packing_the_parameters_changes_no_number(optimizer, decay_biases, device):
    """Model.pack() puts all parameters in one array (two, weights and the rest, when the biases
    escape weight decay): training steps give bit-identical weights."""
    from engine import train_step
    from optim import OPTIMIZERS
    network = [{"class": "Reshape", "shape": [1, 6, 6]},
               {"class": "Conv2D", "in_channels": 1, "out_channels": 2, "kernel_size": 3},
               {"class": "BatchNorm", "num_features": 2}, {"class": "ReLU"}, {"class": "Flatten"},
               {"class": "Linear", "n_in": 32, "n_out": 3}]
    loss = get_module("SoftmaxCrossEntropyLoss")()
    models = [build_model(network, rng=np.random.default_rng(0)).map_arrays(device.to_device) for _ in range(2)]
    optimizers = [device.place_optimizer(OPTIMIZERS[optimizer](lr=0.1, weight_decay=0.01, decay_biases=decay_biases))
                  for _ in models]
    models[1].pack(optimizers[1].pack_group)
    sizes = {key: array.size for key, array in models[1].packed_params.items()}
    assert sizes == ({"all": 18 + 2 + 2 + 2 + 96 + 3} if decay_biases else
                     {"weights": 18 + 96, "biases": 2 + 2 + 2 + 3})     # BatchNorm's gamma and beta are no weights
    x = device.to_device(np.random.default_rng(1).normal(size=(5, 36)).astype(np.float32))
    y = device.to_device(np.array([0, 1, 2, 1, 0]))
    for _ in range(3):
        for model, opt in zip(models, optimizers):
            train_step(model, loss, opt, x, y, clip_norm=None)
    for name in models[0].params:
        assert np.array_equal(to_numpy(models[0].params[name]), to_numpy(models[1].params[name])), name
# ---- recurrent layers against their equations, one step at a time --------------------------

def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def naive_recurrent(name, p, x):
    """Every h_t of x (N, T, D), written from the equations of PyTorch's documentation."""
    n, steps, _ = x.shape
    hidden = p["weight_hh"].shape[0]
    h, c, hs = np.zeros((n, hidden)), np.zeros((n, hidden)), []
    for t in range(steps):
        if name == "RNN":
            h = np.tanh(x[:, t] @ p["weight_ih"] + h @ p["weight_hh"] + p["bias"])
        elif name == "LSTM":
            i, f, g, o = np.split(x[:, t] @ p["weight_ih"] + h @ p["weight_hh"] + p["bias"], 4, axis=1)
            c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h = sigmoid(o) * np.tanh(c)
        else:
            xr, xz, xn = np.split(x[:, t] @ p["weight_ih"] + p["bias_ih"], 3, axis=1)
            hr, hz, hn = np.split(h @ p["weight_hh"] + p["bias_hh"], 3, axis=1)
            r, z = sigmoid(xr + hr), sigmoid(xz + hz)
            h = (1 - z) * np.tanh(xn + r * hn) + z * h
        hs.append(h)
    return np.stack(hs, axis=1)                                    # (N, T, H)


@pytest.mark.parametrize("name", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize("sequences", [False, True])
def test_recurrent_layers_match_their_equations(name, sequences):
    rng = np.random.default_rng(7)
    layer = build(name, {"n_in": 5, "n_hidden": 6, "return_sequences": sequences}, dtype=np.float64)
    for key in layer.params:
        layer.params[key][...] = rng.normal(size=layer.params[key].shape) * 0.5
    x = rng.normal(size=(4, 7, 5))
    expected = naive_recurrent(name, layer.params, x)
    np.testing.assert_allclose(layer.forward(x), expected if sequences else expected[:, -1], atol=1e-12)


@pytest.mark.parametrize("name,blocks", [("RNN", 1), ("LSTM", 4), ("GRU", 3)])
def test_recurrent_parameters_are_laid_out_like_linear(name, blocks):
    layer = build(name, {"n_in": 5, "n_hidden": 6})
    shapes = {k: v.shape for k, v in layer.params.items()}
    biases = {"bias": (6 * blocks,)} if name != "GRU" else {"bias_ih": (18,), "bias_hh": (18,)}
    assert shapes == {"weight_ih": (5, 6 * blocks), "weight_hh": (6, 6 * blocks), **biases}
    if name == "LSTM":                                            # the forget gate starts open
        assert np.all(layer.params["bias"][6:12] == 1) and np.all(layer.params["bias"][:6] == 0)


def test_recurrent_summary_counts_parameters_and_multiply_adds():
    model = build_model([{"class": "Reshape", "shape": [28, 28]}, {"class": "LSTM", "n_in": 28, "n_hidden": 128},
                         {"class": "Linear", "n_in": 128, "n_out": 10}])
    text = model.summary((784,))
    # LSTM: 4 * 128 * (28 + 128 + 1) params; 28 steps of (28 + 128) * 512 multiply-adds
    assert "| (128,)" in text and "80,384" in text and f"{28 * 156 * 512:,}" in text
    assert "Total params: 81,674" in text


def test_recurrent_layers_reject_the_wrong_input():
    with pytest.raises(ConfigError, match=r"network\[1\] \(GRU\) does not fit: expected \(N, T, 20\) inputs, "
                                          r"got \(N, 28, 28\)"):
        build_model([{"class": "Reshape", "shape": [28, 28]}, {"class": "GRU", "n_in": 20, "n_hidden": 8}]
                    ).output_shapes((784,))
    with pytest.raises(ConfigError, match="network\\[0\\].return_sequences: expected true or false, got 1"):
        build_model([{"class": "LSTM", "n_in": 28, "n_hidden": 8, "return_sequences": 1}])


def test_a_failing_forward_leaves_the_model_in_its_mode():
    from model import forward_in_eval_mode
    model = build_model([{"class": "Linear", "n_in": 784, "n_out": 8}, {"class": "Dropout", "p": 0.5}])
    with pytest.raises(ValueError):
        forward_in_eval_mode(model, np.zeros((2, 5), np.float32))        # 5 features, not 784
    assert model.training and all(layer.training for layer in model.layers)
    with pytest.raises(ConfigError):
        model.output_shapes((5,))
    assert model.training and all(layer.training for layer in model.layers)
