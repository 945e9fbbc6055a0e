"""How fast the trainer is on this machine, next to numpy's matrix-product peak and PyTorch.

    python3 benchmarks/bench.py [--device cpu|gpu] [--threads N] [--repeats N] [--quick] [--only NAME ...]
                                [--json PATH] [--data-dir DIR]

One run measures these items (the NAMEs of --only), prints tables to stdout (progress goes to
stderr) and writes the numbers as JSON (default benchmarks/results.json). It asserts nothing.

  peak       numpy's float32 `a @ b` for square sizes 512, 1024 and 2048, in GFLOP/s (best size);
             the epoch items need it and run it too.
  mlp, conv, lstm, network1, cnn
             seconds per training epoch of the reference MLP (784-200-10 tanh), the reference
             conv net (Conv2D 1->16 and 16->32, 3x3, padding 1, each followed by ReLU and 2x2
             max-pooling; Linear 1568->10), the reference LSTM (each image as 28 rows of 28
             pixels, LSTM with 128 units, Linear 128->10 on its last state: the network of
             configs/lstm.json), configs/network1.json and configs/cnn.json. An epoch
             is what the trainer does: 55,000 training images in batches of 100 (forward, loss,
             backward, optimizer step), a forward pass over the 5,000 validation images, and a
             save of the model when the validation accuracy improves. It is the project's own
             code: `engine.Engine.train()` on arrays already in memory, timed by the engine (the
             "seconds" of each epoch in its history; a first warm-up epoch is dropped). The
             references use SoftmaxCrossEntropyLoss and SGD with momentum 0.9; when torch
             imports, all four also run in PyTorch (the same layers, batch, optimizer and
             images; on the CPU with as many threads), after all numpy work so that neither
             library's idle threads slow the other.

--device gpu runs the epochs on the GPU through CuPy (the engine's own GPU path, with the whole
dataset on the device) beside eager PyTorch on CUDA when torch sees a GPU, and skips the CPU-only
items (peak, inference, load, memory).
  inference  network1's forward passes in eval mode over the 10,000 test images as the test task
             runs them (`tasks.probabilities`), with models/network1.pkl or else fresh weights;
             with that file also the wall time of `main.py configs/network1.json --task test`.
  load       `load_mnist` from the cache in data/, already verified.
  memory     peak resident memory of `main.py configs/network1.json` training for one epoch.
  launches   every shipped config's training step (forward, loss, backward, optimizer; batch 100)
             on the tests' stand-in for a GPU (tests/strict_device.py), through the engine's GPU
             path: the numpy operations that compute on device arrays (each launches at least one
             GPU kernel in CuPy; views launch none) and the values copied back to the host (each
             waits for the GPU). A count, not a timing: it needs no GPU and runs with either --device.
  watch      what `"watch": {"every": 50}` costs (watch.py): the median time of a training step
             of network1.json and cnn.json on one batch of 100, and of the same step with a
             record (the watcher's forward and backward pass over a copy of the layers, and its
             statistics), alternating; the cost is the record's extra time spread over the 50
             steps it covers, as a share of a step. Target: at most 10%.
  threads    every shipped config trained by main.py for a tenth of an epoch: with no thread
             setting (the project's default: `threads` is every core), with `threads` 1, each
             alone and beside one process that keeps a core busy; the engine's seconds. Checks
             that the default is never slower than one thread (within 20%: a tenth of an epoch
             run twice with the same settings differs by up to 17% here) and how much the cores
             speed up cnn.json. Skipped by --quick.

Reading the epoch table: GFLOP/epoch counts 2 FLOP per multiply-add, from each layer's
`multiply_adds` (the summary's column): on training images 3 passes (forward, dL/dW, dL/dx) for
every layer but the first with parameters, which skips dL/dx (2 passes); on validation images 1.
For the LSTM that leaves out the backward pass through weight_hh, which it makes at every step
(about a third of its work is not counted: its GFLOP/s are an underestimate).
"of peak" is the achieved GFLOP/s over the matmul peak; "limit s" is the epoch's work at the
peak, and "x limit" the epoch over that limit. "numpy/torch" below 1 means this project is
faster. The last table checks the speed targets. On the CPU: reference MLP epoch <= 0.7x
PyTorch's and <= 2x the limit, reference conv and cnn.json epochs <= 1.3x PyTorch's, reference LSTM
epoch <= 1.5x PyTorch's,
network1.json epoch <= 1.0x PyTorch's, network1 test inference < 0.5 s, peak memory < 600 MB,
MNIST load < 1 s. On the GPU: cnn.json epoch <= 1.3x and network1.json epoch <= 1.2x eager
PyTorch CUDA's.

Timings are medians of --repeats runs (the two main.py runs happen once); on a busy machine they
mean little. --threads (default: every core) is the project's `threads` setting (parallel.py
splits each batch of a conv or recurrent network across them) and PyTorch's thread count;
numpy's BLAS threads stay as main.py sets them (one, unless $OPENBLAS_NUM_THREADS or
$OMP_NUM_THREADS says otherwise). --quick times one repeat on 1/20 of each epoch (scaled up to a full
epoch) and trains network1 on 1/20 of the images for memory: a smoke check, not a measurement,
so its target table shows the numbers and leaves every target "not judged".
Without MNIST (in --data-dir, or at $NNFS_MIRROR; never the internet) random arrays of MNIST's
shapes stand in, as the header says, and load and the main.py runs are skipped.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from main import BLAS_THREADS  # noqa: E402  (first: importing main sets the BLAS threads, as main.py does)
import numpy as np  # noqa: E402
from config import read_json, validate  # noqa: E402  (needs ROOT on the path)
from datasets.mnist import load_mnist  # noqa: E402
import tasks  # noqa: E402
from backend import DEVICES, gpu  # noqa: E402
from engine import Engine  # noqa: E402
from errors import ConfigError  # noqa: E402
from log import Logger  # noqa: E402
from model import EVAL_BATCH, build_model  # noqa: E402
from parallel import available_cores  # noqa: E402

EPOCHS = ("mlp", "conv", "lstm", "network1", "cnn")
NAMES = ("peak", *EPOCHS, "inference", "load", "memory", "launches", "watch", "threads")
SHIPPED = ("network1", "network2", "cnn", "fashion_mlp", "fashion_cnn", "cnn_augment", "lstm", "gru")
FRESH = "fresh weights"
REFERENCE = {
    "mlp": [{"class": "Linear", "n_in": 784, "n_out": 200}, {"class": "Tanh"},
            {"class": "Linear", "n_in": 200, "n_out": 10}],
    "conv": [{"class": "Reshape", "shape": [1, 28, 28]},
             {"class": "Conv2D", "in_channels": 1, "out_channels": 16, "kernel_size": 3, "padding": 1},
             {"class": "ReLU"}, {"class": "MaxPool2D", "kernel_size": 2},
             {"class": "Conv2D", "in_channels": 16, "out_channels": 32, "kernel_size": 3, "padding": 1},
             {"class": "ReLU"}, {"class": "MaxPool2D", "kernel_size": 2},
             {"class": "Flatten"}, {"class": "Linear", "n_in": 1568, "n_out": 10}],
    "lstm": [{"class": "Reshape", "shape": [28, 28]}, {"class": "LSTM", "n_in": 28, "n_hidden": 128},
             {"class": "Linear", "n_in": 128, "n_out": 10}],
}
CONFIGS = {"network1": "configs/network1.json", "cnn": "configs/cnn.json"}
LR, BATCH, TRAIN, VALID = 0.05, 100, 55_000, 5_000
# Runs argv with stdout discarded and prints "exit-status seconds peak-RSS". It must be a small
# process: on Linux a child's ru_maxrss also counts the RSS its spawner had (the high-water mark
# before exec carries over), so a child spawned by this benchmark would inherit its hundreds of MB.
REAPER = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
          "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL); "
          "print(code, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def note(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def median_seconds(run, repeats):
    """Median wall time of `repeats` calls of run()."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(repeats, sizes=(512, 1024, 2048)):
    """(GFLOP/s, size) of the fastest float32 n x n matrix product (2 n^3 FLOP), medians of repeats."""
    rng, best = np.random.default_rng(0), (0.0, 0)
    for n in sizes:
        a, b = rng.random((n, n), np.float32), rng.random((n, n), np.float32)
        a @ b                                                   # warm-up: threads, caches
        best = max(best, (2 * n ** 3 / median_seconds(lambda: a @ b, max(repeats, 3)) / 1e9, n))
    return best


