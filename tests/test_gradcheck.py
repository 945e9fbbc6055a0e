"""The gradcheck task, and a user's own layer file (from the README) used, checked, saved and loaded."""
import json
import re
import sys

import pytest

import layers
from conftest import ROOT, restored
from layers import BROKEN, discover
from main import main
from nn_module import LAYERS, LOSSES
from test_cli import run_error, write_config

README = (ROOT / "README.md").read_text()


def gradcheck_lines(capsys, config):
    """(exit status, {layer label: (error, verdict)}) of `main.py config --task gradcheck`."""
    status = main([config, "--task", "gradcheck"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("gradcheck: float64, a batch of 4")
    rows = [re.fullmatch(r"(.+?)\s+(\S+)\s+(ok|FAILED)(.*)", line).groups() for line in out[1:]]
    return status, {label: (float(error), verdict) for label, error, verdict, _ in rows}


@pytest.mark.parametrize("name", ["lstm", "gru", "cnn", "network1", "network2"])
def test_every_layer_of_the_shipped_configs_passes(name, tmp_path, capsys):
    config = json.loads((ROOT / "configs" / f"{name}.json").read_text())
    config.update(data_dir=str(tmp_path / "data"), model_file=str(tmp_path / "model.pkl"))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    status, rows = gradcheck_lines(capsys, str(path))
    assert status == 0
    layers_checked = len(config["network"]) + sum(
        spec["class"] == "BatchNorm" for spec in (config["network"].values() if isinstance(config["network"], dict)
                                                  else config["network"]))
    assert len(rows) == layers_checked + 1                         # BatchNorm twice, and the loss
    assert all(verdict == "ok" and error < 1e-6 for error, verdict in rows.values())
    assert not (tmp_path / "data").exists() and not (tmp_path / "model.pkl").exists()   # no data, no files


def test_dropout_mask_is_held_and_batchnorm_is_checked_in_both_modes(tmp_path, capsys):
    network = [{"class": "Linear", "n_in": 784, "n_out": 16}, {"class": "BatchNorm", "num_features": 16},
               {"class": "Dropout", "p": 0.5}, {"class": "Linear", "n_in": 16, "n_out": 10}]
    status, rows = gradcheck_lines(capsys, write_config(tmp_path, network=network))
    assert status == 0
    assert list(rows) == ["network[0] (Linear)", "network[1] (BatchNorm, train mode)",
                          "network[1] (BatchNorm, eval mode)", "network[2] (Dropout)", "network[3] (Linear)",
                          "loss (SoftmaxCrossEntropyLoss)"]


# ---- your own layers ------------------------------------------------------------------------

@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder that is the layers package's only one while a test runs: the layers of your own
    files in layers/ (the README's example among them, perhaps) step aside, so that the tests can
    write that example afresh; they, the registries and the modules are restored afterwards."""
    folder = tmp_path / "user_layers"
    folder.mkdir()
    with restored(layers, (LAYERS, LOSSES), BROKEN):
        monkeypatch.setattr(layers, "__path__", [str(folder)])
        for registry in (LAYERS, LOSSES):
            for name in [n for n, cls in registry.items() if cls.__module__.startswith("layers.")]:
                del registry[name]
        for name in [m for m in sys.modules if m.startswith("layers.")]:
            del sys.modules[name]
        BROKEN.clear()
        yield folder


def user_layer(folder, filename, name, body):
    """Writes folder/filename, a layer file registering `class name(NNModule)` with the given body
    (indented methods, or anything after the class), and discovers it."""
    (folder / filename).write_text("import numpy as np\nfrom nn_module import NNModule, register\n\n\n"
                                   f"@register\nclass {name}(NNModule):\n" + body)
    discover()


def failed_gradcheck(capsys, config, label):
    """The stdout of `main.py config --task gradcheck`, checked to exit 2 with the one failed layer `label`."""
    assert main([config, "--task", "gradcheck"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: gradcheck: 1 of 4 FAILED: {label}\n"
    return captured.out


def readme_layer():
    """(file name, code) of the example layer in the README."""
    return re.search(r"```python\n# layers/(\w+)\.py\n(.*?)```", README, re.S).groups()


def readme_network():
    return json.loads("{" + re.search(r'```json\n("network": \[\n  \{"class": "Linear".*?\])\n```', README,
                                      re.S).group(1) + "}")["network"]


def test_the_readme_example_layer_is_checked_trained_saved_and_loaded(user_folder, tmp_path, capsys,
                                                                      mnist_data_dir):
    name, code = readme_layer()
    (user_folder / f"{name}.py").write_text(code)
    discover()
    assert "Swish" in LAYERS and BROKEN == {}
    config = write_config(tmp_path, network=readme_network(), data_dir=str(mnist_data_dir), train_size=5000,
                          valid_size=1000, num_epochs=2, lr=0.003, optimizer={"name": "adam"}, log_level=0)
    status, rows = gradcheck_lines(capsys, config)
    assert status == 0 and rows["network[1] (Swish)"][1] == "ok"
    readme_rows = re.search(r"--task gradcheck\n(.*?)```", README, re.S).group(1).splitlines()[1:]
    assert [row.split()[0:2] for row in readme_rows] == [[*label.split()] for label in rows]
    assert main([config]) == 0                                       # trains, saves
    assert main([config, "--task", "test"]) == 0                     # loads the saved model again
    out = capsys.readouterr().out
    assert float(out.split("Test accuracy: ")[1].split("%")[0]) > 85
    assert run_error(capsys, [config, "--set", "network.1.num_features=0"]) == \
        "error: network[1].num_features: expected an integer >= 1, got 0"
    del LAYERS["Swish"]                                              # the file is gone: the model is refused
    other = '--set=network=[{"class": "Linear", "n_in": 784, "n_out": 10}]'      # a config that still checks
    assert "its network cannot be rebuilt: network[1].class: unknown module 'Swish'" in \
        run_error(capsys, [config, "--task", "test", other])


def test_a_wrong_backward_fails_gradcheck_naming_the_layer(user_folder, tmp_path, capsys):
    name, code = readme_layer()
    wrong = code.replace("return grad_y * self.s + grad_z * self.params[\"beta\"]", "return grad_y * self.s")
    assert wrong != code
    (user_folder / f"{name}.py").write_text(wrong)
    discover()
    config = write_config(tmp_path, network=readme_network())
    status, rows = gradcheck_lines(capsys, config)
    assert status == 2 and rows["network[1] (Swish)"][1] == "FAILED" and rows["network[1] (Swish)"][0] > 1e-3
    assert rows["network[0] (Linear)"][1] == "ok"
    assert run_error(capsys, [config, "--task", "gradcheck"]).endswith(
        "error: gradcheck: 1 of 4 FAILED: network[1] (Swish)")


def test_a_layer_without_backward_is_one_failed_line(user_folder, tmp_path, capsys):
    user_layer(user_folder, "half.py", "Half", "    def forward(self, x):\n        return x / 2\n")
    config = write_config(tmp_path, network=[{"class": "Half"}, *readme_network()[:1], readme_network()[2]])
    out = failed_gradcheck(capsys, config, "network[0] (Half)")
    assert re.search(r"network\[0\] \(Half\) +nan  FAILED \(NotImplementedError: Half must implement backward\(\)\)",
                     out)


def test_a_layer_whose_forward_fails_is_failed_and_the_rest_not_reached(user_folder, tmp_path, capsys):
    user_layer(user_folder, "broken.py", "Broken", "    def forward(self, x):\n        raise RuntimeError('a bug')\n")
    config = write_config(tmp_path, network=[readme_network()[0], {"class": "Broken"}, readme_network()[2]])
    out = failed_gradcheck(capsys, config, "network[1] (Broken)")
    assert re.search(r"network\[0\] \(Linear\) +\S+  ok", out), out
    assert re.search(r"network\[1\] \(Broken\) +nan  FAILED \(RuntimeError: a bug\)", out), out
    assert re.search(r"network\[2\] \(Linear\) +not reached", out), out
    assert re.search(r"loss \(\w+\) +not reached", out), out


def test_one_zero_sample_finds_every_layer_s_input_shape(user_folder, tmp_path, capsys):
    """Each layer runs the one-example probe once; its checks use batches of 4."""
    user_layer(user_folder, "count.py", "Count", "    probes = 0\n\n    def forward(self, x):\n"
                                                 "        type(self).probes += len(x) == 1\n        return x\n"
                                                 "    def backward(self, grad_y):\n        return grad_y\n")
    config = write_config(tmp_path, network=[readme_network()[0], {"class": "Count"}, readme_network()[2]])
    status, rows = gradcheck_lines(capsys, config)
    assert status == 0 and rows["network[1] (Count)"][1] == "ok"
    assert LAYERS["Count"].probes == 1


def test_a_layer_that_does_not_fit_is_one_error_line_and_no_table(user_folder, tmp_path, capsys):
    user_layer(user_folder, "picky.py", "Picky", "    def forward(self, x):\n"
                                                 "        raise ValueError('expected 3 features')\n")
    config = write_config(tmp_path, network=[readme_network()[0], {"class": "Picky"}, readme_network()[2]])
    assert main([config, "--task", "gradcheck"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("error: network[1] (Picky) does not fit: expected 3 features; "
                            "layer 0 (network[0]) gives (128,) per example\n")


def test_a_layer_that_modifies_grad_y_fails_with_the_reason(user_folder, tmp_path, capsys):
    user_layer(user_folder, "halve.py", "Halve", "    def forward(self, x):\n        return x / 2\n"
                                                 "    def backward(self, grad_y):\n        grad_y /= 2\n"
                                                 "        return grad_y\n")
    config = write_config(tmp_path, network=[{"class": "Halve"}, *readme_network()[:1], readme_network()[2]])
    out = failed_gradcheck(capsys, config, "network[0] (Halve)")
    assert re.search(r"network\[0\] \(Halve\) +\S+  FAILED \(backward modifies grad_y", out), out


def test_a_layer_that_rebinds_its_grads_fails_with_the_reason(user_folder, tmp_path, capsys):
    """Its gradients are right, but a packed model would never see them (model.py, Model.pack)."""
    user_layer(
        user_folder, "scale.py", "Scale",
        "    def __init__(self, dtype=np.float32):\n"
        "        super().__init__(dtype)\n        self.add_param('alpha', np.ones(1))\n        self.x = None\n"
        "    def forward(self, x):\n        self.x = x\n        return x * self.params['alpha']\n"
        "    def backward(self, grad_y):\n"
        "        self.grads['alpha'] = np.sum(grad_y * self.x).reshape(1)\n"
        "        return grad_y * self.params['alpha']\n")
    config = write_config(tmp_path, network=[readme_network()[0], {"class": "Scale"}, readme_network()[2]])
    out = failed_gradcheck(capsys, config, "network[1] (Scale)")
    row = re.search(r"network\[1\] \(Scale\) +(\S+)  FAILED \(backward rebinds grads\['alpha'\]; write into the "
                    r"array in place, as in self.grads\['alpha'\]\[...\] = ...\)\n", out)
    assert row and float(row.group(1)) < 1e-6                       # the numbers alone would pass
    assert re.search(r"network\[0\] \(Linear\) +\S+  ok\n", out)


def test_a_file_that_registers_a_class_and_then_fails_leaves_no_class_behind(user_folder, tmp_path, capsys):
    user_layer(user_folder, "half_done.py", "HalfDone", "    pass\n\n\nraise ImportError('a missing package')\n")
    assert "HalfDone" not in LAYERS and BROKEN["half_done"].startswith("layers/half_done.py: ImportError")
    message = run_error(capsys, [write_config(tmp_path, network=[{"class": "HalfDone"}]), "--task", "summary"])
    assert message.startswith("error: network[0].class: unknown 'HalfDone'") and "a missing package" in message


@pytest.mark.parametrize("code,reason", [
    ("def broken(:\n", "layers/mine.py line 1: SyntaxError"),
    ("from nn_module import NNModule, register\n\n\n@register\nclass Linear(NNModule):\n    pass\n",
     "layers/mine.py: ValueError: Linear is registered twice"),
])
def test_a_file_that_fails_to_import_is_named_in_one_line(user_folder, tmp_path, capsys, code, reason):
    (user_folder / "mine.py").write_text(code)
    discover()
    assert BROKEN["mine"].startswith(reason)
    assert main([write_config(tmp_path), "--task", "summary"]) == 0        # other networks are unaffected
    capsys.readouterr()
    message = run_error(capsys, [write_config(tmp_path, network=[{"class": "Mine"}]), "--task", "summary"])
    assert message.startswith("error: network[0].class: unknown 'Mine'") and reason in message
