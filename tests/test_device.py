"""The GPU path end to end, on the strict stand-in for a GPU (tests/strict_device.py).

Every task runs through main.py with --device gpu and CuPy's backend replaced by the stand-in,
whose arrays refuse to mix with host arrays: a host array reaching a layer, the optimizer or a
loss fails these tests. Since the stand-in computes with numpy, a stand-in run must give
exactly the weights a CPU run gives where both draw the same random numbers (the shuffle; the
device draws its own dropout masks and augmentation). The same tests run
on a real GPU where CuPy finds one (test_real_gpu_*), and skip with the reason elsewhere.
"""
import contextlib
import copy
import json
import sys

import numpy as np
import pytest

import backend
import log
import engine
from conftest import gpu_or_skip
from main import main
from strict_device import StrictBackend
from test_cli import run_error as one_error_line
from utils import read_pickle

CONV_NET = [{"class": "Reshape", "shape": [1, 28, 28]},
            {"class": "Conv2D", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"class": "BatchNorm", "num_features": 4}, {"class": "ReLU"}, {"class": "MaxPool2D", "kernel_size": 2},
            {"class": "Flatten"}, {"class": "Linear", "n_in": 784, "n_out": 16}, {"class": "ReLU"},
            {"class": "Dropout", "p": 0.3}, {"class": "Linear", "n_in": 16, "n_out": 10}, {"class": "Softmax"}]
NO_MASKS = [dict(spec, p=0.0) if spec["class"] == "Dropout" else spec for spec in CONV_NET]   # draws nothing


def write_config(tmp_path, mnist_data_dir, name="config", **keys):
    config = {"network": CONV_NET, "loss": "CrossEntropyLoss", "data_dir": str(mnist_data_dir),
              "model_file": str(tmp_path / f"{name}.pkl"), "train_size": 600, "valid_size": 200,
              "num_epochs": 2, "batch_size": 50, "lr": 0.005, "log_level": 0,
              "optimizer": {"name": "adam", "weight_decay": 1e-4}, "clip_grad_norm": 5.0,
              "augment": {"shift": 1, "rotate": 5, "scale": 0.05}, **keys}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return str(path)


def saved_arrays(path):
    payload = read_pickle(path)                   # which refuses anything but numpy arrays
    return {**payload["params"], **payload["state"]}


@pytest.fixture
def stand_in(monkeypatch):
    monkeypatch.setattr(backend, "gpu", StrictBackend)


def test_every_task_runs_on_the_stand_in_and_training_matches_the_cpu(tmp_path, mnist_data_dir, stand_in,
                                                                      capsys):
    # one thread: the stand-in runs the same numpy operations, so only the CPU's batch split
    # (parallel.py, which adds sums over the batch in another order) would tell them apart; and
    # no random numbers but the shuffle, which the host draws for both: the device draws its
    # dropout masks and augmentation maps from its own generator (backend.DeviceRandom)
    same_draws = {"augment": None, "network": NO_MASKS}
    cpu = write_config(tmp_path, mnist_data_dir, "cpu", threads=1, **same_draws)
    gpu = write_config(tmp_path, mnist_data_dir, "gpu", **same_draws)
    assert main([cpu]) == 0
    assert main([gpu, "--device", "gpu"]) == 0
    a, b = saved_arrays(tmp_path / "cpu.pkl"), saved_arrays(tmp_path / "gpu.pkl")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)    # files hold numpy arrays
    capsys.readouterr()
    assert main([gpu, "--device", "gpu", "--task", "test"]) == 0
    report = capsys.readouterr().out
    assert main([gpu, "--task", "test"]) == 0                    # a GPU-trained model tests on the CPU
    assert capsys.readouterr().out == report and "Test accuracy:" in report
    assert main([gpu, "--device", "gpu", "--task", "plot"]) == 0
    assert "first_layer.png" in capsys.readouterr().out
    image = tmp_path / "digit.npy"
    np.save(image, np.zeros((28, 28)) + np.eye(28))
    assert main([gpu, "--device", "gpu", "--task", "predict", "--input", str(image)]) == 0
    assert str(image) in capsys.readouterr().out
    assert main([gpu, "--device", "gpu", "--task", "summary"]) == 0
    assert "Total params" in capsys.readouterr().out


class StopAfter:
    """Stands in for stop_requests' Event: is_set() turns true at the `count`-th batch."""

    def __init__(self, count):
        self.count = count

    def is_set(self):
        self.count -= 1
        return self.count == 0