def load_data(data_dir):
    """(arrays, True): MNIST from the cache in data_dir, filled from $NNFS_MIRROR if needed (never
    from the internet); (random arrays of MNIST's shapes, False) when neither has it."""
    mirror = os.environ.get("NNFS_MIRROR")
    try:
        return load_mnist(data_dir, mirrors=[mirror] if mirror else []), True
    except (ConfigError, OSError) as err:
        note(f"no MNIST ({err}); using random data")
    rng = np.random.default_rng(0)
    return {"x_train": rng.random((60_000, 784), np.float32), "y_train": rng.integers(0, 10, 60_000),
            "x_test": rng.random((10_000, 784), np.float32), "y_test": rng.integers(0, 10, 10_000)}, False


class PreloadedEngine(Engine):
    """The project's Engine, given arrays already in memory instead of reading its dataset (and,
    when given, the backend to run on instead of the config's device's)."""

    def __init__(self, config, data, backend=None):
        super().__init__(config, Logger(0))
        self.data, self._backend = data, backend

    def load_data(self, split=None):
        return dict(self.data)


def make_config(name, **overrides):
    """A validated config: a reference network or a file of CONFIGS, with `overrides`."""
    if name in REFERENCE:
        raw = {"network": REFERENCE[name], "lr": LR, "batch_size": BATCH,
               "optimizer": {"name": "sgd", "momentum": 0.9}}
    else:
        raw = read_json(CONFIGS[name])
    return validate({**raw, "log_level": 0, **overrides}, CONFIGS.get(name, f"{name}.json"))


