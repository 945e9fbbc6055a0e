"""Watching a network learn: what every layer does, every few training batches, and what it says.

With `"watch": {"every": N}` in the config, the engine hands every Nth training batch (the
first included) to a `Watcher`, which records for each layer, in network order:
  * its output: mean, standard deviation, a histogram, and for ReLU the fraction of dead units
    (0 for every example of the batch; a conv layer's unit is a channel, dead when 0 at every
    position), for Tanh and Sigmoid the fraction of saturated values
    (within 0.01 of a bound, where the slope is below 0.02);
  * the norm of dL/dx, the gradient that reaches its input;
  * for each parameter: its norm and a histogram, its gradient's norm and a histogram, and the
    update-to-weight ratio ||w_after - w_before|| / ||w_before|| of the optimizer's real step.
`diagnose` reads the record and names, in words, the problems it shows.

Recording changes nothing. The outputs and gradients come from a second forward and backward
pass over the same batch, at the same weights, through a copy of the layers (a copy of
Dropout's generator draws the same mask; BatchNorm's running averages move in the copy only),
run before the real step in the calling thread. The real step is untouched, on any number of
threads and on any device, so a run gives the same weights bit for bit with and without watch.
Only the parameters are read around the real step, for the update ratios. The statistics are
computed where the arrays are, and on a GPU come to the host in one copy per record.

This module computes and judges; the engine decides when, runfiles.py keeps the record beside
the model, plots.py draws it and board.py writes it for TensorBoard.
"""
import copy
import math

import numpy as np

from backend import to_numpy
from nn_module import ReLU, Sigmoid, Tanh

BINS = 30                   # bars of each histogram
SAMPLE = 2 ** 16            # values counted by a histogram at most
SATURATED = 0.01            # a tanh or sigmoid value this close to a bound is saturated


class Watcher:
    """Records every `every`th training batch of `model` into `records` (a list it appends to,
    which a resumed run hands back); an epoch has `batches` training batches."""

    def __init__(self, model, every, batches, records):
        self.model, self.every, self.batches, self.records = model, every, batches, records

    def record(self):
        """The record as saved beside the model (runfiles.save_watch) and read by diagnose and
        the plots: {"every", "batches_per_epoch", "layout", "records"}."""
        return {"every": self.every, "batches_per_epoch": self.batches, "layout": self.layout(),
                "records": self.records}

    def layout(self):
        """What the record's lists hold, in order: each layer's name (as the config names it:
        "fc1", or "network[0]" for a list), class, parameters and their shapes."""
        return [{"name": name.removeprefix("network."), "type": type(layer).__name__, "params": list(layer.params),
                 "shapes": [list(p.shape) for p in layer.params.values()]}
                for name, layer in zip(self.model.names, self.model.layers)]

    def due(self, step):
        return step % self.every == 0

    def look(self, loss, x, y):
        """Before the real step on (x, y): the layers' outputs and gradients, from a copy of the
        layers, and the parameters' values, as device arrays (a `Look`)."""
        layers = copy.deepcopy(self.model.layers)
        outputs = []
        for layer in layers:
            layer.needs_grad_x = True                     # the copy also gives dL/dx at the input
            x = layer.forward(x)
            outputs.append(x)
        loss.forward(x, y)
        grad, grads_in = loss.backward(), [None] * len(layers)
        for i in reversed(range(len(layers))):
            grad = grads_in[i] = layers[i].backward(grad)
        values = []
        for layer, y_out, grad_in in zip(self.model.layers, outputs, grads_in):     # a layer may give no dL/dx
            values += output_statistics(layer, y_out) + [nan_beside(y_out) if grad_in is None else norm(grad_in)]
        for layer, twin in zip(self.model.layers, layers):
            for name, p in layer.params.items():
                values += [norm(p), norm(twin.grads[name])] + histogram(p) + histogram(twin.grads[name])
        before = [p.copy() for layer in self.model.layers for p in layer.params.values()]
        return values, before

    def keep(self, look, step, epoch, batch, lr, loss_value):
        """After the real step, whose loss was `loss_value` (a 0-d array where the batch is):
        appends the record of batch `step` (a dict of host numbers)."""
        values, before = look
        after = [p for layer in self.model.layers for p in layer.params.values()]
        ratios = [update_ratio(a, b) for a, b in zip(after, before)]
        arrays = values + ratios + [loss_value]
        *numbers, loss_value = to_numpy(np.concatenate([np.reshape(v, -1).astype(np.float64) for v in arrays])).tolist()
        self.records.append(unpack(iter(numbers), self.layout(), step, epoch, batch, lr, loss_value))


