"""Saving and loading: a pickle round trip gives identical predictions; float32 stays float32."""
import json

import numpy as np
import pytest

from model import build_model
from nn_module import SoftmaxCrossEntropyLoss
from optim import OPTIMIZERS
from utils import load_model, save_model

CNN = json.load(open(__import__("conftest").ROOT / "configs" / "cnn.json"))["network"]


def config_for(network):
    return {"network": network, "network_names": [f"network[{i}]" for i in range(len(network))],
            "dtype": "float32", "dataset": "mnist"}


def trained_a_little(network, optimizer="sgd"):
    rng = np.random.default_rng(0)
    model = build_model(network, rng=rng)
    loss, opt = SoftmaxCrossEntropyLoss(), OPTIMIZERS[optimizer](lr=0.01)
    for _ in range(3):
        x, y = rng.random((8, 784), dtype=np.float32), rng.integers(0, 10, 8)
        loss.forward(model.forward(x), y)
        model.backward(loss.backward())
        opt.step(model.params, model.grads)
    return model


def test_round_trip_gives_identical_predictions(tmp_path):
    model = trained_a_little(CNN)                      # BatchNorm running averages have moved
    path = str(tmp_path / "cnn.pkl")
    save_model(path, model, config_for(CNN))
    loaded, config = load_model(path)
    assert config["network"] == CNN and not loaded.training
    x = np.random.default_rng(1).random((20, 784), dtype=np.float32)
    model.eval()
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    for name in model.state:
        np.testing.assert_array_equal(loaded.state[name], model.state[name])


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_parameters_and_gradients_stay_float32(optimizer):
    model = trained_a_little(CNN, optimizer)
    arrays = {**model.params, **model.grads, **model.state}
    assert {name: a.dtype for name, a in arrays.items() if a.dtype != np.float32} == {}
    x = np.random.default_rng(2).random((4, 784), dtype=np.float32)
    assert model.forward(x).dtype == np.float32
