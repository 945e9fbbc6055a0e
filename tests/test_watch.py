"""Watching a network learn (watch.py, board.py): the record changes nothing, goes on with
--resume, names the problems of networks built to fail (and none of the shipped configs'), and
reaches TensorBoard's own reader."""
import glob
import json
import os
import re
import sys
import types

import numpy as np
import pytest

import runfiles
import watch
from main import main
from model import build_trainable, evaluating
from optim import OPTIMIZERS
from engine import train_step
from utils import load_model
from strict_device import StrictBackend, tally
from test_device import interrupted_run, saved_arrays, stand_in, write_config  # noqa: F401  (a fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mlp(activation, sizes, **linear):
    """A named MLP: fc1, act1, fc2, act2, ..., fc<last>."""
    network = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:]), 1):
        network[f"fc{i}"] = {"class": "Linear", "n_in": n_in, "n_out": n_out, **linear}
        if i < len(sizes) - 1:
            network[f"act{i}"] = {"class": activation}
    return network


def trained_diagnosis(tmp_path, mnist_data_dir, capsys, name, **keys):
    """The lines that training with watch printed, and the saved record."""
    config = write_config(tmp_path, mnist_data_dir, name, **{
        "augment": None, "clip_grad_norm": None, "train_size": 2000, "num_epochs": 2, "watch": {"every": 5},
        "optimizer": {"name": "sgd"}, "loss": "SoftmaxCrossEntropyLoss", **keys})
    capsys.readouterr()
    assert main([config]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    return lines, runfiles.read_watch(str(tmp_path / f"{name}.pkl"), None)


def test_a_deep_sigmoid_network_has_vanishing_gradients(tmp_path, mnist_data_dir, capsys):
    lines, _ = trained_diagnosis(tmp_path, mnist_data_dir, capsys, "sigmoid", batch_size=10, lr=0.1,
                                 network=mlp("Sigmoid", [784] + [30] * 6 + [10], init="xavier"))
    assert any(line.startswith("warning: fc1.weight: its gradients are") and "vanishing" in line for line in lines), lines


def test_a_relu_network_with_an_lr_far_too_high_is_told_so(tmp_path, mnist_data_dir, capsys):
    lines, _ = trained_diagnosis(tmp_path, mnist_data_dir, capsys, "relu", lr=1.0,
                                 network=mlp("ReLU", [784, 100, 100, 10]))
    assert any(line.startswith("warning: act1: ") and "(dead ReLUs): try a lower lr" in line for line in lines), lines
    assert not any("vanishing" in line or "too low" in line for line in lines), lines


def test_a_diverging_watched_run_ends_in_one_error_line(tmp_path, mnist_data_dir, capsys):
    config = write_config(tmp_path, mnist_data_dir, "diverged", network=mlp("ReLU", [784, 30, 10]), lr=1e20,
                          loss="SoftmaxCrossEntropyLoss", augment=None,
                          optimizer={"name": "sgd"}, clip_grad_norm=None, watch={"every": 1})
    capsys.readouterr()
    assert main([config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged at epoch 1, batch ") and err.count("\n") == 1, err
    assert "no model was saved yet" in err and not os.path.exists(tmp_path / "diverged.pkl")


def test_the_watch_task_counts_the_records_as_they_were_made(tmp_path, mnist_data_dir, capsys):
    """Resumed with another watch.every, the record says both spacings (12 batches an epoch)."""
    config = write_config(tmp_path, mnist_data_dir, "spaced", num_epochs=1, watch={"every": 4})
    assert main([config]) == 0
    assert main([config, "--resume", "--set", "num_epochs=2", "--set", "watch.every=6"]) == 0
    capsys.readouterr()
    assert main([config, "--task", "watch"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("spaced.watch.json: 5 records of 10 layers, every 4 to 6 batches, 2 epochs"), first


def test_a_fresh_run_without_watch_removes_an_earlier_record(tmp_path, mnist_data_dir):
    config = write_config(tmp_path, mnist_data_dir, "again", num_epochs=1, watch={"every": 4})
    assert main([config]) == 0 and os.path.exists(runfiles.watch_path(str(tmp_path / "again.pkl")))
    assert main([config, "--set", "watch=null"]) == 0
    assert not os.path.exists(runfiles.watch_path(str(tmp_path / "again.pkl")))


def test_a_conv_layer_is_dead_by_channels_and_a_dense_one_by_units():
    """A channel that is 0 on the border only is alive; one 0 everywhere is dead."""
    y = np.ones((5, 4, 6, 6))
    y[:, :, 0, :] = 0                                  # every channel: the top row black
    y[:, 1] = 0                                        # channel 1: black everywhere
    y[:4, 2] = 0                                       # channel 2: alive in one example
    assert watch.dead_fraction(y) == 0.25
    dense = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    assert watch.dead_fraction(dense) == pytest.approx(1 / 3)


def test_a_histogram_leaves_out_what_is_not_finite():
    low, high, counts = watch.histogram(np.array([1.0, np.nan, np.inf, 3.0, -np.inf], dtype=np.float32))
    assert (float(low), float(high)) == (1.0, 3.0) and counts.sum() == 2 and counts[0] == counts[-1] == 1
    low, high, counts = watch.histogram(np.full(4, np.nan))
    assert (low, high) == (np.inf, -np.inf) and counts.sum() == 0


def test_a_tanh_network_with_weights_scaled_up_is_saturated(tmp_path, mnist_data_dir, capsys):
    lines, _ = trained_diagnosis(tmp_path, mnist_data_dir, capsys, "tanh", lr=0.01,
                                 network=mlp("Tanh", [784, 100, 100, 10], init="normal", std=1.0))
    assert any(line.startswith("warning: act1: ") and "saturated" in line for line in lines), lines


SHIPPED = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.json")) if "tune" not in os.path.basename(p))


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_the_shipped_configs_give_no_false_alarm(path, tmp_path, mnist, mnist_data_dir, capsys):
    """Each shipped network, watched for two epochs on 3,000 MNIST images at its own lr,
    optimizer and schedule, reports only what is true. The conv nets' dense ReLU does lose most
    of its units in the first steps; each such line is checked against 1,000 other images,
    on which the trained model's units must be off for every image, as many as reported."""
    shipped = json.load(open(path))
    shipped["dataset"] = "mnist"                  # the same networks; MNIST is at hand in every test run
    shipped.update(data_dir=str(mnist_data_dir), model_file=str(tmp_path / "m.pkl"), log_level=0, num_epochs=2,
                   train_size=3000, valid_size=1000, watch={"every": 3}, plot_dir=None)
    config = tmp_path / "c.json"
    config.write_text(json.dumps(shipped))
    capsys.readouterr()
    assert main([str(config)]) == 0
    lines = capsys.readouterr().err.splitlines()
    record = runfiles.read_watch(str(tmp_path / "m.pkl"), None)
    steps = 2 * -(-3000 // shipped.get("batch_size", 100))
    assert len(record["records"]) == -(-steps // 3)
    names = [entry["name"] for entry in record["layout"]]
    model, _ = load_model(str(tmp_path / "m.pkl"))
    x = mnist["x_train"][-1000:].astype(np.float32)
    for line in lines:
        match = re.fullmatch(r"warning: (\S+): (\d+)% of its units gave 0 for every example .* \(dead ReLUs\).*", line)
        assert match, line                                                 # dead ReLUs are the only finding
        layer, reported = names.index(match[1]), int(match[2]) / 100
        with evaluating(model):
            for i in range(layer + 1):
                x = model.layers[i].forward(x)
        assert watch.dead_fraction(x) > reported - 0.15, line


def test_recording_changes_nothing_on_threads(tmp_path, mnist_data_dir):
    plain = write_config(tmp_path, mnist_data_dir, "plain", threads=2)
    watched = write_config(tmp_path, mnist_data_dir, "watched", threads=2, watch={"every": 2})
    assert main([plain]) == 0 and main([watched]) == 0
    a, b = saved_arrays(tmp_path / "plain.pkl"), saved_arrays(tmp_path / "watched.pkl")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    record = runfiles.read_watch(str(tmp_path / "watched.pkl"), None)
    assert [r["step"] for r in record["records"]] == list(range(0, 24, 2))     # 2 epochs of 12 batches
    assert [entry["type"] for entry in record["layout"]][:3] == ["Reshape", "Conv2D", "BatchNorm"]


def test_recording_changes_nothing_on_the_stand_in(tmp_path, mnist_data_dir, stand_in):
    plain = write_config(tmp_path, mnist_data_dir, "plain")
    watched = write_config(tmp_path, mnist_data_dir, "watched", watch={"every": 3})
    assert main([plain, "--device", "gpu"]) == 0 and main([watched, "--device", "gpu"]) == 0
    a, b = saved_arrays(tmp_path / "plain.pkl"), saved_arrays(tmp_path / "watched.pkl")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_record_costs_one_copy_to_the_host(stand_in):
    network = json.load(open(os.path.join(ROOT, "configs", "cnn.json")))["network"]
    model, loss = build_trainable(network, "SoftmaxCrossEntropyLoss", np.float32, np.random.default_rng(0))
    device = StrictBackend()
    device.place(model, device.random(np.random.default_rng(2)), 1).pack()
    rng = np.random.default_rng(1)
    x, y = device.to_device(rng.random((8, 784), dtype=np.float32)), device.to_device(rng.integers(0, 10, 8))
    watcher = watch.Watcher(model, 1, 1, [])
    optimizer = device.place_optimizer(OPTIMIZERS["momentum"](lr=0.05))
    tally.clear()
    look = watcher.look(loss, x, y)
    value, _ = train_step(model, loss, optimizer, x, y)
    watcher.keep(look, 0, 1, 1, 0.05, value)
    assert tally["host copies"] == 1                   # look, step and keep together: the record's one copy
    assert len(watcher.records) == 1 and len(watcher.records[0]["layers"]) == len(network)


def test_the_record_goes_on_with_resume(tmp_path, mnist_data_dir, monkeypatch):
    whole = write_config(tmp_path, mnist_data_dir, "whole", watch={"every": 2})
    cut = write_config(tmp_path, mnist_data_dir, "cut", watch={"every": 2})
    assert main([whole]) == 0
    assert interrupted_run(monkeypatch, [cut]) == 130
    assert main([cut, "--resume"]) == 0
    a = runfiles.read_watch(str(tmp_path / "whole.pkl"), None)
    b = runfiles.read_watch(str(tmp_path / "cut.pkl"), None)
    assert a == b and len(a["records"]) == 12


def test_a_histogram_counts_every_value_in_its_range():
    a = np.linspace(-1, 2, 300, dtype=np.float32).reshape(10, 30)
    low, high, counts = watch.histogram(a)
    assert (float(low), float(high)) == (-1.0, 2.0)
    assert counts.sum() == 300 and (counts == 10).all()
    big = np.random.default_rng(0).normal(size=watch.SAMPLE * 3 + 5)
    assert watch.histogram(big)[2].sum() <= watch.SAMPLE


def test_tensorboard_shows_the_run(tmp_path, mnist_data_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    config = write_config(tmp_path, mnist_data_dir, "board", watch={"every": 4}, tensorboard=str(tmp_path / "runs"))
    assert main([config]) == 0
    events = EventAccumulator(str(tmp_path / "runs" / "board"), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    history = json.load(open(tmp_path / "board.history.json"))
    accuracy = [event.value for event in events.Scalars("epoch/valid_accuracy")]
    np.testing.assert_allclose(accuracy, [r["valid_accuracy"] for r in history], rtol=1e-6)
    assert len(events.Scalars("train/loss")) == 24                               # every batch
    assert "network[1]/weight" in tags["histograms"] and "network[1]/weight_grad" in tags["histograms"]
    histogram = events.Histograms("network[1]/output")[0].histogram_value
    assert histogram.num > 0 and histogram.min < histogram.max
    assert [event.step for event in events.Histograms("network[2]/gamma_grad")] == [0, 4, 8, 12, 16, 20]


def test_a_fresh_run_replaces_the_earlier_runs_events(tmp_path, mnist_data_dir, monkeypatch):
    """Run twice, TensorBoard shows the second run alone, not two runs drawn over each other;
    even when both runs open their files in the same second, which names the file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboardX import event_file_writer
    monkeypatch.setattr(event_file_writer, "time", types.SimpleNamespace(time=lambda: 1.8e9))
    config = write_config(tmp_path, mnist_data_dir, "board", tensorboard=str(tmp_path / "runs"))
    assert main([config]) == 0 and main([config, "--set", "seed=2"]) == 0
    folder = tmp_path / "runs" / "board"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    history = json.load(open(tmp_path / "board.history.json"))                   # the second run's
    assert [event.step for event in events.Scalars("train/loss")] == list(range(24))
    np.testing.assert_allclose([event.value for event in events.Scalars("epoch/train_loss")],
                               [r["train_loss"] for r in history], rtol=1e-6)
    assert main([config, "--resume", "--set", "seed=2", "--set", "num_epochs=3"]) == 0   # adds its own file
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == list(range(36))


def test_tensorboard_without_its_package_or_folder_is_one_error_line(tmp_path, mnist_data_dir, capsys, monkeypatch):
    (tmp_path / "a_file").write_text("")
    config = write_config(tmp_path, mnist_data_dir, "board", tensorboard=str(tmp_path / "a_file"))
    assert main([config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: tensorboard: cannot write") and err.count("\n") == 1, err
    monkeypatch.setitem(sys.modules, "tensorboardX", None)                        # as if not installed
    assert main([config]) == 2
    assert capsys.readouterr().err.startswith("error: tensorboard: writing TensorBoard's files needs the tensorboardX")
    assert not (tmp_path / "board.pkl").exists()


def test_plot_draws_the_record(tmp_path, mnist_data_dir, capsys):
    import matplotlib.image
    config = write_config(tmp_path, mnist_data_dir, "watched", watch={"every": 3})
    assert main([config]) == 0 and main([config, "--task", "plot", "--set", f"plot_dir={tmp_path / 'plots'}"]) == 0
    out = capsys.readouterr().out
    for name in ("watch_gradients", "watch_updates", "watch_outputs", "watch_dead"):
        path = tmp_path / "plots" / f"{name}.png"
        assert f"wrote {path}" in out
        assert matplotlib.image.imread(str(path))[..., :3].var() > 1e-3, name      # not a blank picture


def test_the_initial_weights_are_those_training_started_from(tmp_path, mnist_data_dir):
    """The first-layer picture's 'change since initialisation' rebuilds the initial weights from
    the seed: a run whose steps are too small to move a float32 weight must end at them."""
    import tasks
    from engine import Engine
    from config import load_config
    from log import Logger
    network = mlp("ReLU", [784, 30, 10])
    config = write_config(tmp_path, mnist_data_dir, "still", network=network, loss="SoftmaxCrossEntropyLoss",
                          optimizer={"name": "sgd"}, lr=1e-30, augment=None, clip_grad_norm=None, seed=7)
    assert main([config]) == 0
    model, _ = load_model(str(tmp_path / "still.pkl"))
    weight = model.layers[0].params["weight"]
    for changes in ([], ["seed=8"]):                   # the model file's seed, whatever the config says now
        engine = Engine(load_config(config, changes), Logger(0))
        tasks.load_trained(engine)
        assert np.array_equal(tasks.initial_first_layer(engine, weight), weight)
    layers = load_config(config)["network"]            # another seed would have drawn other weights
    other = build_trainable(layers, "SoftmaxCrossEntropyLoss", np.float32, np.random.default_rng(8))[0]
    assert not np.array_equal(other.layers[0].params["weight"], weight)