def norm(a):
    """||a||, the L2 norm over every element, as a 0-d array where `a` is."""
    return np.sqrt(np.sum(np.square(a, dtype=np.float64)))


def update_ratio(after, before):
    """||after - before|| / ||before||, NaN for a parameter that was all zeros (a bias at first)."""
    size = norm(before)
    return np.where(size > 0, norm(after - before) / np.maximum(size, np.finfo(np.float64).tiny), np.nan)


def nan_beside(a):
    """NaN (no value), as a 0-d array where `a` is."""
    return np.zeros_like(a, shape=(), dtype=np.float64) + np.nan


def histogram(a):
    """[lowest, highest, counts of BINS equal bars between them], computed where `a` is. The
    counts of an array larger than SAMPLE are those of every kth of its values (k the smallest
    that leaves at most SAMPLE), evenly spread over it: the same shape, at a fraction of the cost.
    Only finite values are counted (a diverging run has others; the loss says so), and an array
    with none gives low = inf, high = -inf and no counts."""
    finite = np.isfinite(a)
    low, high = np.where(finite, a, np.inf).min(), np.where(finite, a, -np.inf).max()
    # in float64, where the span of two float32 values (or of float64 ones up to 1e307) is finite
    width = np.maximum(high.astype(np.float64) - low, np.finfo(np.float64).tiny) / BINS
    step = -(-a.size // SAMPLE)
    values, counted = a.reshape(-1)[::step].astype(np.float64), finite.reshape(-1)[::step]
    with np.errstate(invalid="ignore", over="ignore"):
        bar = np.where(counted, (values - low) / width, 0)
    bar = np.clip(bar, 0, BINS - 1).astype(np.int64)
    return [low, high, np.bincount(bar, weights=counted, minlength=BINS)]


def output_statistics(layer, y):
    """mean, std, histogram, and the dead (ReLU) or saturated (Tanh, Sigmoid) fraction of y."""
    if isinstance(layer, ReLU):
        fraction = dead_fraction(y)
    elif isinstance(layer, Tanh):
        fraction = np.mean(np.abs(y) > 1 - SATURATED)
    elif isinstance(layer, Sigmoid):
        fraction = np.mean(np.abs(y - 0.5) > 0.5 - SATURATED)
    else:
        fraction = nan_beside(y)
    return [np.mean(y), np.std(y)] + histogram(y) + [fraction]


def dead_fraction(y):
    """The share of y's units that are 0 for every example: y's features (its last axis), or
    the channels of a conv layer's (N, C, H, W), where one filter feeds every position (so the
    black border of an image, 0 everywhere, does not count as dead units)."""
    axes = (0, 2, 3) if y.ndim == 4 else tuple(range(y.ndim - 1))
    return np.mean(np.all(y == 0, axis=axes))


def unpack(numbers, layout, step, epoch, batch, lr, loss_value):
    """The record, read from the host numbers in the order Watcher.look and keep wrote them."""
    def hist():
        low, high = next(numbers), next(numbers)
        return {"low": low, "high": high, "counts": [int(next(numbers)) for _ in range(BINS)]}

    def maybe(value):
        return None if math.isnan(value) else value

    layers = []
    for entry in layout:
        mean, std, output, fraction, grad_in = next(numbers), next(numbers), hist(), next(numbers), next(numbers)
        layers.append({"mean": mean, "std": std, "hist": output, "fraction": maybe(fraction),
                       "grad_in": maybe(grad_in), "params": {}})
    for layer, entry in zip(layers, layout):
        for name in entry["params"]:
            layer["params"][name] = {"norm": next(numbers), "grad": next(numbers), "hist": hist(), "grad_hist": hist()}
    for layer, entry in zip(layers, layout):
        for name in entry["params"]:
            layer["params"][name]["ratio"] = maybe(next(numbers))
    return {"step": step, "epoch": epoch, "batch": batch, "lr": lr, "loss": loss_value, "layers": layers}


# ---- what the record says ------------------------------------------------------------------

DEAD = 0.3              # a ReLU layer with more of its units dead than this has a problem
MOSTLY = 0.5            # a tanh or sigmoid layer with more of its values saturated than this
VANISHING = 1e-2        # first layer's typical weight gradient below this times the last's
EXPLODING = 1e2         # or above this
TOO_HIGH = 1e-1         # an update-to-weight ratio above this is far too high (about 1e-3 is healthy)
TOO_LOW = 1e-5


def diagnose(watch):
    """Plain lines that name each problem `watch` (a saved record) shows, with its evidence and
    a hint, in network order; [] when it shows none."""
    layout, records = watch["layout"], watch["records"]
    if not records:
        return []
    lines = []
    for i, entry in enumerate(layout):
        fractions = [r["layers"][i]["fraction"] for r in records]
        if entry["type"] == "ReLU" and lasting(fractions, DEAD):
            since, share = lasting(fractions, DEAD)
            lines.append(f"{entry['name']}: {share:.0%} of its units gave 0 for every example of a batch since "
                         f"epoch {records[since]['epoch']} (dead ReLUs): try a lower lr or LeakyReLU")
        if entry["type"] in ("Tanh", "Sigmoid") and lasting(fractions, MOSTLY):
            since, share = lasting(fractions, MOSTLY)
            lines.append(f"{entry['name']}: {share:.0%} of its outputs are saturated (within {SATURATED} of a "
                         f"bound, where the slope is nearly 0) since epoch {records[since]['epoch']}: the "
                         "initial weights are too large; try init \"xavier\" or a smaller std")
    if any("dead ReLUs" in line for line in lines):        # dead units pass no gradient: no other cause
        return lines + [line for line in ratio_lines(layout, records) if "too high" in line]
    return lines + gradient_lines(layout, records) + ratio_lines(layout, records)


def lasting(fractions, threshold):
    """(first record, mean fraction since) of the run of records at the end whose fraction is
    above `threshold`, if that run is at least the last third of the records; else None."""
    start = len(fractions)
    while start > 0 and fractions[start - 1] is not None and fractions[start - 1] > threshold:
        start -= 1
    if len(fractions) - start < max(1, len(fractions) / 3):
        return None
    return start, float(np.mean(fractions[start:]))


def weights(layout):
    """(layer index, parameter name, its size) of every weight matrix or kernel, in order."""
    return [(i, name, size) for i, entry in enumerate(layout)
            for name, shape in zip(entry["params"], entry["shapes"]) if len(shape) >= 2
            for size in [int(np.prod(shape))]]


def gradient_lines(layout, records):
    """Vanishing or exploding gradients: the typical size of a weight's gradient (its RMS, the
    norm over the square root of its size; the median over the records) at the first weighted
    layer against the last."""
    found = weights(layout)
    if len(found) < 2:
        return []
    (first, name_first, size_first), (last, name_last, size_last) = found[0], found[-1]
    rms = lambda i, name, size: np.median([r["layers"][i]["params"][name]["grad"] for r in records]) / size ** 0.5
    ratio = rms(first, name_first, size_first) / max(rms(last, name_last, size_last), 1e-300)
    names = f"{layout[first]['name']}.{name_first}", f"{layout[last]['name']}.{name_last}"
    if ratio < VANISHING:
        return [f"{names[0]}: its gradients are {ratio:.1e} of those at {names[1]} (vanishing gradients: "
                "the first layers barely learn): try ReLU or BatchNorm"]
    if ratio > EXPLODING:
        return [f"{names[0]}: its gradients are {ratio:.1e} times those at {names[1]} (exploding gradients): "
                "try BatchNorm, clip_grad_norm or a lower lr"]
    return []


def ratio_lines(layout, records):
    """Steps too large or too small for the weights: the median update-to-weight ratio of each
    weight over the records at the run's highest learning rates (at least half the highest:
    a schedule's decay to small steps at the end is no problem)."""
    peak = max(r["lr"] for r in records)
    chosen = [r for r in records if r["lr"] >= peak / 2]
    lines = []
    for i, name, _ in weights(layout):
        ratios = [r["layers"][i]["params"][name]["ratio"] for r in chosen]
        ratios = [v for v in ratios if v is not None]
        if not ratios:
            continue
        median = float(np.median(ratios))
        where = f"{layout[i]['name']}.{name}"
        if median > TOO_HIGH:
            lines.append(f"{where}: each step changes it by {median:.1e} of its size (update/weight ratio; "
                         f"about 1e-3 is healthy): the lr ({peak:g}) is too high, try {peak / 10:g}")
        elif median < TOO_LOW:
            lines.append(f"{where}: each step changes it by {median:.1e} of its size (update/weight ratio; "
                         f"about 1e-3 is healthy): the lr ({peak:g}) is too low, try {peak * 10:g}")
    return lines
