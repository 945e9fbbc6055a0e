"""Faults: unsafe model files, divergence, interrupts and resume, kills during a save, random input."""
import contextlib
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import datasets.mnist
import engine
from conftest import ROOT
from errors import DataError
from main import main
from model import build_model
from test_cli import SMALL_NET, run_error, write_config
from utils import load_model, save_model


class Exploit:
    """A pickle that calls `func(*args)` when loaded."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", [
    lambda marker: Exploit(os.system, f"touch {marker}"),
    lambda marker: Exploit(eval, f"open({str(marker)!r}, 'w')"),
    lambda marker: Exploit(exec, f"open({str(marker)!r}, 'w')"),
    lambda marker: {"format": 1, "config": {}, "params": {"w": Exploit(subprocess.call, ["touch", str(marker)])},
                    "state": {}},
])
def test_malicious_model_files_are_refused_and_never_run(tmp_path, capsys, make):
    marker = tmp_path / "owned"
    model_file = tmp_path / "model.pkl"
    model_file.write_bytes(pickle.dumps(make(marker)))
    message = run_error(capsys, [write_config(tmp_path), "--task", "test"])
    assert "refused to load" in message and "which a model file never needs" in message
    assert not marker.exists()


@pytest.mark.parametrize("content,message", [
    (b"not a pickle at all", "not a model file"),
    (pickle.dumps({"some": "dict"}), "not a model file of this project"),
    (pickle.dumps({"format": 99, "config": {}, "params": {}, "state": {}}), "model file format 99, this version "
                                                                             "reads format 1"),
])
def test_foreign_model_files(tmp_path, capsys, content, message):
    (tmp_path / "model.pkl").write_bytes(content)
    assert message in run_error(capsys, [write_config(tmp_path), "--task", "test"])


def test_model_with_wrong_shapes_lists_every_problem(tmp_path, capsys):
    model = build_model(SMALL_NET)
    from config import load_config
    config = load_config(write_config(tmp_path))
    save_model(str(tmp_path / "model.pkl"), model, {**config, "network": [
        {"class": "Linear", "n_in": 784, "n_out": 16}, {"class": "ReLU"}, {"class": "Linear", "n_in": 16, "n_out": 10}]})
    message = run_error(capsys, [write_config(tmp_path), "--task", "test"])
    assert "0.weight has shape (784, 32), expected (784, 16)" in message
    assert "2.weight has shape (32, 10), expected (16, 10)" in message


def test_divergence_stops_and_keeps_the_best_model(tmp_path, capsys, mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=2000, valid_size=500,
                          num_epochs=1, log_level=0)
    assert main([config]) == 0
    before = (tmp_path / "model.pkl").read_bytes()
    message = run_error(capsys, [config, "--set", "lr=1e30", "--set", "num_epochs=3"])
    assert message.startswith("error: training diverged at epoch 1, batch ")
    assert "try a lower lr than 1e+30" in message
    assert (tmp_path / "model.pkl").read_bytes() == before
    load_model(str(tmp_path / "model.pkl"))


def test_unwritable_model_file_and_log_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "model_file: cannot create folder" in run_error(
        capsys, [write_config(tmp_path), "--set", f"model_file={blocker}/model.pkl"])
    assert "log_file: cannot open" in run_error(capsys, [write_config(tmp_path), "--set", f"log_file={tmp_path}"])


def run_training(config, *extra):
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), config, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_then_resume_equals_an_uninterrupted_run(tmp_path, mnist_data_dir, signum):
    keys = dict(data_dir=str(mnist_data_dir), train_size=20000, valid_size=0, num_epochs=4, seed=5, lr=0.05,
                optimizer={"name": "momentum"}, log_level=1,
                network=SMALL_NET[:2] + [{"class": "Dropout", "p": 0.2}] + SMALL_NET[2:])
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, interrupted = write_config(tmp_path / "a", **keys), write_config(tmp_path / "b", **keys)
    assert main([straight, "-q"]) == 0

    process = run_training(interrupted)
    history = tmp_path / "b" / "model.history.json"
    deadline = time.monotonic() + 60
    while not history.exists() and time.monotonic() < deadline:      # interrupt inside epoch 2 or later
        time.sleep(0.02)
    process.send_signal(signum)
    sent = time.monotonic()
    out, err = process.communicate(timeout=30)
    assert time.monotonic() - sent < 5
    assert process.returncode == 130, err
    assert "checkpoint saved to" in err and "--resume" in err
    assert (tmp_path / "b" / "model.ckpt").exists()

    resumed = run_training(interrupted, "--resume")
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "resuming at epoch" in out
    a, b = load_model(str(tmp_path / "a" / "model.pkl"))[0], load_model(str(tmp_path / "b" / "model.pkl"))[0]
    for name in a.params:
        assert np.array_equal(a.params[name], b.params[name]), name
    assert [h["epoch"] for h in json.loads(history.read_text())] == [1, 2, 3, 4]


def test_resume_without_checkpoint_or_for_another_task(tmp_path, capsys):
    assert "nothing to resume" in run_error(capsys, [write_config(tmp_path), "--resume"])
    assert "only the train task can resume" in run_error(capsys, [write_config(tmp_path), "--resume",
                                                                  "--task", "test"])


def test_a_checkpoint_is_never_buried_or_confused_with_a_model(tmp_path, capsys):
    config = write_config(tmp_path)
    model = build_model(SMALL_NET)
    from config import load_config
    save_model(str(tmp_path / "model.ckpt"), model, load_config(config))       # a model file, not a checkpoint
    assert "holds an interrupted run: continue it with --resume" in run_error(capsys, [config])
    assert "not a checkpoint" in run_error(capsys, [config, "--resume"])


@pytest.mark.parametrize("params", [[1, 2], {"0.weight": np.array(["a", "b"])}, {"0.weight": 3.0}])
def test_damaged_model_arrays_are_refused(tmp_path, capsys, params):
    payload = {"format": 1, "config": {"network": SMALL_NET}, "params": params, "state": {}}
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(payload))
    assert "a damaged model file" in run_error(capsys, [write_config(tmp_path), "--task", "test"])


KILL_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import numpy as np
from model import build_model
from utils import save_model
model = build_model([{{"class": "Linear", "n_in": 784, "n_out": 2048}}])
config = {{"network": [{{"class": "Linear", "n_in": 784, "n_out": 2048}}], "dtype": "float32",
          "network_names": ["network[0]"]}}
print("ready", flush=True)
i = 0
while True:
    i += 1
    model.params["0.bias"][...] = i
    save_model({path!r}, model, config)
"""


