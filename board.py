"""A run in TensorBoard: its event files, written by tensorboardX (the one module that imports it).

With `"tensorboard": "runs"` in the config, training writes `runs/<model name>/`, which
`tensorboard --logdir runs` shows as users of TensorBoard know it. A fresh run replaces the
event files an earlier run left there, once its first epoch ends (so that a run which fails to
start loses nothing); `--resume` adds to them.
  * Scalars: train/loss and train/lr every batch (x axis: the training batch, counted from 0
    over the whole run); epoch/train_loss, epoch/train_accuracy, epoch/valid_loss,
    epoch/valid_accuracy and epoch/lr every epoch (x axis: the epoch); with "watch", every
    recorded layer's output mean and std, dead or saturated fraction, dL/dx norm, and each
    parameter's norm, gradient norm and update-to-weight ratio (x axis: the batch).
  * Histograms, with "watch": each layer's outputs and each parameter's values and gradients,
    as the record's histograms (watch.py), at every recorded batch.
"""
import contextlib
import glob
import itertools
import os

from errors import ConfigError

RUNS = itertools.count()   # tensorboardX names a file by the second it opens; two runs in one second
                           # (a test, a resume) must still write two files


class Board:
    """The event files of one run, in `folder/run`; `fresh`: the files already there are an
    earlier run's, removed at the end of this run's first epoch."""

    def __init__(self, folder, run, fresh):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError("tensorboard: writing TensorBoard's files needs the tensorboardX package "
                              "(pip install tensorboardX), or leave the key out") from None
        self.path = os.path.join(folder, run)
        events = os.path.join(glob.escape(self.path), "events.out.tfevents.*")
        try:
            os.makedirs(self.path, exist_ok=True)
            self.earlier = glob.glob(events) if fresh else []
            self.writer = SummaryWriter(self.path, filename_suffix=f".{os.getpid()}.{next(RUNS)}")
        except OSError as err:
            raise ConfigError(f"tensorboard: cannot write {self.path}: {err.strerror or err}") from None

    def batch(self, step, loss, lr):
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def epoch(self, record):
        for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "lr"):
            if record[key] is not None:
                self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        for path in self.earlier:                      # this run now has an epoch of its own
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self.earlier = []

    def watch(self, layout, record):
        """One watch record (watch.Watcher.keep) as scalars and histograms at its batch."""
        step = record["step"]
        for entry, layer in zip(layout, record["layers"]):
            name = entry["name"]
            scalars = {"output_mean": layer["mean"], "output_std": layer["std"], "grad_input_norm": layer["grad_in"],
                       "dead_fraction" if entry["type"] == "ReLU" else "saturated_fraction": layer["fraction"]}
            for key, value in scalars.items():
                if value is not None:
                    self.writer.add_scalar(f"{name}/{key}", value, step)
            self.histogram(f"{name}/output", layer["hist"], step)
            for param, numbers in layer["params"].items():
                for key in ("norm", "grad", "ratio"):
                    if numbers[key] is not None:
                        self.writer.add_scalar(f"{name}/{param}_{'grad_norm' if key == 'grad' else key}",
                                               numbers[key], step)
                self.histogram(f"{name}/{param}", numbers["hist"], step)
                self.histogram(f"{name}/{param}_grad", numbers["grad_hist"], step)

    def histogram(self, tag, hist, step):
        """A record's histogram ({"low", "high", "counts"}) as TensorBoard's: each bar's right
        edge and count; the sums from the bars' centres."""
        low, high, counts = hist["low"], hist["high"], hist["counts"]
        width = (high - low) / len(counts)
        if width <= 0:                                 # every value the same: one bar
            limits, counts = [high], [sum(counts)]
            centres = limits
        else:
            limits = [low + (k + 1) * width for k in range(len(counts))]
            centres = [edge - width / 2 for edge in limits]
        self.writer.add_histogram_raw(tag, min=low, max=high, num=sum(counts),
                                      sum=sum(c * x for c, x in zip(counts, centres)),
                                      sum_squares=sum(c * x * x for c, x in zip(counts, centres)),
                                      bucket_limits=limits, bucket_counts=counts, global_step=step)

    def close(self):
        self.writer.close()
