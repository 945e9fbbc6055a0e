"""Every CPU core at work on one batch: the batch split across threads.

numpy computes a matrix product on several cores (BLAS), but everything else a layer does
(im2col's copy, pooling, elementwise work) on one; and at a batch of 100 even the products are
too small for BLAS's own threads to pay. Most layers, though, treat the examples of a batch
independently, and numpy lets go of Python's lock (the GIL) while it loops over an array, so
threads that each run the layers on their own slice of the batch do run at once.

`BatchSplit(layers, threads)` runs a model's layers that way (`Model.use_threads` sets it up,
for networks with a convolution or a pooling layer: `worth_splitting`). The batch is cut into
slices at the input and joined again at the output; in between, every layer works on the
slices, one step after another:
  * a run of layers that treat each example apart (`by_example`: the output for an example
    depends on that example alone, and the layer draws no random numbers) runs on each slice,
    in replicas of the layers: copies that share the parameter arrays and keep caches and
    gradients of their own. A parameter's gradient, a sum over the examples, is then the sum
    of its replicas';
  * BatchNorm in training needs its statistics over the whole batch: `SplitBatchNorm`, built
    from the layer, gathers them from each slice's and finishes each slice with them;
  * any other layer (Dropout in training: its masks come from the run's one generator, in
    order; a layer of your own) gets the batch joined, whole.
There are two slices per thread, which the calling thread and a pool of threads - 1 more take
one by one: a thread that gets ahead takes another slice, so a core busy with something else
slows a step less, and a smaller slice stays in a core's cache (docs/performance.md).

The numbers are the model's own up to rounding (sums over the batch are added in another
order), and a run with the same number of threads is exactly reproducible. MLPs are not split:
their time is in matrix products, and each thread of a split Linear layer would pack all of its
weights for a share of the work. Nor are recurrent networks: each time step works on arrays so
small that the threads mostly wait on each other for Python's lock. (docs/performance.md has
the measurements.) This is CPU-only: on a GPU one kernel already fills the device.
"""
import contextvars
import copy
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from nn_module import (AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, GRU, LeakyReLU, Linear, LSTM, MaxPool2D,
                       ReLU, Reshape, RNN, Sigmoid, Softmax, Tanh, per_channel_dot)

SLICES_PER_THREAD = 2

# What the split needs to know of a layer lives here, beside the split, as a table of the
# built-in classes rather than as attributes of the layers: it is a fact about threads, not
# about the maths a reader of nn_module.py came for, and the one place that relies on it can
# show all of it at once (tests/test_parallel.py checks each entry against the whole batch).
# The table holds exact classes: a subclass, such as a layer of your own built on Linear, may
# change what its forward does, so it keeps the whole batch, as every layer not named here.
BY_EXAMPLE = {Linear, ReLU, LeakyReLU, Tanh, Sigmoid, Softmax, Conv2D, MaxPool2D, AvgPool2D, Flatten, Reshape,
              RNN, LSTM, GRU}
# Layers with much work outside matrix products, on large arrays: a network is split only if it
# holds one (an MLP's time goes to its products, which BLAS already spreads over the cores; a
# recurrent layer's time steps work on arrays so small that two threads would mostly wait on
# each other for Python's lock: gru.json ran 1.25x slower).
WORTH_SPLITTING = {Conv2D, MaxPool2D, AvgPool2D}


def available_cores():
    """The CPUs this process may use: those it may run on (a container or `taskset` may allow
    fewer than the machine has), fewer still when a CPU quota (cgroup v2) caps its time."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:             # not on Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()             # "max 100000", or "200000 100000" for 2 CPUs
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def worth_splitting(layers):
    """Whether splitting the batch across threads pays for these layers (see WORTH_SPLITTING)."""
    return any(type(layer) in WORTH_SPLITTING for layer in layers)


def by_example(layer):
    """Whether `layer`, in its present mode, treats each example of a batch apart (BY_EXAMPLE):
    in eval mode BatchNorm uses its running averages, and Dropout draws no mask."""
    if type(layer) in (BatchNorm, Dropout):
        return not layer.training or type(layer) is Dropout and layer.p == 0
    return type(layer) in BY_EXAMPLE


def replica(layer):
    """A copy of `layer` that shares its parameters (the very same arrays) and has caches and
    gradients of its own; its forward and backward leave the layer's own untouched."""
    twin = copy.copy(layer)
    twin.grads = {name: np.zeros_like(grad) for name, grad in layer.grads.items()}
    return twin