def test_sigkill_during_saves_leaves_a_loadable_model(tmp_path):
    path = str(tmp_path / "model.pkl")
    script = KILL_SCRIPT.format(root=str(ROOT), path=path)
    rng = np.random.default_rng(0)
    for _ in range(5):
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "ready\n"
        time.sleep(0.1 + rng.random() * 0.4)
        process.kill()
        process.wait()
        model, _ = load_model(path)                    # the old file or the new one, never half of one
        bias = model.params["0.bias"]
        assert bias.min() == bias.max() >= 1


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-5, 50) | st.floats(allow_nan=False)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
KEYS = st.sampled_from(["task", "dataset", "lr", "batch_size", "num_epochs", "optimizer", "network", "loss",
                        "seed", "log_level", "valid_size", "patience", "schedule", "decay_rate", "dtype",
                        "clip_grad_norm", "bogus", "train_size", "warmup_epochs"])
LAYER = st.fixed_dictionaries({"class": st.sampled_from(["Linear", "ReLU", "Conv2D", "Dropout", "BatchNorm",
                                                          "Reshape", "MaxPool2D", "Softmax", "Flatten", "Nope"])},
                              optional={"n_in": st.integers(-2, 800), "n_out": st.integers(-2, 20),
                                        "p": JSON_VALUES, "num_features": st.integers(-1, 40),
                                        "shape": JSON_VALUES, "kernel_size": st.integers(-1, 40),
                                        "in_channels": st.integers(-1, 3), "out_channels": st.integers(-1, 3),
                                        "stride": JSON_VALUES, "padding": st.integers(-1, 3), "x": JSON_VALUES})
OPTIONS = st.lists(st.sampled_from(["--set", "--task", "-v", "-q", "--resume", "lr=0.1", "train", "test",
                                    "lr", "=", "network.0.n_in=3", "optimizer.name=adam", "--nope",
                                    "seed=-1", 'network=[{"class": "ReLU"}]', "x.y.z=1"]), max_size=5)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.dictionaries(KEYS, JSON_VALUES, max_size=4), network=st.lists(LAYER, max_size=4), options=OPTIONS)