def interrupted_run(monkeypatch, argv, batches=17):
    """main(argv)'s exit status with a Ctrl-C that comes at the `batches`-th batch (in the second
    epoch of the tests' runs)."""
    with monkeypatch.context() as patch:
        patch.setattr(engine, "stop_requests", lambda: contextlib.nullcontext(StopAfter(batches)))
        return main(argv)


def test_resume_on_the_stand_in_gives_the_uninterrupted_weights(tmp_path, mnist_data_dir, stand_in, monkeypatch):
    whole = write_config(tmp_path, mnist_data_dir, "whole", optimizer={"name": "momentum"}, lr=0.05)
    cut = write_config(tmp_path, mnist_data_dir, "cut", optimizer={"name": "momentum"}, lr=0.05)
    assert main([whole, "--device", "gpu"]) == 0
    assert interrupted_run(monkeypatch, [cut, "--device", "gpu"]) == 130
    assert (tmp_path / "cut.ckpt").exists()
    assert main([cut, "--device", "gpu", "--resume"]) == 0
    a, b = saved_arrays(tmp_path / "whole.pkl"), saved_arrays(tmp_path / "cut.pkl")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_a_batch_copies_nothing_to_the_host(tmp_path, mnist_data_dir, stand_in, monkeypatch):
    # a GPU's queue of work drains whenever a value comes back to the host; in the whole loop
    # over the batches (gathering, augmentation, the step, the running loss and accuracy) no
    # value may, with Dropout, BatchNorm and gradient clipping at work: with no progress line
    # drawn (log_level 0), the losses come over once, at the epoch's end, with the accuracy
    from strict_device import tally
    at_start, in_step = [], []

    def counted_step(*args, **kwargs):
        at_start.append(tally["host copies"])
        result = train_step(*args, **kwargs)
        in_step.append(tally["host copies"] - at_start[-1])
        return result

    def counted_read(self):
        reads.append(len(self.pending))
        read(self)

    train_step, read, reads = engine.train_step, engine.BatchResults.read, []
    monkeypatch.setattr(engine, "train_step", counted_step)
    monkeypatch.setattr(engine.BatchResults, "read", counted_read)
    assert main([write_config(tmp_path, mnist_data_dir, num_epochs=1), "--device", "gpu"]) == 0
    assert in_step == [0] * 12                                       # 600 images in batches of 50
    assert [b - a for a, b in zip(at_start, at_start[1:])] == [0] * 11   # from one batch's step to the next
    assert reads == [12]                                             # every loss, at the epoch's end


def test_the_losses_are_read_when_the_progress_line_is_drawn(tmp_path, mnist_data_dir, stand_in, monkeypatch):
    """Each drawing of the progress line brings the losses since the last one over, in one copy."""
    from strict_device import tally
    drawn = []
    monkeypatch.setattr(log.Logger, "progress", lambda self, done, total, text="": drawn.append(
        (done, tally["host copies"], text(), tally["host copies"])) if done % 4 == 0 else None)
    assert main([write_config(tmp_path, mnist_data_dir, num_epochs=1), "--device", "gpu"]) == 0
    assert [d[0] for d in drawn] == [4, 8, 12]
    assert all(after - before == 2 for _, before, _, after in drawn)     # the losses, and the running accuracy
    assert all(before == drawn[0][3] + 0 for _, before, _, _ in drawn[1:2])   # nothing between two drawings


def test_the_stand_in_tallies_kernels_and_host_copies():
    from strict_device import tally
    a = StrictBackend().to_device(np.arange(6.0))

    def counted(operation):
        tally.clear()
        operation()
        return tally["kernels"], tally["host copies"]

    assert counted(lambda: (a.reshape(2, 3), a[1:], a.T, np.empty_like(a))) == (0, 0)   # views, an allocation
    assert counted(lambda: (a + 1, np.exp(a), a.sum(), a.reshape(2, 3).T.copy())) == (4, 0)
    assert counted(lambda: (a[a > 2], np.nonzero(a))) == (3, 2)          # the result's size needs the values
    assert counted(lambda: (float(a[0]), a.item(0), a.get(), f"{a[0]:.1f}")) == (0, 4)
    assert counted(lambda: np.multiply(a, 2, out=a)) == (1, 0)
    assert counted(lambda: np.stack([a, a], axis=1).reshape(-1)) == (1, 0)   # C order, as CuPy gives it


