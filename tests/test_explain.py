"""The explain task: its saliency map is the gradient of the class score, its picture shows every
layer of every shipped config, and it fails as predict does, one input at a time."""
import json
import pathlib

import numpy as np
import pytest

import backend
import explain
from config import load_config
from engine import Engine
from log import Logger
from main import main
from model import Model, build_model, forward_in_eval_mode
from strict_device import StrictBackend
from test_cli import run_error

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.json"))

MLP = [{"class": "Linear", "n_in": 64, "n_out": 12}, {"class": "BatchNorm", "num_features": 12}, {"class": "Tanh"},
       {"class": "Dropout", "p": 0.5}, {"class": "Linear", "n_in": 12, "n_out": 5}, {"class": "Softmax"}]
CONV = [{"class": "Reshape", "shape": [1, 8, 8]},
        {"class": "Conv2D", "in_channels": 1, "out_channels": 3, "kernel_size": 3, "padding": 1},
        {"class": "BatchNorm", "num_features": 3}, {"class": "ReLU"}, {"class": "MaxPool2D", "kernel_size": 2},
        {"class": "Flatten"}, {"class": "Linear", "n_in": 48, "n_out": 5}]
RECURRENT = [{"class": "Reshape", "shape": [8, 8]}, {"class": "LSTM", "n_in": 8, "n_hidden": 6},
             {"class": "Linear", "n_in": 6, "n_out": 5}]
TINY_CONV = [{"class": "Reshape", "shape": [1, 28, 28]},
             {"class": "Conv2D", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
             {"class": "BatchNorm", "num_features": 4}, {"class": "ReLU"}, {"class": "MaxPool2D", "kernel_size": 2},
             {"class": "Flatten"}, {"class": "Linear", "n_in": 784, "n_out": 10}]


def float64_model(network, seed=0):
    """A float64 model of `network` whose BatchNorm running averages are not the trivial 0 and 1."""
    rng = np.random.default_rng(seed)
    model = build_model(network, np.float64, rng)
    for name, value in model.state.items():
        value[...] = rng.uniform(0.5, 1.5, value.shape) if name.endswith("var") else rng.normal(0, 0.3, value.shape)
    return model


def logits(model, x):
    """The logits z: the outputs of the layers before a final Softmax, in eval mode."""
    return forward_in_eval_mode(Model(model.layers[:explain.logit_layers(model)]), x)


def central_differences(model, x, weights, eps=1e-6):
    """d(sum_k weights[k] z_k)/dx of the one example x (1, D), by (f(x + eps) - f(x - eps)) / 2 eps."""
    score = lambda v: sum(w * logits(model, v)[0, k] for k, w in weights.items())
    grad = np.zeros_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step.flat[i] = eps
        grad.flat[i] = (score(x + step) - score(x - step)) / (2 * eps)
    return grad


def relative_error(a, b):
    return np.linalg.norm(a - b) / (np.linalg.norm(a) + np.linalg.norm(b))


@pytest.mark.parametrize("network", [MLP, CONV, RECURRENT], ids=["mlp ending in softmax", "conv", "lstm"])
def test_saliency_is_the_central_difference_of_the_class_score(network):
    model = float64_model(network)
    x = np.random.default_rng(1).uniform(0, 1, (1, 64))
    seen = explain.examine(model, x, versus=0)
    c = seen["predicted"]
    assert c == logits(model, x).argmax()
    assert relative_error(seen["saliency"], central_differences(model, x, {c: 1})[0]) < 1e-7
    if c != 0:
        assert relative_error(seen["contrast"], central_differences(model, x, {c: 1, 0: -1})[0]) < 1e-7
    assert model.training                                          # the mode it was in is restored


def test_saliency_is_zero_where_the_network_does_not_look():
    network = [{"class": "Linear", "n_in": 784, "n_out": 16}, {"class": "ReLU"},
               {"class": "Linear", "n_in": 16, "n_out": 10}]
    model = float64_model(network)
    region = np.zeros((28, 28), bool)
    region[10:18, 6:20] = True
    model.params["0.weight"][~region.reshape(-1)] = 0              # rows of pixels outside the region
    x = np.random.default_rng(2).uniform(0, 1, (1, 784))
    saliency = explain.examine(model, x)["saliency"].reshape(28, 28)
    assert np.all(saliency[~region] == 0) and np.count_nonzero(saliency[region]) > 0


def train_tiny(config, folder, data_dir, *more):
    """Trains `config` for one epoch on 100 images (in `folder`); returns the --set overrides that
    reach its model."""
    keys = [f"model_file={folder / 'model.pkl'}", f"data_dir={data_dir}", "dataset=mnist", "threads=1",
            "log_level=0", *more]
    overrides = [*keys, "num_epochs=1", "train_size=100", "valid_size=100", "batch_size=50", "augment=null"]
    assert main([str(config), *[a for key in overrides for a in ("--set", key)]]) == 0
    return keys


def run_explain(config, keys, device="cpu"):
    """The explain task's result for `config` with the --set `keys`, from the engine itself."""
    c = load_config(str(config), [*keys, f"device={device}"], task="explain")
    return Engine(c, Logger(0)).run()


def png_pixels(path):
    import matplotlib.image
    return matplotlib.image.imread(str(path))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda path: path.name)