def test_random_input_never_gives_a_traceback(tmp_path, monkeypatch, capsys, config, network, options):
    """Whatever the config and options, main ends with 0 or 2 and never raises; no data can be
    found here, so a valid config stops at the data with exit status 2."""
    monkeypatch.setattr(datasets.mnist, "MIRRORS", [])
    monkeypatch.delenv("NNFS_MIRROR", raising=False)
    config = {"network": network, "data_dir": str(tmp_path / "empty"), "model_file": str(tmp_path / "m.pkl"),
              **config}
    path = tmp_path / "random.json"
    path.write_text(json.dumps(config))
    status = main([str(path), *options])
    err = capsys.readouterr().err
    assert status in (0, 2)
    assert "Traceback" not in err
    if status == 2:
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_data_problems_through_main(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(datasets.mnist, "MIRRORS", [])
    monkeypatch.setenv("NNFS_MIRROR", str(tmp_path / "no_mirror_here"))
    (tmp_path / "a_file").write_text("")
    message = run_error(capsys, [write_config(tmp_path, data_dir=str(tmp_path / "a_file"))])
    assert "a_file" in message and "not a folder" in message
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train-images-idx3-ubyte.gz").write_bytes(b"corrupt")        # and no mirror to repair it
    assert main([write_config(tmp_path, data_dir=str(data_dir))]) == 2
    *warnings, message = capsys.readouterr().err.splitlines()               # what was tried, then the error
    assert all(line.startswith("warning: ") for line in warnings) and "cached file is corrupt" in warnings[0]
    assert message.startswith("error: could not get train-images-idx3-ubyte.gz from any mirror")
    assert "NNFS_MIRROR" in message and not (data_dir / "train-images-idx3-ubyte.gz").exists()


def test_resume_extends_a_finished_run_and_refuses_other_changes(tmp_path, capsys, mnist_data_dir):
    keys = dict(data_dir=str(mnist_data_dir), train_size=2000, valid_size=0, seed=2, lr=0.05, log_level=0,
                optimizer={"name": "momentum"}, network={"fc1": SMALL_NET[0], "act": SMALL_NET[1], "fc2": SMALL_NET[2]})
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, extended = write_config(tmp_path / "a", num_epochs=3, **keys), write_config(tmp_path / "b", num_epochs=2, **keys)
    assert main([straight]) == 0 and main([extended]) == 0
    assert run_error(capsys, [extended, "--resume"]) == (
        "error: --resume: the run has already trained 2 epochs (num_epochs 2); to train longer, raise num_epochs "
        "(--set num_epochs=N, N > 2)")
    message = run_error(capsys, [extended, "--resume", "--set", "num_epochs=3", "--set", "lr=0.1",
                                 "--set", "network.fc1.n_out=48", "--set", "network.fc2.n_in=48"])
    assert message == (f"error: --resume: {tmp_path / 'b' / 'model.ckpt'} was made with another config (then -> now: "
                       "lr: 0.05 -> 0.1; network.fc1.n_out: 32 -> 48; network.fc2.n_in: 32 -> 48); only num_epochs "
                       "may change, to train longer: resume with the run's config, or train without --resume")
    assert main([extended, "--resume", "--set", "num_epochs=3", "--set", "log_level=1"]) == 0
    assert "resuming at epoch 3, batch 1" in capsys.readouterr().out
    history = json.loads((tmp_path / "b" / "model.history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    a, b = load_model(str(tmp_path / "a" / "model.pkl"))[0], load_model(str(tmp_path / "b" / "model.pkl"))[0]
    for name in a.params:                              # a constant lr: the same as three epochs straight away
        assert np.array_equal(a.params[name], b.params[name]), name
    assert main([extended]) == 0                        # a new run may start where a finished one was kept
    assert len(json.loads((tmp_path / "b" / "model.history.json").read_text())) == 2


@contextlib.contextmanager
def stop_at_once():
    """engine.stop_requests as if Ctrl-C came before the first batch: training stops after it."""
    stop = threading.Event()
    stop.set()
    yield stop


def test_an_interrupted_run_resumes_only_to_train_longer(tmp_path, capsys, monkeypatch, mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=1000, valid_size=0, num_epochs=2,
                          log_level=0)
    with monkeypatch.context() as m:
        m.setattr(engine, "stop_requests", stop_at_once)
        assert main([config]) == 130
    assert "checkpoint saved to" in capsys.readouterr().err
    assert run_error(capsys, [config, "--resume", "--set", "num_epochs=1"]) == (
        "error: --resume: the run was interrupted in epoch 1; num_epochs may only grow, to train longer "
        "(num_epochs 2 -> 1): resume with num_epochs 2 or more, or train without --resume")
    assert main([config, "--resume", "--set", "num_epochs=3"]) == 0
    assert len(json.loads((tmp_path / "model.history.json").read_text())) == 3


def test_a_fresh_run_that_fails_before_training_keeps_the_finished_checkpoint(tmp_path, capsys, monkeypatch,
                                                                                mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=1000, valid_size=0, num_epochs=1,
                          log_level=0)
    assert main([config]) == 0
    checkpoint = (tmp_path / "model.ckpt").read_bytes()

    def no_data(*args, **kwargs):
        raise DataError("could not get the data")
    with monkeypatch.context() as m:
        m.setattr(engine, "load_dataset", no_data)
        assert run_error(capsys, [config]) == "error: could not get the data"
    assert run_error(capsys, [config, "--set", "lr=1e30"]).startswith("error: training diverged at epoch 1, ")
    assert (tmp_path / "model.ckpt").read_bytes() == checkpoint
    assert main([config, "--resume", "--set", "num_epochs=2"]) == 0          # still extendable
    assert len(json.loads((tmp_path / "model.history.json").read_text())) == 2
    assert main([config]) == 0                                                  # a run that trains replaces it
    assert len(json.loads((tmp_path / "model.history.json").read_text())) == 1
    assert (tmp_path / "model.ckpt").read_bytes() != checkpoint


def test_a_damaged_checkpoint_is_reported_as_damaged(tmp_path, capsys):
    config = write_config(tmp_path)
    (tmp_path / "model.ckpt").write_bytes(b"not a pickle")
    message = run_error(capsys, [config])
    assert message.startswith(f"error: {tmp_path / 'model.ckpt'}: not a checkpoint (UnpicklingError: ")
    assert "interrupted" not in message


def test_a_lock_file_removed_during_training_is_no_error(tmp_path, monkeypatch, mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=1000, valid_size=0, num_epochs=1)
    lock, load_data = tmp_path / "model.pkl.lock", engine.Engine.load_data

    def remove_lock_then_load(self, *args, **kwargs):
        lock.unlink()
        return load_data(self, *args, **kwargs)
    monkeypatch.setattr(engine.Engine, "load_data", remove_lock_then_load)
    assert main([config, "-q"]) == 0
    assert (tmp_path / "model.pkl").exists() and not lock.exists()


def test_a_second_training_into_one_model_file_is_refused_until_the_first_ends(tmp_path, capsys, mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=50000, valid_size=0, num_epochs=50)
    first = run_training(config)
    lock = tmp_path / "model.pkl.lock"
    deadline = time.monotonic() + 60
    while not (lock.exists() and lock.read_text()) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        message = run_error(capsys, [config, "--set", "num_epochs=1"])
        assert message.startswith(f"error: model_file: another training run is writing {tmp_path / 'model.pkl'} "
                                  f"(process {first.pid}, `{ROOT / 'main.py'} {config}`, started ")
        assert message.endswith("); wait for it to end, or set another model_file")
    finally:
        first.kill()                                    # a crash: the kernel drops its lock
        first.wait()
    assert main([config, "--set", "num_epochs=1", "--set", "train_size=1000", "-q"]) == 0
    assert not lock.exists()


def test_a_signal_stops_the_enclosing_loop_too():
    """A tune worker's loop around a training run hears a Ctrl-C that arrives after the run's last batch."""
    import os
    from engine import stop_requests
    with stop_requests() as outer:
        with stop_requests() as inner:
            os.kill(os.getpid(), signal.SIGINT)
            assert inner.wait(5)
        assert outer.is_set()
    with stop_requests() as alone:
        assert not alone.is_set()
