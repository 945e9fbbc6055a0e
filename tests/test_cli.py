"""main.py end to end: bad input gives one `error:` line and exit 2; a small real run trains and tests."""
import io
import json
import math
import pickle
import re
import sys

import numpy as np
import pytest

from conftest import mnist_mirror
from main import main

SMALL_NET = [{"class": "Linear", "n_in": 784, "n_out": 32}, {"class": "ReLU"},
             {"class": "Linear", "n_in": 32, "n_out": 10}]


def write_config(tmp_path, **keys):
    config = {"network": SMALL_NET, "data_dir": str(tmp_path / "data"),
              "model_file": str(tmp_path / "model.pkl"), **keys}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def run_error(capsys, argv):
    """Runs main(argv), expecting exit status 2 and exactly one stderr line; returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err.strip()


@pytest.mark.parametrize("keys,message", [
    ({"lrr": 0.1}, "error: lrr: unknown key; did you mean 'lr'?"),
    ({"lr": -1}, "error: lr: expected a number in (0, inf), got -1"),
    ({"lr": "fast"}, "error: lr: expected a number in (0, inf), got 'fast'"),
    ({"batch_size": 0}, "error: batch_size: expected an integer >= 1, got 0"),
    ({"num_epochs": 2.5}, "error: num_epochs: expected an integer >= 1, got 2.5"),
    ({"num_epochs": True}, "error: num_epochs: expected an integer >= 1, got true"),
    ({"log_level": 7}, "error: log_level: expected an integer in [0, 3], got 7"),
    ({"task": "tran"}, "error: task: unknown 'tran'; did you mean 'train'?"),
    ({"dataset": "cifar"}, "error: dataset: unknown 'cifar'"),
    ({"loss": "MSE"}, "error: loss: unknown 'MSE'; did you mean 'MSELoss'?"),
    ({"optimizer": {"name": "adamm"}}, "error: optimizer.name: unknown 'adamm'"),
    ({"optimizer": {"name": "sgd", "momentun": 0.9}}, "error: optimizer.momentun: unknown argument of SGD; "
                                                      "did you mean 'momentum'?"),
    ({"optimizer": {"name": "momentum", "momentum": 1.5}}, "error: optimizer.momentum: expected a number in [0, 1)"),
    ({"optimizer": {"name": "adam", "decay_biases": "no"}},
     "error: optimizer.decay_biases: expected true or false, got 'no'"),
    ({"network": []}, "error: network: expected at least one layer"),
    ({"network": [{"class": "Lineer", "n_in": 784, "n_out": 10}]},
     "error: network[0].class: unknown 'Lineer'; did you mean 'Linear'?"),
    ({"network": [{"class": "Linear", "n_in": 784}]}, "error: network[0].n_out: missing (required by Linear)"),
    ({"network": [{"class": "Linear", "n_in": 784, "n_out": 10, "units": 3}]},
     "error: network[0].units: unknown argument of Linear"),
    ({"network": [{"class": "Linear", "n_in": 784, "n_out": 0}]},
     "error: network[0].n_out: expected an integer >= 1, got 0"),
    ({"network": {"fc": {"class": "Linear", "n_in": 784, "n_out": 10}, "act": {"n": 1}}},
     "error: network.act: missing \"class\""),
    ({"network": SMALL_NET[:1] + [{"class": "Linear", "n_in": 64, "n_out": 10}]},
     "error: network[1] (Linear) does not fit: expected (N, 64) inputs, got (N, 32); layer 0 (network[0])"),
    ({"network": [{"class": "Linear", "n_in": 100, "n_out": 10}]},
     "error: network[0] (Linear) does not fit: expected (N, 100) inputs, got (N, 784); the data gives"),
    ({"network": [{"class": "Linear", "n_in": 784, "n_out": 7}]},
     "error: network: the last layer gives (7,) per example, but mnist has 10 classes"),
    ({"network": [{"class": ["Linear"], "n_in": 784, "n_out": 10}]}, "error: network[0].class: unknown ['Linear']"),
    ({"loss": "CrossEntropyLoss"}, "error: loss: CrossEntropyLoss takes probabilities, but the network ends in Linear"),
    ({"network": SMALL_NET + [{"class": "Softmax"}]},
     "error: loss: SoftmaxCrossEntropyLoss applies the softmax itself, but the network already ends in Softmax"),
    ({"network": SMALL_NET + [{"class": "Sigmoid"}], "loss": "SigmoidCrossEntropyLoss"},
     "error: loss: SigmoidCrossEntropyLoss applies the sigmoid itself, but the network already ends in Sigmoid"),
])
def test_config_errors(tmp_path, capsys, keys, message):
    assert run_error(capsys, [write_config(tmp_path, **keys)]).startswith(message)
    assert not (tmp_path / "data").exists()          # rejected before any download


def test_config_file_errors(tmp_path, capsys):
    assert "no such file" in run_error(capsys, [str(tmp_path / "missing.json")]).lower()
    assert "is a folder" in run_error(capsys, [str(tmp_path)])
    (tmp_path / "empty.json").write_text("  \n")
    assert "the file is empty" in run_error(capsys, [str(tmp_path / "empty.json")])
    (tmp_path / "bad.json").write_text('{"lr": 0.1,\n "seed": }')
    assert "not valid JSON: Expecting value at line 2 column 10" in run_error(capsys, [str(tmp_path / "bad.json")])
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "expected a JSON object at the top, got list" in run_error(capsys, [str(tmp_path / "list.json")])


@pytest.mark.parametrize("argv,message", [
    (["--set", "lr"], "error: --set lr: expected KEY=VALUE"),
    (["--set", "lrr=0.1"], "error: lrr: unknown key; did you mean 'lr'?"),
    (["--set", "lr=abc"], "error: lr: expected a number in (0, inf), got 'abc'"),
    (["--set", "network.5.n_out=3"], "error: --set network.5.n_out=3: network.5: expected a list index below 3"),
    (["--set", "lr.x=1"], "error: --set lr.x=1: lr is 0.1, not an object or list"),
    (["--set", "network.\u00b2.n_out=3"], "error: --set network.\u00b2.n_out=3: network.\u00b2: expected a list index"),
    (["--task", "fly"], "error: argument --task: invalid choice: 'fly'"),
    (["--bogus"], "error: unrecognized arguments: --bogus"),
])
def test_option_errors(tmp_path, capsys, argv, message):
    assert run_error(capsys, [write_config(tmp_path, lr=0.1)] + argv).startswith(message)


def test_missing_model_file(tmp_path, capsys):
    message = run_error(capsys, [write_config(tmp_path), "--task", "test"])
    assert "cannot read model file" in message and "train first" in message


def test_help_states_every_default(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--task", "--set", "--verbose", "--quiet"):
        assert option in text
    assert text.count("default") >= 4


def test_set_reaches_nested_keys(tmp_path):
    from config import load_config
    config = load_config(write_config(tmp_path, optimizer={"name": "momentum"}),
                         ["optimizer.momentum=0.8", "network.0.n_out=48", "network.2.n_in=48", "seed=7",
                          'network=[{"class": "Linear", "n_in": 784, "n_out": 10}]', "data_dir=some where"])
    assert config["optimizer"] == {"name": "momentum", "momentum": 0.8}
    assert config["network"] == [{"class": "Linear", "n_in": 784, "n_out": 10}]
    assert config["seed"] == 7 and config["data_dir"] == "some where"


def test_train_then_test_on_real_mnist(tmp_path, capsys, monkeypatch, mnist_data_dir):
    monkeypatch.setenv("NNFS_MIRROR", mnist_mirror())
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=6000, valid_size=1000,
                          num_epochs=3, lr=0.1, optimizer={"name": "momentum"}, log_level=0,
                          network=SMALL_NET + [{"class": "Softmax"}], loss="CrossEntropyLoss")
    assert main([config]) == 0
    history = json.loads((tmp_path / "model.history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[-1]["valid_accuracy"] > 0.9
    capsys.readouterr()
    assert main([config, "--task", "test"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Number of errors: ") and lines[0].endswith("/10000")
    errors = int(lines[0].split()[-1].split("/")[0])
    assert lines[1] == f"Error Rate: {errors / 100:.2f}%"
    assert lines[2] == f"Test accuracy: {100 - errors / 100:.2f}%"
    assert errors < 1000                               # above 90% after 3 epochs on 6,000 images
    with open(tmp_path / "model.pkl", "rb") as f:
        saved = pickle.load(f)
    assert all(v.dtype == np.float32 for v in saved["params"].values())


def test_same_seed_same_weights(tmp_path, mnist_data_dir):
    weights = []
    for run in ("a", "b"):
        folder = tmp_path / run
        folder.mkdir()
        config = write_config(folder, data_dir=str(mnist_data_dir), train_size=2000, valid_size=500,
                              num_epochs=2, log_level=0, seed=3)
        assert main([config]) == 0
        with open(folder / "model.pkl", "rb") as f:
            weights.append(pickle.load(f)["params"])
    assert all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_small_conv_net_trains_on_real_mnist(tmp_path, capsys, mnist_data_dir):
    network = [{"class": "Reshape", "shape": [1, 28, 28]},
               {"class": "Conv2D", "in_channels": 1, "out_channels": 8, "kernel_size": 3, "padding": 1},
               {"class": "BatchNorm", "num_features": 8}, {"class": "ReLU"}, {"class": "MaxPool2D", "kernel_size": 2},
               {"class": "Flatten"}, {"class": "Dropout", "p": 0.1}, {"class": "Linear", "n_in": 1568, "n_out": 10}]
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=4000, valid_size=1000, num_epochs=2,
                          lr=0.002, optimizer={"name": "adam"}, log_level=0, network=network)
    assert main([config]) == 0
    assert main([config, "--task", "test"]) == 0
    errors = int(capsys.readouterr().out.splitlines()[0].split()[-1].split("/")[0])
    assert errors < 1200                               # above 88% after 2 epochs on 4,000 images


@pytest.mark.parametrize("keys,message", [
    ({"learning_rate": 0.1}, "error: learning_rate: unknown key; did you mean 'lr'?"),
    ({"epochs": 3}, "error: epochs: unknown key; did you mean 'num_epochs'?"),
    ({"batch": 32}, "error: batch: unknown key; did you mean 'batch_size'?"),
    ({"momentum": 0.9}, "error: momentum: unknown key; did you mean 'optimizer.momentum'?"),
    ({"LR": 0.1}, "error: LR: unknown key; did you mean 'lr'?"),
    ({"network": [{"class": "Relu"}]}, "error: network[0].class: unknown 'Relu'; did you mean 'ReLU'?"),
    ({"network": [{"class": "linear", "n_in": 784, "n_out": 10}]},
     "error: network[0].class: unknown 'linear'; did you mean 'Linear'?"),
    ({"network": [{"class": "Linear", "n_in": 784, "units": 10}]},
     "error: network[0].units: unknown argument of Linear; did you mean 'n_out'?"),
    ({"optimizer": {"name": "Adam"}}, "error: optimizer.name: unknown 'Adam'; did you mean 'adam'?"),
    ({"optimizer": {"name": "adam", "learning_rate": 0.1}},
     "error: optimizer.learning_rate: set the learning rate with the top-level key 'lr'"),
])
def test_hints_know_other_tools_names_and_letter_case(tmp_path, capsys, keys, message):
    assert run_error(capsys, [write_config(tmp_path, **keys)]).startswith(message)


def test_set_on_named_layers_names_the_layers(tmp_path, capsys):
    config = write_config(tmp_path, network={"fc1": SMALL_NET[0], "act": SMALL_NET[1], "fc2": SMALL_NET[2]})
    assert run_error(capsys, [config, "--set", "network.0.n_out=512"]) == \
        "error: --set network.0.n_out=512: the network has no layer '0' (its layers: fc1, act, fc2)"
    assert main([config, "--task", "summary", "--set", "network.fc1.n_out=48", "--set", "network.fc2.n_in=48"]) == 0
    assert "n_out=48" in capsys.readouterr().out


def test_options_may_come_before_the_config_even_after_input(tmp_path, capsys):
    config = write_config(tmp_path)
    assert main(["--task", "summary", "-q", config]) == 0
    assert "Total params: 25,450" in capsys.readouterr().out
    assert main(["--task", "summary", "--input", "a.png", "b.png", config]) == 0
    assert "Total params: 25,450" in capsys.readouterr().out
    assert run_error(capsys, ["--task", "summary", "--input", "a.png"]) == \
        "error: no config file given (usage: main.py CONFIG.json [options], see --help)"


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_progress_bar_on_a_terminal_plain_lines_elsewhere(tmp_path, monkeypatch, mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=2000, valid_size=500, num_epochs=1)
    outputs = {}
    for name, stream, options in (("terminal", Terminal(), []), ("pipe", io.StringIO(), []),
                                  ("pipe -v", io.StringIO(), ["-v"])):
        monkeypatch.setattr(sys, "stdout", stream)
        assert main([config, *options]) == 0
        outputs[name] = stream.getvalue()
    monkeypatch.undo()
    bar = re.search(r"\r20/20 \[={30}\] loss \d\.\d{4} acc (\d+\.\d\d)% \d+ ex/s eta 0s\x1b\[K", outputs["terminal"])
    assert bar, outputs["terminal"]
    epoch = re.search(r"\r\x1b\[Kepoch 1/1  train \(running\) loss \d\.\d{4} acc (\d+\.\d\d)%  valid",
                      outputs["terminal"])
    assert epoch and epoch[1] == bar[1]                          # the bar's accuracy, as the epoch line prints it
    assert "\r" not in outputs["pipe"] and "20/20" not in outputs["pipe"]
    lines = [line for line in outputs["pipe -v"].splitlines() if re.match(r"\d+/20 ", line)]
    assert [line.split()[0] for line in lines] == ["5/20", "10/20", "15/20", "20/20"]
    assert re.fullmatch(r"20/20 loss \d\.\d{4} acc " + re.escape(bar[1]) + r"% \d+ ex/s eta 0s", lines[-1])
    assert "\r" not in outputs["pipe -v"]


def test_a_loss_that_explodes_is_reported_while_finite(tmp_path, capsys, mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=2000, valid_size=500, num_epochs=1,
                          lr=20, log_level=0)
    assert main([config]) == 0
    warnings = capsys.readouterr().err.splitlines()
    assert len(warnings) == 1, warnings                          # once a run, not once a batch
    found = re.fullmatch(r"warning: the loss is exploding: (\S+) at epoch 1, batch (\d+), (\d+) times the first "
                         r"batch's (\S+) \(try a lower lr than 20\)", warnings[0])
    assert found and float(found[1]) > 10 * float(found[4]) and math.isfinite(float(found[1]))