def epoch_flop(engine):
    """FLOP of one full epoch (TRAIN images trained, VALID validated), see the module docstring."""
    model = build_model(engine.config["network"], engine.dtype, engine.rng)
    shapes = model.output_shapes(engine.info.input_shape)
    passes, train_macs = 2, 0          # up to the first layer with parameters: forward and dL/dW
    for layer, shape in zip(model.layers, shapes):
        train_macs += passes * layer.multiply_adds(shape)
        if layer.params:
            passes = 3                 # later layers also pass dL/dx back
    return 2 * (TRAIN * train_macs + VALID * model.multiply_adds_per_example(engine.info.input_shape))


def numpy_epoch(name, data, repeats, fraction, device, threads):
    """Seconds per full epoch of the project's trainer (median, scaled up by 1/fraction) and FLOP."""
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(name, num_epochs=repeats + 1, model_file=os.path.join(tmp, "model.pkl"),
                             train_size=round(TRAIN * fraction), valid_size=round(VALID * fraction), device=device,
                             threads=threads)
        engine = PreloadedEngine(config, data)
        history = engine.train()
    return statistics.median(r["seconds"] for r in history[1:]) / fraction, epoch_flop(engine)


def torch_network(name, nn):
    """The network of `name` in PyTorch."""
    if name == "mlp":
        return nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 10))
    if name == "conv":
        return nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Linear(1568, 10))
    if name == "lstm":
        class RowsLSTM(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm, self.linear = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)

            def forward(self, x):
                out, _ = self.lstm(x.view(-1, 28, 28))          # (N, 28 rows, 128)
                return self.linear(out[:, -1])
        return RowsLSTM()
    if name == "network1":                  # configs/network1.json (its final Softmax is in the loss)
        return nn.Sequential(nn.Linear(784, 1024), nn.BatchNorm1d(1024), nn.ReLU(),
                             nn.Linear(1024, 1024), nn.BatchNorm1d(1024), nn.ReLU(), nn.Linear(1024, 10))
    return nn.Sequential(nn.Unflatten(1, (1, 28, 28)),   # configs/cnn.json
                         nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(128, 10))