def test_the_picture_shows_every_layer_of_each_shipped_config(config, tmp_path, mnist_data_dir):
    keys = train_tiny(config, tmp_path, mnist_data_dir)
    before = (tmp_path / "model.pkl").read_bytes()
    result = run_explain(config, [*keys, "explain.index=17", "explain.versus=3"])["test-17"]
    assert (tmp_path / "model.pkl").read_bytes() == before                  # nothing is saved
    names = [explain.shown_name(name) for name in load_config(str(config))["network_names"]]
    layer_titles = [title for title in result["panels"] if title.split(" ")[0] in names]
    assert [title.split(" ")[0] for title in layer_titles] == names       # each once, in network order
    if any(layer["class"] == "Conv2D" for layer in load_config(str(config))["network"]):
        assert result["panels"][-1].startswith("filters of network[1]")
    assert result["path"] == str(tmp_path / "model_plots" / "test-17.explain.png")
    assert png_pixels(result["path"])[..., :3].std() > 0.1                 # not blank


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_data_dir):
    """A small conv net trained for one epoch on 100 images: (its config, the --set keys)."""
    folder = tmp_path_factory.mktemp("explain")
    config = folder / "config.json"
    config.write_text(json.dumps({"network": TINY_CONV, "seed": 3}))
    return config, train_tiny(config, folder, mnist_data_dir)


def test_an_unreadable_input_is_an_error_line_and_the_others_go_on(trained, tmp_path, capsys, mnist):
    config, keys = trained
    sets = [a for key in keys for a in ("--set", key)]
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "digit.npy", mnist["x_test"][0].reshape(28, 28))
    np.save(tmp_path / "digit.npy", mnist["x_test"][1].reshape(28, 28))
    (tmp_path / "notes.npy").write_text("not an array")
    good, other, notes = str(tmp_path / "a" / "digit.npy"), str(tmp_path / "digit.npy"), str(tmp_path / "notes.npy")
    assert main([str(config), *sets, "--set", "log_level=1", "--task", "explain", "--input", good, notes, other]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [
        f"error: {notes}: not a .npy file (numpy.save writes them; this file is not one)",
        f"error: 1 of 3 images could not be explained: {notes}"]
    folder = pathlib.Path(keys[0].partition("=")[2]).with_suffix("").as_posix() + "_plots"
    assert f"wrote {folder}/digit.explain.png" in captured.out
    assert f"wrote {folder}/digit-2.explain.png" in captured.out     # the second digit.npy
    assert "Traceback" not in captured.err


@pytest.mark.parametrize("args,message", [
    ([], "input: nothing to explain"),
    (["--set", "explain.index=10000"], "explain.index: expected an index below 10000"),
    (["--set", "explain.index=-1"], "explain.index: expected an integer >= 0, got -1"),
    (["--set", "explain.index=0", "--set", "explain.versus=10"], "explain.versus: expected a class below 10"),
    (["--set", "explain.idx=0"], "explain.idx: unknown key; did you mean 'index'?"),
    (["--input", "missing.png"], "missing.png: no such file"),
])
def test_user_errors_are_one_line(trained, capsys, args, message):
    config, keys = trained
    sets = [a for key in keys for a in ("--set", key)]
    assert message in run_error(capsys, [str(config), *sets, "--task", "explain", *args])


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(backend, "gpu", StrictBackend)


@pytest.mark.parametrize("network", [TINY_CONV, [{"class": "Reshape", "shape": [28, 28]},
                                                 {"class": "GRU", "n_in": 28, "n_hidden": 8},
                                                 {"class": "Linear", "n_in": 8, "n_out": 10}]],
                         ids=["conv", "gru"])
def test_on_the_stand_in_for_a_gpu_it_draws_what_the_cpu_draws(network, tmp_path, mnist_data_dir, stand_in):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"network": network}))
    keys = [*train_tiny(config, tmp_path, mnist_data_dir), "explain.index=5", "explain.versus=2"]
    on_cpu, on_gpu = run_explain(config, keys)["test-5"], run_explain(config, keys, device="gpu")["test-5"]
    assert on_gpu["panels"] == on_cpu["panels"] and on_gpu["predicted"] == on_cpu["predicted"]
    assert np.allclose(on_gpu["saliency"], on_cpu["saliency"], rtol=1e-4, atol=1e-6)