def stages(layers):
    """`layers` cut into stages (kind, first, stop), each over layers[first:stop], in order:
    "examples" for a run of layers that treat each example apart, "sums" for BatchNorm in
    training (its statistics are the batch's), "whole" for a layer that needs the batch itself."""
    cut = []
    for i, layer in enumerate(layers):
        if by_example(layer):
            kind = "examples"
        elif type(layer) is BatchNorm:
            kind = "sums"
        else:
            kind = "whole"
        if kind == "examples" and cut and cut[-1][0] == "examples":
            cut[-1] = ("examples", cut[-1][1], i + 1)      # the run goes on
        else:
            cut.append((kind, i, i + 1))
    return cut


def batch_slices(n, parts):
    """`parts` slices of about equal size that cover range(n) in order (fewer when n < parts)."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:]) if stop > start]


# The work on one slice, given that slice's replicas of a stage's layers: what on_slices runs.

def forward_through(layers, x):
    """x through the layers, in order."""
    for layer in layers:
        x = layer.forward(x)
    return x


def backward_through(layers, grad_y):
    """dL/dy back through the layers; None once a layer that reads the data gives no dL/dx."""
    for layer in reversed(layers):
        grad_y = layer.backward(grad_y)
        if grad_y is None:
            return None
    return grad_y


class SplitBatchNorm:
    """BatchNorm in training, on a batch cut into slices: the textbook layer's numbers, with the
    batch's mean and variance (and backward's sums) gathered from each slice's own.

    Built from a BatchNorm, as PyTorch's convert_sync_batchnorm builds a SyncBatchNorm, and
    used by BatchSplit in its place: it runs the layer's own `track`, `normalize` and `grad_x`,
    with its parameters and running averages, each slice in a replica of the layer (replicas[s]
    for slice s), and `run(work, jobs)` gives [work(*job) for job in jobs], in threads.
    For a batch in one slice every number is the layer's, bit for bit; for several, the sums
    are added in another order (tests/test_parallel.py holds the two within rounding).
    """

    def __init__(self, layer, run):
        self.layer, self.run = layer, run
        self.count = None

    def forward(self, replicas, parts):
        statistics = self.run(slice_statistics, list(zip(replicas, parts)))
        self.count = sum(n for n, _, _, _ in statistics)
        mean, var = batch_statistics(statistics)
        self.layer.track(mean, var, self.count)
        return self.run(lambda twin, s: twin.normalize(moved(s, mean, twin), var), list(zip(replicas, statistics)))

    def backward(self, replicas, parts):
        sums = self.run(lambda twin, g: (g.sum(axis=twin.axes), per_channel_dot(g, twin.x_hat)),
                        list(zip(replicas, parts)))
        grads = self.layer.grads
        grads["beta"][...] = sum_in_order([grad_beta for grad_beta, _ in sums])       # dL/dbeta = sum dL/dy
        grads["gamma"][...] = sum_in_order([grad_gamma for _, grad_gamma in sums])    # sum dL/dy x_hat
        return self.run(lambda twin, g: twin.grad_x(g, grads["beta"], grads["gamma"], self.count),
                        list(zip(replicas, parts)))


def slice_statistics(twin, x):
    """A slice's count of values a channel, its mean and its (biased) variance, as BatchNorm's
    forward computes them, and x - mean (kept for normalize); `twin` notes the channel axes."""
    twin.axes = (0,) if x.ndim == 2 else (0, 2, 3)
    count = x.size // twin.num_features
    mean = x.mean(axis=twin.axes)
    centred = x - twin.per_channel(mean)
    return count, mean, per_channel_dot(centred, centred) / count, centred


def moved(statistics, mean, twin):
    """A slice's x - slice mean, moved in place to x - batch mean (the same array for one slice)."""
    _, slice_mean, _, centred = statistics
    if slice_mean is not mean:
        centred -= twin.per_channel(mean - slice_mean)
    return centred


def batch_statistics(statistics):
    """The batch's mean and (biased) variance from its slices' counts, means and variances:
    each slice's squared deviations, moved to the batch's mean (Chan, Golub and LeVeque's
    pairwise formula). One slice is the whole batch: its own mean and variance."""
    if len(statistics) == 1:
        return statistics[0][1:3]
    count = sum(n for n, _, _, _ in statistics)
    mean = sum(n / count * slice_mean for n, slice_mean, _, _ in statistics)
    var = sum(n * (slice_var + (slice_mean - mean) ** 2) for n, slice_mean, slice_var, _ in statistics) / count
    return mean, var