def torch_epoch(torch, name, data, repeats, fraction, device="cpu"):
    """Seconds per full epoch of the same network in PyTorch on `device` (cpu or cuda), like
    numpy_epoch: the engine's bookkeeping (loss and accuracy each batch), then validation."""
    torch.manual_seed(0)
    net, loss_fn = torch_network(name, torch.nn).to(device), torch.nn.CrossEntropyLoss()
    cfg = make_config(name)
    optimizer_args = {k: v for k, v in cfg["optimizer"].items() if k != "name"}
    optimizer = torch.optim.SGD(net.parameters(), lr=cfg["lr"], **optimizer_args)
    n_train, n_valid = round(TRAIN * fraction), round(VALID * fraction)
    x, y = torch.from_numpy(data["x_train"]).to(device), torch.from_numpy(data["y_train"]).to(device)
    x_train, y_train, x_valid, y_valid = x[:n_train], y[:n_train], x[len(x) - n_valid:], y[len(y) - n_valid:]

    def epoch():
        net.train()
        order, loss_sum, correct = torch.randperm(n_train, device=device), 0.0, 0
        for start in range(0, n_train, BATCH):
            index = order[start:start + BATCH]
            xb, yb = x_train[index], y_train[index]
            out = net(xb)
            loss = loss_fn(out, yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(index)           # the bookkeeping the engine does
            correct += (out.argmax(1) == yb).sum()         # counted where the outputs are
        net.eval()
        with torch.no_grad():
            for start in range(0, n_valid, EVAL_BATCH):
                out = net(x_valid[start:start + EVAL_BATCH])
                loss_fn(out, y_valid[start:start + EVAL_BATCH]).item(), out.argmax(1)
        int(correct)

    epoch()
    return median_seconds(epoch, repeats) / fraction


def inference(data, repeats):
    """(median seconds of network1's test-set forward passes, the model file used or FRESH)."""
    engine = PreloadedEngine(make_config("network1", task="test"), data)
    try:
        model, weights = tasks.load_trained(engine), engine.config["model_file"]
    except ConfigError:
        c = engine.config
        model, weights = build_model(c["network"], engine.dtype, engine.rng, c["network_names"]), FRESH
    tasks.probabilities(model, data["x_test"])
    return median_seconds(lambda: tasks.probabilities(model, data["x_test"]).argmax(axis=1), repeats), weights


def run_main(*args):
    """(wall seconds, peak RSS in MB) of `python3 main.py ARGS` (its output discarded)."""
    done = subprocess.run([sys.executable, "-c", REAPER, sys.executable, "main.py", *args],
                          capture_output=True, text=True, check=True)
    code, seconds, rss = done.stdout.split()
    if code != "0":
        raise RuntimeError(f"main.py {' '.join(args)} exited with {code}: {done.stderr.strip()}")
    return float(seconds), int(rss) / (2 ** 20 if sys.platform == "darwin" else 2 ** 10)


def tenth_epoch(config, data_dir, threads=None, busy=False):
    """Seconds of a tenth of an epoch (5,500 training, 500 validation images) of `config`, trained
    by main.py with the `threads` given (None: no thread setting at all, the project's default),
    alone or beside one process that keeps a core busy; the engine's own timing of the epoch."""
    env = {k: v for k, v in os.environ.items() if k not in BLAS_THREADS}
    setting = ["--set", f"threads={threads}"] if threads is not None else []
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "main.py", f"configs/{config}.json", "-q", "--set", "num_epochs=1",
                            "--set", "train_size=5500", "--set", "valid_size=500", "--set", f"data_dir={data_dir}",
                            "--set", f"model_file={tmp}/model.pkl", *setting], env=env, check=True,
                           capture_output=True)
            with open(f"{tmp}/model.history.json", encoding="utf-8") as f:
                return json.load(f)[0]["seconds"]
    finally:
        if spinner:
            spinner.kill()
            spinner.wait()