def test_a_host_array_in_a_device_layer_is_caught(stand_in):
    from strict_device import HostDeviceMix
    from nn_module import Linear
    layer = Linear(3, 2).map_arrays(StrictBackend().to_device)
    with pytest.raises(HostDeviceMix):
        layer.forward(np.ones((4, 3), np.float32))               # the data was never moved


def run_error(capsys, argv):
    err = one_error_line(capsys, argv)
    assert err.startswith("error: device: "), err
    return err


def test_gpu_without_cupy_is_one_error_line(tmp_path, mnist_data_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cupy", None)             # import cupy raises ImportError
    err = run_error(capsys, [write_config(tmp_path, mnist_data_dir), "--device", "gpu"])
    assert "needs CuPy" in err and "requirements-gpu.txt" in err
    assert not (tmp_path / "config.pkl").exists()


def test_gpu_without_a_device_is_one_error_line(tmp_path, mnist_data_dir, monkeypatch, capsys):
    class Runtime:
        @staticmethod
        def getDeviceCount():
            raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = type(sys)("cupy")
    fake.cuda = type(sys)("cupy.cuda")
    fake.cuda.runtime = Runtime
    monkeypatch.setitem(sys.modules, "cupy", fake)
    err = run_error(capsys, [write_config(tmp_path, mnist_data_dir), "--device", "gpu"])
    assert "no usable GPU" in err and "nvidia-smi" in err


def test_out_of_gpu_memory_is_one_error_line_and_keeps_the_model(tmp_path, mnist_data_dir, monkeypatch, capsys):
    class OutOfMemory(Exception):
        pass

    class TinyGPU(StrictBackend):
        out_of_memory = OutOfMemory

        def to_device(self, array):
            if np.size(array) > 1_000_000:                        # the model fits, the test images do not
                raise OutOfMemory(f"out of memory allocating {array.nbytes:,} bytes")
            return super().to_device(array)

    config = write_config(tmp_path, mnist_data_dir)
    assert main([config]) == 0
    before = (tmp_path / "config.pkl").read_bytes()
    monkeypatch.setattr(backend, "gpu", TinyGPU)
    err = run_error(capsys, [config, "--device", "gpu", "--task", "test"])
    assert "out of GPU memory" in err and "batch_size" in err
    assert (tmp_path / "config.pkl").read_bytes() == before


def test_real_gpu_trains_like_the_cpu(tmp_path, mnist_data_dir, capsys):
    gpu_or_skip()
    plain = {"optimizer": {"name": "sgd"}, "augment": None, "num_epochs": 1, "lr": 0.01,   # no amplifier of rounding
             "network": NO_MASKS}                                                           # nor masks
    cpu, gpu = (write_config(tmp_path, mnist_data_dir, name, **plain) for name in ("cpu", "gpu"))
    assert main([cpu]) == 0 and main([gpu, "--device", "gpu"]) == 0
    a, b = saved_arrays(tmp_path / "cpu.pkl"), saved_arrays(tmp_path / "gpu.pkl")
    for k in a:                                                  # other sums, the same training
        assert np.linalg.norm(a[k] - b[k]) <= 1e-3 * np.linalg.norm(a[k]) + 1e-6, k
    for task in ("test", "plot", "summary"):
        assert main([gpu, "--device", "gpu", "--task", task]) == 0


def test_output_shapes_of_a_model_on_the_device():
    from model import build_model
    model = build_model(CONV_NET).map_arrays(StrictBackend().to_device)
    assert model.output_shapes((784,))[-1] == (10,)             # the zero probe is made on the device too
    assert build_model([{"class": "Flatten"}]).output_shapes((1, 28, 28)) == [(784,)]     # no parameters: numpy


def test_the_device_draws_its_random_numbers_itself():
    """backend.DeviceRandom: no host copy and no host array per draw, the same numbers on every
    device, a stream that goes on where a checkpoint's counter says, and sound distributions."""
    from strict_device import tally
    device, rng = StrictBackend(), np.random.default_rng(5)
    random = device.random(rng)
    tally.clear()
    u = random.random((400, 250), dtype=np.float32)
    shifts = random.integers(-2, 3, (2, 5000))
    angles = random.uniform(-10, 10, 5000)
    assert tally["host copies"] == 0 and device.draws(random) == 100000 + 10000 + 5000
    u, shifts, angles = u.get(), shifts.get(), angles.get()
    assert u.dtype == np.float32 and 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.005
    assert abs((u >= 0.3).mean() - 0.7) < 0.005                    # a Dropout mask keeps 1 - p
    assert set(np.unique(shifts)) == {-2, -1, 0, 1, 2} and np.bincount(shifts.ravel() + 2).std() / 2000 < 0.05
    assert -10 <= angles.min() and angles.max() <= 10 and abs(angles.std() - 20 / np.sqrt(12)) < 0.1
    on_the_cpu = backend.DeviceRandom(backend.device_key(np.random.default_rng(5)), np.array(0, np.uint64))
    assert np.array_equal(on_the_cpu.random((400, 250), dtype=np.float32), u)      # pure array arithmetic
    later = device.random(np.random.default_rng(5), draws=50)      # a resumed run's: 50 numbers into the stream
    assert np.array_equal(later.random(100).get(), device.random(np.random.default_rng(5)).random(150).get()[50:])
    assert backend.device_key(rng) == backend.device_key(np.random.default_rng(5))   # whatever rng has drawn
    with pytest.raises(TypeError, match="float32 or float64"):
        random.random(3, dtype=np.float16)
    copied = copy.deepcopy(random)                                  # as watch.py copies the layers
    assert np.array_equal(copied.random(10).get(), random.random(10).get())
    other_seed = device.random(np.random.default_rng(6)).random(10).get()
    assert not np.array_equal(other_seed, device.random(np.random.default_rng(5)).random(10).get())


def test_every_batch_asks_the_device_the_same_operations(tmp_path, mnist_data_dir, stand_in, monkeypatch):
    """What replaying a step from a captured CUDA graph needs: from the gathered batch on
    (augmentation, forward, loss, backward, clipping, Adam's update with weight decay, Dropout's
    mask, BatchNorm's statistics, the running loss and accuracy), every full batch of the run
    but the first (which creates the optimizer's state, as a warm-up step before a capture would)
    gives the same trace of operations, with no host value that changes (the learning rate
    halves each epoch here, Adam counts its steps), no copy to the host and none to the device."""
    from strict_device import tally, tracing
    batches, parts = [], []

    def traced(function, ends_batch=False):
        def run(*args, **kwargs):
            before = tally["host copies"], tally["to device"]
            with tracing() as trace:
                result = function(*args, **kwargs)
            parts.append((trace, tally["host copies"] - before[0], tally["to device"] - before[1]))
            if ends_batch:
                batches.append(list(parts))
                parts.clear()
            return result
        return run

    monkeypatch.setattr(engine, "random_affine", traced(engine.random_affine))
    monkeypatch.setattr(engine, "train_step", traced(engine.train_step))
    monkeypatch.setattr(engine.BatchResults, "add", traced(engine.BatchResults.add, ends_batch=True))
    config = write_config(tmp_path, mnist_data_dir, schedule="step", decay_rate=0.5)
    assert main([config, "--device", "gpu"]) == 0
    assert len(batches) == 24                                      # 600 images in batches of 50, 2 epochs
    assert [len(batch) for batch in batches] == [3] * 24           # augmentation, the step, the count
    assert all(copies == 0 and sent == 0 for batch in batches for _, copies, sent in batch)
    second = [trace for trace, _, _ in batches[1]]     # the first step also creates Adam's m and v
    assert len(second[1]) > 150
    assert all([trace for trace, _, _ in batch] == second for batch in batches[2:])
    history = json.load(open(tmp_path / "config.history.json"))
    assert [record["lr"] for record in history] == [0.0025, 0.00125]   # the rate did change


def test_a_trace_tells_host_values_apart_and_not_array_values():
    from strict_device import tracing
    device = StrictBackend()
    a, b = device.to_device(np.zeros(3)), device.to_device(np.ones(3))
    with tracing() as one:
        a * 0.5
    with tracing() as other_array:
        b * 0.5
    with tracing() as other_number:
        a * 0.25
    assert one == other_array and one != other_number


def test_real_gpu_draws_the_numbers_numpy_computes():
    """DeviceRandom is uint64 arithmetic: CuPy's must give numpy's numbers, bit for bit."""
    device = gpu_or_skip()
    rng = np.random.default_rng(5)
    on_the_gpu = device.random(rng).random(10 ** 5).get()
    on_the_cpu = backend.DeviceRandom(backend.device_key(rng), np.array(0, np.uint64)).random(10 ** 5)
    assert np.array_equal(on_the_gpu, on_the_cpu)
