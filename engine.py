"""Runs a task from a validated config: builds the model, loads the data and trains.

The engine is where the parts meet: config -> model (model.py), optimizer and schedule
(optim.py), data (datasets/), device (backend.py), the model file (utils.py), the run's
checkpoint and history (runfiles.py), messages (log.py). Training happens here; the
tasks that only look at a network (test, plot, predict, summary, gradcheck) live in tasks.py
and get their model, data and checks from the engine.

The training step itself is `train_step`: forward, loss, backward, update. Around it,
`Engine.train_epoch` keeps the books (shuffling, running loss and accuracy, progress, Ctrl-C)
and `Engine.train` the epochs (learning rate, validation, saving the best model, early stop).

Everything that can be checked without the data (the network chains, fits the dataset's input
and classes, the model file can be written) is checked before the data is loaded or
downloaded; only `npz` and `csv` datasets are read first, to learn their shapes.
"""
import contextlib
import math
import os
import signal
import threading
import time

import numpy as np

import runfiles
import tasks
from board import Board
from backend import device_errors, get_backend, to_numpy
from datasets import load_dataset, make_dataset
from datasets.augment import expand_by_shifts, random_affine
from errors import ConfigError, DataError
from log import epoch_line, fmt
from model import build_trainable, forward_in_eval_mode
from optim import OPTIMIZERS, clip_grad_norm, learning_rate
from utils import check_writable, save_model, training_lock
from watch import Watcher, diagnose

EXPLODING = 10      # a batch loss this many times the run's first one is reported as exploding


class DivergenceError(ConfigError):
    """Training produced a non-finite loss: the run stops and the best saved model stays."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived during training and a checkpoint was written (exit status 130)."""


@contextlib.contextmanager
def stop_requests():
    """An Event that SIGINT and SIGTERM set instead of stopping the program at once: the training
    loop checks it between batches. A second signal raises KeyboardInterrupt straight away.
    Nested (a tune worker around a training run), a signal sets the enclosing Event too, so the
    outer loop stops even when the inner one had already finished its last batch."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():   # only it may handle signals
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        enclosing = getattr(previous.get(signum), "stop", None)
        if enclosing is not None:
            enclosing.set()

    handler.stop = stop
    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        previous[s] = signal.signal(s, handler)
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class BatchResults:
    """The epoch's batch losses and right answers, kept where they were computed until `read`.

    A step writes its loss into `losses` at the place `count` says and adds its right answers
    to `correct` (`add`); all three are arrays beside the batch, on the device, so a step asks
    the host nothing and takes no host value that changes from one step to the next, as a step
    replayed from a captured CUDA graph must. `read`, called as the progress line is redrawn
    and at the epoch's end, brings the losses since the last read over in one copy, adds them
    to progress["loss_sum"], stops a run whose loss is not finite (naming the first such
    batch), warns once a run when a loss explodes, and hands each to TensorBoard; `right`
    brings the count of right answers over.

    Shape:
        losses (batches,) float64, count () intp, correct () int64; `like` is a batch's array.
    """

    def __init__(self, progress, log, model_file, batches, like, board=None):
        self.progress, self.log, self.model_file, self.board = progress, log, model_file, board
        self.losses = np.zeros_like(like, dtype=np.float64, shape=(batches,))
        self.count = np.zeros_like(like, dtype=np.intp, shape=())
        self.correct = np.zeros_like(like, dtype=np.int64, shape=()) + progress["correct"]
        self.read_to = 0            # losses[:read_to] are in progress["loss_sum"]
        self.pending = []           # (batch number, batch size, the run's step, lr) of each loss after them

    def add(self, value, out, y, batch, size, step, lr):
        """The loss `value` and the right answers of the outputs `out` for labels `y`, on the device;
        the rest is the host's own bookkeeping, for `read`."""
        self.losses[self.count] = value
        self.count += 1
        self.correct += (out.argmax(axis=1) == y).sum()
        self.pending.append((batch, size, step, lr))

    def right(self):
        """The epoch's right answers so far, as a Python int (a copy from the device)."""
        return int(self.correct)

    def read(self):
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        values = to_numpy(self.losses[self.read_to:self.read_to + len(pending)]).tolist()
        self.read_to += len(pending)
        epoch = self.progress["epoch"]
        for value, (batch, size, step, lr) in zip(values, pending):
            if not math.isfinite(value):
                kept = (f"the best model so far is kept in {self.model_file}" if self.progress["best_accuracy"] >= 0
                        else "no model was saved yet")
                raise DivergenceError(f"training diverged at epoch {epoch}, batch {batch}: the loss is {value} "
                                      f"(try a lower lr than {lr:g}); {kept}")
            self.warn_if_exploding(value, batch, lr)
            if self.board:
                self.board.batch(step, value, lr)
            self.progress["loss_sum"] += value * size

    def warn_if_exploding(self, value, batch, lr):
        """Warns, once a run, when a batch loss passes EXPLODING times the run's first one (that of
        the untrained network): training is going astray while the loss is still finite."""
        progress = self.progress
        if progress.get("first_loss") is None:
            progress["first_loss"] = value
        if value > EXPLODING * progress["first_loss"] and not progress.get("warned_exploding"):
            progress["warned_exploding"] = True
            self.log.warning(f"the loss is exploding: {fmt(value)} at epoch {progress['epoch']}, batch {batch}, "
                             f"{value / progress['first_loss']:.0f} times the first batch's "
                             f"{fmt(progress['first_loss'])} (try a lower lr than {lr:g})")


