"""Runs a task from a validated config: builds the model, loads the data, trains or tests.

The engine is the only place that brings the parts together: config -> model (model.py),
optimizer and schedule (optim.py), data (datasets/), files (utils.py), messages (log.py).
Everything that can be checked without the data (the network chains, fits the dataset's input
and classes, the model file can be written) is checked before the data is loaded or
downloaded; only `npz` and `csv` datasets are read first, to learn their shapes.
"""
import contextlib
import json
import math
import os
import signal
import threading
import time

import numpy as np

from datasets import load_dataset, make_dataset
from datasets.augment import random_affine
from datasets.prepare import prepare_image
from errors import ConfigError, DataError, ModelFileError
from log import fmt
from model import Model, build_model
from nn_module import LOSSES, CrossEntropyLoss, Flatten, Reshape, Softmax, SoftmaxCrossEntropyLoss
from optim import OPTIMIZERS, clip_grad_norm, learning_rate
from utils import atomic_write, copy_arrays, load_model, read_pickle, save_model

EVAL_BATCH = 1000


class DivergenceError(ConfigError):
    """Training produced a non-finite loss: the run stops and the best saved model stays."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived during training and a checkpoint was written (exit status 130)."""


@contextlib.contextmanager
def stop_requests():
    """An Event that SIGINT and SIGTERM set instead of stopping the program at once: the training
    loop checks it between batches. A second signal raises KeyboardInterrupt straight away."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():   # only it may handle signals
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def new_progress():
    """Where training stands; a checkpoint saves it and --resume restores it."""
    return {"epoch": 1, "batch": 0, "order": None, "loss_sum": 0.0, "correct": 0, "seconds": 0.0,
            "best_accuracy": -1.0, "stale": 0, "stopped": False, "history": []}


class Engine:
    def __init__(self, config, log):
        self.config, self.log = config, log
        self.dtype = np.dtype(config["dtype"])
        self.rng = np.random.default_rng(config["seed"])
        self.dataset = make_dataset(config)
        self.info = self.dataset.info()

    def run(self, resume=False):
        if resume and self.config["task"] != "train":
            raise ConfigError(f"--resume: only the train task can resume, not {self.config['task']!r}")
        tasks = {"train": lambda: self.train(resume), "test": self.test, "plot": self.plot,
                 "summary": self.summary, "predict": self.predict}
        return tasks[self.config["task"]]()

    # ---- building and checking, before any data --------------------------------------------

    def check_fits(self, model):
        """The network takes the dataset's examples and gives one output per class."""
        input_shape, num_classes = self.info.input_shape, self.info.num_classes
        output = model.output_shapes(input_shape)[-1]
        if output != (num_classes,):
            raise ConfigError(f"network: the last layer gives {output} per example, but "
                              f"{self.config['dataset']} has {num_classes} classes: expected ({num_classes},)")

    def objective(self, model):
        """(network to run, loss on its output). A final Softmax with CrossEntropyLoss becomes the
        network without it and SoftmaxCrossEntropyLoss: the same loss and gradient, in log space."""
        loss_class = LOSSES[self.config["loss"]]
        if isinstance(model.layers[-1], Softmax) and loss_class is CrossEntropyLoss:
            return Model(model.layers[:-1], model.names[:-1]), SoftmaxCrossEntropyLoss(self.dtype)
        return model, loss_class(self.dtype)

    def check_writable(self, path, key="model_file"):
        """ConfigError unless a file can be written at `path` (its folder is created)."""
        folder = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"{key}: cannot create folder {folder}: {err.strerror}") from None
        if os.path.isdir(path) or not os.access(folder, os.W_OK):
            raise ConfigError(f"{key}: cannot write {path} (not a writable file path)")

    # ---- data --------------------------------------------------------------------------------

    def load_data(self):
        data = load_dataset(self.dataset, log=self.log)
        for key in ("x_train", "x_test"):
            data[key] = data[key].astype(self.dtype, copy=False)
        return data

    def split(self, data):
        """(train x, y, validation x, y): the last `valid_size` training examples validate, and
        the first `train_size` (default: all the others) train."""
        n, valid = len(data["x_train"]), self.config["valid_size"]
        if valid >= n:
            raise DataError(f"valid_size: expected fewer than the {n} training examples, got {valid}")
        cut = n - valid
        train = min(cut, self.config["train_size"] or cut)
        return data["x_train"][:train], data["y_train"][:train], data["x_train"][cut:], data["y_train"][cut:]

    # ---- training ----------------------------------------------------------------------------

    def train(self, resume=False, on_epoch=None):
        """Trains, saving the model with the best validation accuracy to `model_file` as it goes;
        returns the history, one record per epoch.

        SIGINT or SIGTERM writes a checkpoint (see `checkpoint_path`) and raises Interrupted;
        `resume=True` continues from it, giving the weights an uninterrupted run would have.
        `on_epoch(record)`, when given, is called with each epoch's history record and may raise
        to stop training (the tune task's pruner does).
        """
        c = self.config
        model = build_model(c["network"], self.dtype, self.rng, c["network_names"]).skip_input_grad()
        self.check_fits(model)
        self.check_writable(c["model_file"])
        optimizer_args = {k: v for k, v in c["optimizer"].items() if k != "name"}
        optimizer = OPTIMIZERS[c["optimizer"]["name"]](lr=c["lr"], **optimizer_args)
        if not resume and os.path.exists(self.checkpoint_path()):
            raise ConfigError(f"{self.checkpoint_path()} holds an interrupted run: continue it with --resume, "
                              "or delete it to start afresh")
        progress = self.load_checkpoint(model, optimizer) if resume else new_progress()
        self.log.debug(repr(model))
        data = self.split(self.load_data())
        self.log.info(f"training on {len(data[0])} examples, validating on {len(data[2])}; "
                      f"{sum(p.size for p in model.params.values()):,} parameters"
                      + (f"; resuming at epoch {progress['epoch']}, batch {progress['batch'] + 1}" if resume else ""))
        net, loss = self.objective(model)
        with stop_requests() as stop:
            while progress["epoch"] <= c["num_epochs"] and not progress["stopped"]:
                self.train_epoch(model, net, loss, optimizer, data, progress, stop, on_epoch)
        if not len(data[2]):
            save_model(c["model_file"], model, c, {"epoch": progress["epoch"] - 1})
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.checkpoint_path())
        best = f" (best validation accuracy {100 * progress['best_accuracy']:.2f}%)" if len(data[2]) else ""
        self.log.info(f"saved model to {c['model_file']}{best}")
        return progress["history"]

    def train_epoch(self, model, net, loss, optimizer, data, progress, stop, on_epoch=None):
        """Trains the rest of epoch `progress["epoch"]`, then validates, logs and saves.
        `net` and `loss` come from `objective(model)`; `model` is what gets saved."""
        c, epoch = self.config, progress["epoch"]
        x_train, y_train, x_valid, y_valid = data
        optimizer.lr = learning_rate(epoch, c["lr"], c["schedule"], c["num_epochs"], c["decay_rate"],
                                     c["start_epoch_decay"], c["warmup_epochs"])
        if progress["order"] is None:
            progress["order"] = self.rng.permutation(len(x_train))
        start = time.perf_counter()
        self.train_batches(net, loss, optimizer, x_train, y_train, progress, stop, model)
        record = {"epoch": epoch, "train_loss": progress["loss_sum"] / len(x_train),
                  "train_accuracy": progress["correct"] / len(x_train),
                  "valid_loss": None, "valid_accuracy": None, "lr": optimizer.lr}
        if len(x_valid) and (epoch % c["valid_epoch"] == 0 or epoch == c["num_epochs"]):
            record["valid_loss"], record["valid_accuracy"], _ = self.evaluate(net, loss, x_valid, y_valid)
            if record["valid_accuracy"] > progress["best_accuracy"]:
                progress["best_accuracy"], progress["stale"] = record["valid_accuracy"], 0
                save_model(c["model_file"], model, c, {"epoch": epoch})
            else:
                progress["stale"] += 1
        record["seconds"] = progress["seconds"] + time.perf_counter() - start
        progress["history"].append(record)
        self.log.info(epoch_line(record, c["num_epochs"]))
        self.save_history(progress["history"])
        if on_epoch:
            on_epoch(record)
        progress.update(epoch=epoch + 1, batch=0, order=None, loss_sum=0.0, correct=0, seconds=0.0)
        if c["patience"] and progress["stale"] >= c["patience"]:
            self.log.info(f"early stop: no better validation accuracy in {progress['stale']} validations")
            progress["stopped"] = True

    def train_batches(self, net, loss, optimizer, x, y, progress, stop, model):
        """The remaining mini-batches of the epoch, in the order `progress["order"]`."""
        batch_size, order, epoch = self.config["batch_size"], progress["order"], progress["epoch"]
        batches, start, first = math.ceil(len(x) / batch_size), time.perf_counter(), progress["batch"]
        net.train()
        while progress["batch"] < batches:
            b = progress["batch"]
            index = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = x[index], y[index]
            if self.config["augment"]:                         # training batches only
                xb = random_affine(xb, self.info.image_shape, self.rng, **self.config["augment"])
            with np.errstate(over="ignore", invalid="ignore"):    # a non-finite loss is reported below
                out = net.forward(xb)
                value = loss.forward(out, yb)
            if not math.isfinite(value):
                raise DivergenceError(f"training diverged at epoch {epoch}, batch {b + 1}: the loss is {value} "
                                      f"(try a lower lr than {optimizer.lr:g}); the best model so far is kept "
                                      f"in {self.config['model_file']}")
            net.backward(loss.backward())
            if self.config["clip_grad_norm"]:
                clip_grad_norm(net.grads, self.config["clip_grad_norm"])
            optimizer.step(net.params, net.grads)
            progress["loss_sum"] += value * len(index)
            progress["correct"] += int((out.argmax(axis=1) == yb).sum())
            progress["batch"] = b + 1
            seen = min(len(x), (b + 1) * batch_size)
            rate = (seen - first * batch_size) / max(time.perf_counter() - start, 1e-9)   # examples per second
            self.log.progress(b + 1, batches, f"loss {fmt(progress['loss_sum'] / seen)} acc "
                                              f"{progress['correct'] / seen:.4f} {rate:.0f} ex/s "
                                              f"eta {(len(x) - seen) / rate:.0f}s")
            if stop.is_set():
                progress["seconds"] += time.perf_counter() - start
                self.save_checkpoint(model, optimizer, progress)
                raise Interrupted(f"interrupted at epoch {epoch}, batch {b + 1}; checkpoint saved to "
                                  f"{self.checkpoint_path()}: continue with --resume")

    # ---- checkpoints -------------------------------------------------------------------------

    def checkpoint_path(self):
        return os.path.splitext(self.config["model_file"])[0] + ".ckpt"

    def save_checkpoint(self, model, optimizer, progress):
        """Everything a resumed run needs: weights, optimizer state, random state, position."""
        save_model(self.checkpoint_path(), model, self.config, {
            "optimizer": optimizer.state_dict(), "rng": self.rng.bit_generator.state, "progress": progress})

    def load_checkpoint(self, model, optimizer):
        """Restores model, optimizer and random state from the checkpoint; returns the progress."""
        path = self.checkpoint_path()
        payload = read_pickle(path, what="checkpoint", hint="nothing to resume: train without --resume")
        if not {"optimizer", "rng", "progress"} <= payload.keys():
            raise ModelFileError(f"{path}: not a checkpoint (a model file?); train without --resume")
        ignored = ("task", "log_level", "log_file")
        changed = [k for k in self.config if k not in ignored and payload["config"].get(k) != self.config[k]]
        if changed:
            raise ConfigError(f"--resume: {path} was made with other values of {', '.join(changed)}; "
                              "resume with the same config or train without --resume")
        copy_arrays(model, payload, path)
        optimizer.load_state_dict(payload["optimizer"])
        self.rng.bit_generator.state = payload["rng"]
        return payload["progress"]

    def evaluate(self, net, loss, x, y):
        """(mean loss, accuracy, predicted classes) of `net` in eval mode."""
        out = forward_in_eval_mode(net, x)
        predictions = out.argmax(axis=1)
        return loss.forward(out, y), float((predictions == y).mean()), predictions

    def history_path(self):
        return os.path.splitext(self.config["model_file"])[0] + ".history.json"

    def read_history(self):
        """The saved training history, or None (with a warning if it exists but cannot be read)."""
        try:
            with open(self.history_path(), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            self.log.warning(f"{self.history_path()}: cannot read the training history ({err}); no curves drawn")
            return None

    def save_history(self, history):
        with atomic_write(self.history_path(), "w") as f:
            json.dump(history, f, indent=1)

    # ---- testing and looking ------------------------------------------------------------------

    def load_trained(self):
        """The trained model from `model_file`, checked against the dataset, in eval mode."""
        model, saved = load_model(self.config["model_file"])
        self.dtype = model.dtype                      # the data is cast to what the model was saved in
        if saved.get("dataset") != self.config["dataset"]:
            self.log.warning(f"the model was trained on {saved.get('dataset')}, not {self.config['dataset']}")
        self.check_fits(model)
        return model

    def probabilities(self, model, x):
        """Class probabilities of `model` (eval mode) for the examples x, in batches."""
        net, _ = self.objective(model)
        ends_in_softmax = net is model and isinstance(model.layers[-1], Softmax)
        out = forward_in_eval_mode(net, x)
        return out if ends_in_softmax else Softmax(self.dtype).forward(out)

    def test(self):
        """Evaluates the saved model on the test set: the seed's three lines, then per-class
        accuracy and the confusion matrix."""
        model = self.load_trained()
        data = self.load_data()
        y = data["y_test"]
        predicted = self.probabilities(model, data["x_test"]).argmax(axis=1)
        errors, n = int((predicted != y).sum()), len(y)
        self.log.result(f"Number of errors: {errors}/{n}")
        self.log.result(f"Error Rate: {100 * errors / n:.2f}%")
        self.log.result(f"Test accuracy: {100 * (n - errors) / n:.2f}%")
        matrix = confusion_matrix(y, predicted, self.info.num_classes)
        self.log.result(confusion_text(matrix, self.info.class_names))
        return (n - errors) / n

    def summary(self):
        """Prints the network as a table, from the config alone (no data, no model file)."""
        model = build_model(self.config["network"], self.dtype, self.rng, self.config["network_names"])
        self.check_fits(model)
        self.log.result(model.summary(self.info.input_shape))

    def plot(self):
        """Writes PNG pictures of the data and, with a trained model, of what it learned."""
        import plots
        c, info = self.config, self.info
        show, folder, split, count = c["show"], c["plot_dir"], c["plot"]["split"], c["plot"]["count"]
        self.check_writable(os.path.join(folder, "samples.png"), "plot_dir")
        model = self.load_trained() if c["plot"]["model"] else None
        data = self.load_data()
        x, y = data[f"x_{split}"][:count], data[f"y_{split}"][:count]
        paths = [plots.samples(x, y, info.class_names, info.image_shape, os.path.join(folder, "samples.png"),
                               show, title=f"{c['dataset']} {split} samples")]
        if model is not None:
            probs = self.probabilities(model, data["x_test"])
            matrix = confusion_matrix(data["y_test"], probs.argmax(axis=1), info.num_classes)
            paths.append(plots.confusion(matrix, info.class_names, os.path.join(folder, "confusion.png"), show))
            paths.append(plots.mistakes(data["x_test"], data["y_test"], probs, info.class_names, info.image_shape,
                                        os.path.join(folder, "mistakes.png"), show=show))
            weight = first_layer_weight(model, info.image_shape)
            if weight is None:
                self.log.info("first_layer.png skipped: the first layer with weights does not read the pixels")
            else:
                paths.append(plots.first_layer(weight, info.image_shape, os.path.join(folder, "first_layer.png"),
                                               show=show))
            history = self.read_history()
            if history:
                paths.append(plots.training_curves(history, os.path.join(folder, "curves.png"), show))
        for path in paths:
            self.log.result(f"wrote {path}")
        if show:
            plots.pyplot(show).show()
        return paths

    def predict(self):
        """Classifies the user's images: one line per file, `FILE: CLASS probability (top-3 ...)`."""
        c, names = self.config, self.info.class_names
        if not c["input"]:
            raise ConfigError("input: no images to predict (give them with --input FILE [FILE ...])")
        if int(np.prod(self.info.input_shape)) != 28 * 28:
            raise ConfigError(f"dataset: predict prepares 28x28 images, but {c['dataset']} has examples "
                              f"of shape {self.info.input_shape}")
        model = self.load_trained()
        images = np.stack([prepare_image(path) for path in c["input"]])          # (N, 28, 28)
        probs = self.probabilities(model, images.reshape(len(images), *self.info.input_shape).astype(self.dtype))
        for path, image, p in zip(c["input"], images, probs):
            top = np.argsort(-p)[:3]
            others = ", ".join(f"{names[k]} {p[k]:.4f}" for k in top)
            self.log.result(f"{path}: {names[top[0]]} {p[top[0]]:.4f} (top-3: {others})")
            if c["save_prepared"]:
                import plots
                stem = os.path.splitext(os.path.basename(path))[0]
                target = os.path.join(c["plot_dir"], f"{stem}.prepared.png")
                self.check_writable(target, "plot_dir")
                with atomic_write(target) as f:
                    plots.pyplot(False).imsave(f, image, cmap="gray", vmin=0, vmax=1, format="png")
                self.log.result(f"wrote {target}")
        return probs


def forward_in_eval_mode(net, x):
    """net's outputs for every example of x, in eval mode and batches of EVAL_BATCH; the mode
    net was in is restored."""
    was_training = net.training
    net.eval()
    out = np.concatenate([net.forward(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    net.train(was_training)
    return out


def first_layer_weight(model, image_shape):
    """The first weights that read the pixels: a Linear's (n_in, n_out) or a Conv2D's
    (F, C, k, k) right after the input (only reshaping layers before it), else None."""
    for layer in model.layers:
        if "weight" in layer.params:
            weight = layer.params["weight"]
            reads_pixels = weight.ndim == 4 or weight.shape[0] == int(np.prod(image_shape))
            return weight if reads_pixels else None
        if not isinstance(layer, (Reshape, Flatten)):
            return None
    return None


def confusion_matrix(y, predicted, num_classes):
    """matrix[i, j] = how many examples of class i were predicted as class j."""
    return np.bincount(y * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_text(matrix, class_names):
    """Per-class accuracy, then the confusion matrix (rows true, columns predicted), as text."""
    width = max(6, *map(len, class_names))
    lines = ["", "Per-class accuracy:"]
    for name, row, hits in zip(class_names, matrix, np.diag(matrix)):
        lines.append(f"  {name:>{width}}: {100 * hits / max(row.sum(), 1):6.2f}%  ({hits}/{row.sum()})")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):",
              " " * (width + 2) + "".join(f"{name[:width]:>{width + 1}}" for name in class_names)]
    for name, row in zip(class_names, matrix):
        lines.append(f"  {name:>{width}}" + "".join(f"{v:>{width + 1}}" for v in row))
    return "\n".join(lines)


def epoch_line(record, num_epochs):
    """Epoch 3/30  train loss 0.1234 acc 96.50%  valid loss 0.1111 acc 96.80%  lr 0.1  2.1s"""
    line = (f"epoch {record['epoch']}/{num_epochs}  train loss {fmt(record['train_loss'])} "
            f"acc {100 * record['train_accuracy']:.2f}%")
    if record["valid_loss"] is not None:
        line += f"  valid loss {fmt(record['valid_loss'])} acc {100 * record['valid_accuracy']:.2f}%"
    return line + f"  lr {record['lr']:.4g}  {record['seconds']:.1f}s"