def measure_threads(r, data_dir):
    """Fills r["thread_runs"]: every shipped config's tenth of an epoch with no thread setting
    (every core) and with one thread, alone and beside a busy process; r["thread_cores"]: the cores."""
    r["thread_runs"], r["thread_cores"] = {}, available_cores()
    for config in SHIPPED:
        note(f"threads: {config}")
        r["thread_runs"][config] = {
            "default": tenth_epoch(config, data_dir), "one": tenth_epoch(config, data_dir, 1),
            "default_busy": tenth_epoch(config, data_dir, busy=True),
            "one_busy": tenth_epoch(config, data_dir, 1, busy=True)}


def launches(data):
    """{config: {"kernels", "host_copies"}} of one training step of every shipped config, counted
    on the stand-in for a GPU (see the module docstring)."""
    tests = os.path.join(ROOT, "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import engine
    from strict_device import StrictBackend, tally
    counts, step = {}, engine.train_step

    def counted_step(*args, **kwargs):
        tally.clear()
        result = step(*args, **kwargs)
        counts[config] = {"kernels": tally["kernels"], "host_copies": tally["host copies"]}
        return result         # the second step's counts stay: the first also creates the optimizer's state

    engine.train_step = counted_step
    try:
        for config in SHIPPED:
            with tempfile.TemporaryDirectory() as tmp:
                c = validate({**read_json(f"configs/{config}.json"), "log_level": 0, "device": "gpu",
                              "num_epochs": 1, "batch_size": BATCH, "train_size": 2 * BATCH,
                              "valid_size": BATCH, "model_file": os.path.join(tmp, "model.pkl")}, config)
                PreloadedEngine(c, data, StrictBackend()).train()
    finally:
        engine.train_step = step
    return counts


def watch_cost(data, repeats, threads, every=50):
    """{config: {"step_ms", "recorded_step_ms", "cost"}}: a training step's median time without
    and with a watch record, alternating in this process, and the record's extra time over
    `every` steps as a share of a step (see the module docstring)."""
    from backend import get_backend
    from engine import train_step
    from model import build_trainable
    from watch import Watcher
    results = {}
    for name in CONFIGS:
        c = make_config(name, threads=threads)
        rng = np.random.default_rng(0)
        model, loss = build_trainable(c["network"], c["loss"], np.float32, rng, c["network_names"])
        model.skip_input_grad()                                      # as the engine trains it
        get_backend("cpu").place(model, rng, threads).pack()
        optimizer = Engine(c, Logger(0)).build_optimizer()
        watcher = Watcher(model, every, TRAIN // BATCH, [])
        x, y = data["x_train"][:BATCH].astype(np.float32), data["y_train"][:BATCH]
        model.train()
        step = lambda: train_step(model, loss, optimizer, x, y, c["clip_grad_norm"])

        def recorded_step():
            look = watcher.look(loss, x, y)
            value, _ = step()
            watcher.keep(look, 0, 1, 1, float(optimizer.lr), value)
        plain, recorded = [], []
        for _ in range(max(10, 5 * repeats)):                       # alternating: both see the same machine
            plain.append(median_seconds(step, 1))
            recorded.append(median_seconds(recorded_step, 1))
        step_s, recorded_s = statistics.median(plain), statistics.median(recorded)
        results[name] = {"step_ms": 1e3 * step_s, "recorded_step_ms": 1e3 * recorded_s,
                         "cost": (recorded_s - step_s) / (every * step_s)}
    return results


def table(header, rows):
    """Rows of strings as aligned text: the first column left, the others right."""
    widths = [max(len(str(row[c])) for row in [header, *rows]) for c in range(len(header))]
    line = lambda row: "  ".join(f"{v:<{w}}" if c == 0 else f"{v:>{w}}" for c, (v, w) in enumerate(zip(row, widths)))
    return "\n".join([line(header), "-" * len(line(header)), *map(line, rows)])


def fmt(value, spec=".3f", suffix=""):
    return "-" if value is None else f"{value:{spec}}{suffix}"


def measure(args):
    """Runs the chosen benchmarks; returns the results as a JSON-ready dict."""
    repeats, fraction = (1, 1 / 20) if args.quick else (args.repeats, 1.0)
    r = {"repeats": repeats, "quick": args.quick, "threads": args.threads, "numpy": np.__version__,
         "python": platform.python_version(), "device": args.device, "epochs": {}}
    data, mnist = load_data(args.data_dir)
    r["data"] = f"MNIST from {args.data_dir}" if mnist else "RANDOM data (no MNIST found): accuracies mean nothing"
    if "launches" in args.only:
        note("launches: a training step of every shipped config on the stand-in for a GPU")
        r["launches"] = launches(data)
    if args.device == "gpu":
        r["gpu"] = gpu().describe()
        measure_epochs(r, [n for n in EPOCHS if n in args.only], data, repeats, fraction, "gpu", 1)
        return r
    if set(args.only) & {"peak", *EPOCHS}:
        note("peak: float32 matrix products")
        r["peak_gflops"], r["peak_size"] = matmul_peak(repeats)
    measure_epochs(r, [n for n in EPOCHS if n in args.only], data, repeats, fraction, "cpu", args.threads)
    if "inference" in args.only:
        note("inference: network1 on the test set")
        r["test_seconds"], r["test_weights"] = inference(data, repeats)
    if not mnist:                               # main.py would try to download it
        return r
    if "inference" in args.only and r["test_weights"] != FRESH:
        r["test_task_seconds"], _ = run_main("configs/network1.json", "--task", "test", "-q",
                                             "--set", f"data_dir={args.data_dir}")
    if "load" in args.only:
        note("load: MNIST from the cache")
        r["load_seconds"] = median_seconds(lambda: load_mnist(args.data_dir, mirrors=[]), max(repeats, 3))
    if "memory" in args.only:
        note("memory: training network1 for one epoch in a subprocess")
        quick = ["--set", f"train_size={round(TRAIN * fraction)}"] if args.quick else []
        with tempfile.TemporaryDirectory() as tmp:
            _, r["train_peak_rss_mb"] = run_main("configs/network1.json", "-q", "--set", "num_epochs=1",
                                                 "--set", f"model_file={tmp}/network1.pkl",
                                                 "--set", f"data_dir={args.data_dir}", *quick)
    if "watch" in args.only:
        note("watch: a training step with and without a watch record")
        r["watch"] = watch_cost(data, repeats, args.threads)
    if "threads" in args.only and not args.quick:
        measure_threads(r, args.data_dir)
    return r


def measure_epochs(r, names, data, repeats, fraction, device, threads):
    """Fills r["epochs"]: every numpy network first, then the same networks in PyTorch (see the
    docstring). The matmul limit is only known on the CPU."""
    for name in names:
        note(f"{name}: {repeats} + 1 epochs on the {device}" + (" of 1/20 size" if fraction < 1 else ""))
        seconds, flop = numpy_epoch(name, data, repeats, fraction, device, threads)
        e = r["epochs"][name] = {"seconds": seconds, "gflop": flop / 1e9, "gflops": flop / seconds / 1e9}
        if "peak_gflops" in r:
            limit = flop / (r["peak_gflops"] * 1e9)
            e.update(fraction_of_peak=limit / seconds, limit_seconds=limit, x_limit=seconds / limit)
    if not names:
        return
    try:
        import torch
    except ImportError:
        r["torch"] = None
        return
    if device == "gpu" and not torch.cuda.is_available():
        r["torch"] = None
        return
    torch.set_num_threads(threads)
    r["torch"] = torch.__version__ + (f" CUDA {torch.version.cuda}" if device == "gpu" else "")
    for name in names:
        note(f"{name}: PyTorch, {repeats} + 1 epochs")
        e = r["epochs"][name]
        e["torch_seconds"] = torch_epoch(torch, name, data, repeats, fraction, "cuda" if device == "gpu" else "cpu")
        e["numpy_over_torch"] = e["seconds"] / e["torch_seconds"]


def targets(r):
    """The speed targets that were measured, as dicts: target, value, goal, unit, met (None with
    --quick: a 1/20 epoch scaled up is no measurement to judge a target by)."""
    epoch = lambda name, key: r["epochs"].get(name, {}).get(key)
    if r["device"] == "gpu":
        checks = [("cnn.json epoch / PyTorch CUDA's", epoch("cnn", "numpy_over_torch"), "<=", 1.3, "x"),
                  ("network1.json epoch / PyTorch CUDA's", epoch("network1", "numpy_over_torch"), "<=", 1.2, "x")]
    else:
        checks = [("reference MLP epoch / PyTorch's", epoch("mlp", "numpy_over_torch"), "<=", 0.7, "x"),
                  ("reference MLP epoch / matmul limit", epoch("mlp", "x_limit"), "<=", 2.0, "x"),
                  ("reference conv epoch / PyTorch's", epoch("conv", "numpy_over_torch"), "<=", 1.3, "x"),
                  ("reference LSTM epoch / PyTorch's", epoch("lstm", "numpy_over_torch"), "<=", 1.5, "x"),
                  ("network1.json epoch / PyTorch's", epoch("network1", "numpy_over_torch"), "<=", 1.0, "x"),
                  ("cnn.json epoch / PyTorch's", epoch("cnn", "numpy_over_torch"), "<=", 1.3, "x")]
    if r.get("thread_runs"):
        t = r["thread_runs"]
        checks += [("default / 1 thread, worst shipped config, alone", max(v["default"] / v["one"] for v in t.values()),
                    "<=", 1.2, "x"),
                   ("default / 1 thread, worst shipped config, busy",
                    max(v["default_busy"] / v["one_busy"] for v in t.values()), "<=", 1.2, "x"),
                   ("cnn.json: 1 thread / all CPUs' threads", t["cnn"]["one"] / t["cnn"]["default"], ">=", 1.7, "x")]
    checks += [(f"watch every 50: extra time per step, {name}.json", 100 * w["cost"], "<=", 10, "%")
               for name, w in r.get("watch", {}).items()]
    checks += [("network1 test inference, 10,000 images", r.get("test_seconds"), "<", 0.5, " s"),
              ("peak RSS training network1", r.get("train_peak_rss_mb"), "<", 600, " MB"),
              ("MNIST load from the verified cache", r.get("load_seconds"), "<", 1.0, " s")]
    return [{"target": what, "value": value, "goal": f"{op} {goal:g}", "unit": unit.strip(),
             "met": None if r["quick"] else {"<=": value <= goal, ">=": value >= goal, "<": value < goal}[op]}
            for what, value, op, goal, unit in checks if value is not None]


def report(r):
    """The tables, as text."""
    torch = f", torch {r['torch'] or 'not installed (or no CUDA)'}" if "torch" in r else ""
    where = f"GPU: {r['gpu']}" if r["device"] == "gpu" else f"{r['threads']} threads"
    lines = [f"numpy {r['numpy']}, {where}{torch}; {r['data']}",
             f"medians of {r['repeats']} repeat(s)" + ("; QUICK: 1/20 epochs scaled up, not a measurement"
                                                       if r["quick"] else ""), ""]
    if "peak_gflops" in r:
        lines += [f"numpy float32 matmul peak: {r['peak_gflops']:.1f} GFLOP/s ({r['peak_size']}x{r['peak_size']})", ""]
    if r["epochs"]:
        rows = [(name, fmt(e["seconds"]), fmt(e["gflop"], ".1f"), fmt(e["gflops"], ".1f"),
                 fmt(100 * e["fraction_of_peak"] if "fraction_of_peak" in e else None, ".0f", "%"),
                 fmt(e.get("limit_seconds")), fmt(e.get("x_limit"), ".2f"),
                 fmt(e.get("torch_seconds")), fmt(e.get("numpy_over_torch"), ".2f")) for name, e in r["epochs"].items()]
        lines += [table(("epoch", "s/epoch", "GFLOP/epoch", "GFLOP/s", "of peak", "limit s", "x limit",
                         "torch s", "numpy/torch"), rows), ""]
    others = [("test inference, network1 (" + r.get("test_weights", "") + ")", fmt(r.get("test_seconds")), "s"),
              ("test task end to end (main.py --task test)", fmt(r.get("test_task_seconds")), "s"),
              ("MNIST load from the cache", fmt(r.get("load_seconds")), "s"),
              ("peak RSS training network1", fmt(r.get("train_peak_rss_mb"), ".0f"), "MB")]
    if any(row[1] != "-" for row in others):
        lines += [table(("other", "value", "unit"), [row for row in others if row[1] != "-"]), ""]
    if r.get("launches"):
        rows = [(config, c["kernels"], c["host_copies"]) for config, c in r["launches"].items()]
        lines += ["a training step on the stand-in for a GPU (batch 100):",
                  table(("config", "device operations", "copies to the host"), rows), ""]
    if r.get("watch"):
        rows = [(config, fmt(w["step_ms"], ".1f"), fmt(w["recorded_step_ms"], ".1f"), fmt(100 * w["cost"], ".1f", "%"))
                for config, w in r["watch"].items()]
        lines += ["a training step (batch 100) without and with a watch record, ms; the cost at every 50:",
                  table(("config", "step", "recorded step", "cost"), rows), ""]
    if r.get("thread_runs"):
        rows = [(config, fmt(t["default"]), fmt(t["one"]), fmt(t["default_busy"]), fmt(t["one_busy"]))
                for config, t in r["thread_runs"].items()]
        lines += [f"seconds of a tenth of an epoch, by main.py, with no thread setting "
                  f"(default: threads {r['thread_cores']}, every core) or threads 1:",
                  table(("config", "default", "1 thread", "default, busy", "1 thread, busy"), rows), ""]
    unit = lambda t: t["unit"] if t["unit"] == "x" else " " + t["unit"]
    met = {True: "yes", False: "NO", None: "not judged (--quick)"}
    lines += [table(("target", "measured" + (" (quick)" if r["quick"] else ""), "goal", "met"), [
        (t["target"], f"{t['value']:.3g}{unit(t)}", t["goal"] + unit(t), met[t["met"]]) for t in r["targets"]])]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="where the epochs run: cpu, or gpu through CuPy beside PyTorch CUDA (default: cpu)")
    parser.add_argument("--threads", type=int, default=available_cores(),
                        help="the project's `threads` setting and PyTorch's threads on the CPU "
                             "(default: every core, here %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats of each item (default: 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one repeat on 1/20 of an epoch, a smoke check (default: off)")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=NAMES, metavar="NAME",
                        help=f"run only these: {', '.join(NAMES)} (default: all)")
    parser.add_argument("--json", default=os.path.join(ROOT, "benchmarks", "results.json"),
                        help="where to write the results (default: benchmarks/results.json)")
    parser.add_argument("--data-dir", default=os.path.join(ROOT, "data"),
                        help="the MNIST cache (default: the repository's data/)")
    args = parser.parse_args(argv)
    for name in ("repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    args.json, args.data_dir = os.path.abspath(args.json), os.path.abspath(args.data_dir)
    os.chdir(ROOT)                               # configs, models/ and main.py are relative to it
    results = measure(args)
    results["targets"] = targets(results)
    print(report(results))
    with open(args.json, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    note(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