def new_progress():
    """Where training stands; a checkpoint saves it and --resume restores it.

    epoch, batch:      the epoch under way (from 1) and the batches of it already done;
    order:             that epoch's shuffled example indices (None until it starts);
    loss_sum, correct: that epoch's running sum of losses (times batch sizes) and right answers;
    seconds:           its time spent before an interruption;
    best_accuracy, stale, stopped: the best validation accuracy so far, the validations
                       since it improved, and whether early stopping ended training;
    history:           one record per finished epoch (see `Engine.train`);
    first_loss, warned_exploding: the run's first batch loss, and whether a loss past EXPLODING
                       times it was reported (see `BatchResults.warn_if_exploding`);
    watch:             the watch records so far (watch.py), with "watch" in the config;
    draws:             the numbers a device's generator has drawn (backend.DeviceRandom; 0 on the
                       CPU, whose generator the checkpoint saves whole).
    """
    return {"epoch": 1, "batch": 0, "order": None, "loss_sum": 0.0, "correct": 0, "seconds": 0.0,
            "best_accuracy": -1.0, "stale": 0, "stopped": False, "history": [],
            "first_loss": None, "warned_exploding": False, "watch": [], "draws": 0}


def train_step(model, loss, optimizer, x, y, clip_norm=None):
    """One step of gradient descent on the batch (x, y); returns (the loss, a 0-d array where
    the batch is, and the model's output)."""
    # forward
    out = model.forward(x)
    value = loss.forward(out, y)
    # backward: every layer overwrites its grads with dL/dparams
    model.backward(loss.backward())
    # update (packed_params holds model.params, in one array after model.pack())
    if clip_norm:
        clip_grad_norm(model.packed_grads, clip_norm)
    optimizer.step(model.packed_params, model.packed_grads)
    return value, out