def sum_in_order(arrays):
    """arrays[0] + arrays[1] + ...: for one array, that array itself (not 0 + it)."""
    return sum(arrays[1:], arrays[0])


class BatchSplit:
    """Forward and backward through `layers` with each batch split across `threads` threads.

    forward(x) keeps the slices, the stages, the replicas (replicas[s][i]: slice s's copy of
    layers[i]) and a SplitBatchNorm for each BatchNorm in training (batch_norms[i], for
    layers[i]); backward(grad_y) goes back through the same stages with the same replicas.
    """

    def __init__(self, layers, threads):
        self.layers, self.threads = layers, threads
        self.pool = ThreadPoolExecutor(max(threads - 1, 1), thread_name_prefix="batch-slice")
        self.slices, self.stages, self.replicas, self.batch_norms = None, None, None, None

    def close(self):
        """Lets the pool's threads end (they also do once the BatchSplit is garbage)."""
        self.pool.shutdown(wait=False)

    def run(self, work, jobs):
        """[work(*job) for job in jobs]: this thread and the pool's take the jobs one by one
        until none is left."""
        results = [None] * len(jobs)
        untaken, lock = iter(range(len(jobs))), threading.Lock()

        def take_jobs():
            while True:
                with lock:
                    s = next(untaken, None)
                if s is None:
                    return
                results[s] = work(*jobs[s])

        # each helper runs in a copy of this thread's context, so numpy's error settings
        # (np.errstate: the engine's, or yours) hold in it too
        helpers = [self.pool.submit(contextvars.copy_context().run, take_jobs) for _ in range(self.threads - 1)]
        try:
            take_jobs()
        finally:
            with lock:
                for _ in untaken:          # after an error here (a second Ctrl-C), no helper takes more
                    pass
            wait(helpers)                  # no thread still works on these replicas when this returns
        for helper in helpers:
            helper.result()                # raises what a helper raised
        return results

    def on_slices(self, work, parts, first, stop):
        """[work(slice s's replicas of layers[first:stop], parts[s]) for each slice s]."""
        return self.run(work, [(twins[first:stop], part) for twins, part in zip(self.replicas, parts)])

    def replicas_of(self, i):
        """Each slice's replica of layers[i]."""
        return [twins[i] for twins in self.replicas]

    def forward(self, x):
        self.slices = batch_slices(len(x), SLICES_PER_THREAD * self.threads)
        self.stages = stages(self.layers)
        self.replicas = [[replica(layer) for layer in self.layers] for _ in self.slices]
        self.batch_norms = {first: SplitBatchNorm(self.layers[first], self.run)
                            for kind, first, _ in self.stages if kind == "sums"}
        parts = [x[part] for part in self.slices]
        for kind, first, stop in self.stages:
            if kind == "examples":
                parts = self.on_slices(forward_through, parts, first, stop)
            elif kind == "sums":
                parts = self.batch_norms[first].forward(self.replicas_of(first), parts)
            else:
                y = self.layers[first].forward(np.concatenate(parts))
                parts = [y[part] for part in self.slices]
        return np.concatenate(parts)

    def backward(self, grad_y):
        parts = [grad_y[part] for part in self.slices]
        for kind, first, stop in reversed(self.stages):
            if kind == "examples":
                parts = self.on_slices(backward_through, parts, first, stop)
                self.add_up_gradients(first, stop)
            elif kind == "sums":
                parts = self.batch_norms[first].backward(self.replicas_of(first), parts)
            else:
                grad_x = self.layers[first].backward(np.concatenate(parts))
                parts = None if grad_x is None else [grad_x[part] for part in self.slices]
            if parts is None or parts[0] is None:      # a layer reading the data needs no dL/dx
                return None
        return np.concatenate(parts)

    def add_up_gradients(self, first, stop):
        """Each parameter's gradient of layers[first:stop]: the sum of its replicas'."""
        for i in range(first, stop):
            for name, total in self.layers[i].grads.items():
                np.copyto(total, self.replicas[0][i].grads[name])
                for twins in self.replicas[1:]:
                    total += twins[i].grads[name]