class Engine:
    """One run of a validated config: holds the config, the log, the dtype, the run's random
    generator, the dataset (and its shapes) and the array backend. `run` dispatches the task;
    `train` and the tasks of tasks.py use it for the model, the data and the checks."""

    def __init__(self, config, log):
        self.config, self.log = config, log
        self.dtype = np.dtype(config["dtype"])
        self.rng = np.random.default_rng(config["seed"])
        self.dataset = make_dataset(config)
        self.info = self.dataset.info()
        self.trained_with = None         # a loaded model file's config (tasks.load_trained)
        self._backend = None

    @property
    def backend(self):
        """Where the arrays live (backend.py), set up on first use: the summary task needs none."""
        if self._backend is None:
            self._backend = get_backend(self.config["device"])
        return self._backend

    def run(self, resume=False, on_epoch=None):
        task = self.config["task"]
        if resume and task != "train":
            raise ConfigError(f"--resume: only the train task can resume, not {task!r}")
        with self.device_errors():
            if task != "train":
                return tasks.TASKS[task](self)
            check_writable(self.config["model_file"], "model_file")
            with training_lock(self.config["model_file"]):     # no second run writes model_file meanwhile
                return self.train(resume, on_epoch)

    def device_errors(self):
        """A block in which this run's device running out of memory is one ConfigError (backend.py)."""
        return device_errors(lambda: self._backend)       # the block may be the one that sets it up

    # ---- building and checking, before any data --------------------------------------------

    def check_fits(self, model):
        """The network takes the dataset's examples and gives one output per class."""
        input_shape, num_classes = self.info.input_shape, self.info.num_classes
        output = model.output_shapes(input_shape)[-1]
        if output != (num_classes,):
            raise ConfigError(f"network: the last layer gives {output} per example, but "
                              f"{self.config['dataset']} has {num_classes} classes: expected ({num_classes},)"
                              f"{self.dataset.classes_note()}")

    def build_optimizer(self):
        c = self.config
        arguments = {k: v for k, v in c["optimizer"].items() if k != "name"}
        return OPTIMIZERS[c["optimizer"]["name"]](lr=c["lr"], **arguments)

    # ---- data --------------------------------------------------------------------------------

    def load_data(self, split=None):
        """The dataset's arrays in the run's dtype; with `split` "train" or "test", only that
        split's (a dataset that can, such as MNIST, then reads only its files)."""
        data = load_dataset(self.dataset, log=self.log, split=split)
        for key in ("x_train", "x_test"):
            if key in data:
                data[key] = data[key].astype(self.dtype, copy=False)
        return data

    def split(self, data):
        """(train x, y, validation x, y): the last `valid_size` training examples validate, and
        the first `train_size` (default: all the others) train, each with its shifted copies
        when `expand` is set (the validation images have none)."""
        n, valid, pixels = len(data["x_train"]), self.config["valid_size"], self.config["expand"]
        if valid >= n:
            raise DataError(f"valid_size: expected fewer than the {n} training examples, got {valid}")
        cut = n - valid
        train = min(cut, self.config["train_size"] or cut)
        x, y = data["x_train"][:train], data["y_train"][:train]
        if pixels:
            x, y = expand_by_shifts(x, y, self.info.image_shape, pixels)
        return x, y, data["x_train"][cut:], data["y_train"][cut:]

    # ---- training ----------------------------------------------------------------------------

    def train(self, resume=False, on_epoch=None):
        """Trains, saving the model with the best validation accuracy to `model_file` as it goes;
        returns the history, one record per epoch:
            {"epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "lr", "seconds"}
        (valid_* are None in epochs without validation). `on_epoch(record)`, when given, is
        called after each epoch and may raise to stop training.

        SIGINT or SIGTERM writes a checkpoint (runfiles.py) and raises Interrupted;
        `resume=True` continues from it, giving the weights an uninterrupted run would have. A run
        that ends leaves its last state there too, and `resume=True` with a larger num_epochs
        trains it on, as Keras's `initial_epoch` does.
        """
        c = self.config
        model, loss = build_trainable(c["network"], c["loss"], self.dtype, self.rng, c["network_names"])
        model.skip_input_grad()
        self.check_fits(model)                         # model_file is checked by the caller (run(), tune.py)
        optimizer = self.build_optimizer()
        replaces = not resume and runfiles.replaces_checkpoint(c["model_file"])   # a finished run's
        progress = (runfiles.load_checkpoint(c, model, optimizer, self.rng, self.threads(model), self.log)
                    if resume else new_progress())
        random = self.backend.random(self.rng, progress.setdefault("draws", 0))   # masks and augmentation
        self.backend.place(model, random, c["threads"]).pack(optimizer.pack_group)
        self.backend.place_optimizer(optimizer)
        self.log.debug(repr(model))
        run_name = os.path.splitext(os.path.basename(c["model_file"]))[0]
        board = Board(c["tensorboard"], run_name, fresh=not resume) if c["tensorboard"] else None
        x_train, y_train, x_valid, y_valid = map(self.backend.to_device, self.split(self.load_data("train")))
        watcher = Watcher(model, c["watch"]["every"], math.ceil(len(x_train) / c["batch_size"]),
                          progress.setdefault("watch", [])) if c["watch"] else None
        where = f" on {self.backend.describe()}" if self.backend.name != "cpu" else ""
        self.log.info(f"training on {len(x_train)} examples, validating on {len(x_valid)}{where}; "
                      f"{sum(p.size for p in model.params.values()):,} parameters"
                      + (f"; resuming at epoch {progress['epoch']}, batch {progress['batch'] + 1}" if resume else ""))
        with stop_requests() as stop:
            while progress["epoch"] <= c["num_epochs"] and not progress["stopped"]:
                epoch = progress["epoch"]
                lr = learning_rate(epoch, c["lr"], c["schedule"], c["num_epochs"], c["decay_rate"],
                                   c["start_epoch_decay"], c["warmup_epochs"])
                optimizer.set_lr(lr)
                start = time.perf_counter()
                self.train_epoch(model, loss, optimizer, x_train, y_train, progress, stop, random, lr, watcher, board)
                if replaces:         # kept until this run writes files of its own, so a failed start loses nothing
                    runfiles.remove_checkpoint(c["model_file"])
                    replaces = False
                record = {"epoch": epoch, "train_loss": progress["loss_sum"] / len(x_train),
                          "train_accuracy": progress["correct"] / len(x_train),
                          "valid_loss": None, "valid_accuracy": None, "lr": lr}
                if len(x_valid) and (epoch % c["valid_epoch"] == 0 or epoch == c["num_epochs"]):
                    record["valid_loss"], record["valid_accuracy"] = self.evaluate(model, loss, x_valid, y_valid)
                    self.keep_if_best(model, record, progress)
                record["seconds"] = progress["seconds"] + time.perf_counter() - start
                progress["history"].append(record)
                self.log.info(epoch_line(record, c["num_epochs"]))
                runfiles.save_history(c["model_file"], progress["history"])
                if watcher:
                    runfiles.save_watch(c["model_file"], watcher.record())
                elif not resume:     # an earlier run's record, which would speak of another model
                    runfiles.remove_watch(c["model_file"])
                if board:
                    board.epoch(record)
                progress.update(epoch=epoch + 1, batch=0, order=None, loss_sum=0.0, correct=0, seconds=0.0)
                if c["patience"] and progress["stale"] >= c["patience"]:
                    self.log.info(f"early stop: no better validation accuracy in {progress['stale']} validations")
                    progress["stopped"] = True
                if on_epoch:
                    on_epoch(record)
        if not len(x_valid):
            save_model(c["model_file"], model, c, {"epoch": progress["epoch"] - 1})
        self.save_checkpoint(model, optimizer, progress, random)     # the last state, which --resume can extend
        if board:
            board.close()
        for line in diagnose(watcher.record()) if watcher else ():
            self.log.warning(line)
        self.log.info(f"saved model to {c['model_file']}" if not len(x_valid) else
                      f"the model in {c['model_file']} is the one with the best validation accuracy, "
                      f"{100 * progress['best_accuracy']:.2f}%")
        return progress["history"]

    def keep_if_best(self, model, record, progress):
        """Saves the model when its validation accuracy beats the best so far (the earliest wins a tie)."""
        if record["valid_accuracy"] > progress["best_accuracy"]:
            progress["best_accuracy"], progress["stale"] = record["valid_accuracy"], 0
            save_model(self.config["model_file"], model, self.config, {"epoch": record["epoch"]})
        else:
            progress["stale"] += 1

    def train_epoch(self, model, loss, optimizer, x, y, progress, stop, random, lr, watcher=None, board=None):
        """Runs train_step on the epoch's remaining mini-batches, in the shuffled order
        `progress["order"]`, and keeps the running loss and accuracy in `progress`; `random`
        draws the augmentation's maps, `lr` is the epoch's rate (for messages: the optimizer
        holds its own), `watcher` records the batches it is due for, `board` writes each batch."""
        c, epoch = self.config, progress["epoch"]
        if progress["order"] is None:
            progress["order"] = self.rng.permutation(len(x))
        batch_size, order = c["batch_size"], self.backend.to_device(progress["order"])
        batches, start, first = math.ceil(len(x) / batch_size), time.perf_counter(), progress["batch"]
        results = BatchResults(progress, self.log, c["model_file"], batches - first, x, board)
        model.train()
        for b in range(first, batches):
            index = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = x[index], y[index]
            if c["augment"]:                                   # training batches only
                xb = random_affine(xb, self.info.image_shape, random, **c["augment"])
            step = (epoch - 1) * batches + b                   # the run's training batch, from 0
            with np.errstate(over="ignore", invalid="ignore"):    # a non-finite loss is reported by results.read
                look = watcher.look(loss, xb, yb) if watcher and watcher.due(step) else None
                value, out = train_step(model, loss, optimizer, xb, yb, c["clip_grad_norm"])
                if look:
                    watcher.keep(look, step, epoch, b + 1, lr, value)
            results.add(value, out, yb, b + 1, len(index), step, lr)
            if board and look:
                board.watch(watcher.layout(), watcher.records[-1])
            progress["batch"] = b + 1
            seen = min(len(x), (b + 1) * batch_size)
            rate = (seen - first * batch_size) / max(time.perf_counter() - start, 1e-9)   # examples per second

            def shown():                                       # only when the line is drawn: it reads the device
                results.read()
                return (f"loss {fmt(progress['loss_sum'] / seen)} acc {100 * results.right() / seen:.2f}% "
                        f"{rate:.0f} ex/s eta {(len(x) - seen) / rate:.0f}s")
            self.log.progress(b + 1, batches, shown)
            if stop.is_set():
                results.read()
                progress["correct"] = results.right()
                progress["seconds"] += time.perf_counter() - start
                self.save_checkpoint(model, optimizer, progress, random)
                raise Interrupted(f"interrupted at epoch {epoch}, batch {b + 1}; checkpoint saved to "
                                  f"{runfiles.checkpoint_path(c['model_file'])}: continue with --resume")
        results.read()
        progress["correct"] = results.right()

    def evaluate(self, model, loss, x, y):
        """(mean loss, accuracy) of `model` in eval mode."""
        out = forward_in_eval_mode(model, x)
        return float(loss.forward(out, y)), float((out.argmax(axis=1) == y).mean())

    def threads(self, model):
        """How many threads share each batch of `model` in this run (Backend.batch_threads)."""
        return self.backend.batch_threads(model, self.config["threads"])

    def save_checkpoint(self, model, optimizer, progress, random):
        """This run's checkpoint (runfiles.py): everything a resumed run needs, `random`'s place
        in its stream too (Backend.draws)."""
        progress["draws"] = self.backend.draws(random)
        runfiles.save_checkpoint(self.config, model, optimizer, self.rng, progress, self.threads(model))

