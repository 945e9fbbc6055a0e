"""Every CPU core at work on one batch: the batch split across threads.

numpy computes a matrix product on several cores (BLAS), but everything else a layer does
(im2col's copy, pooling, elementwise work) on one; and at a batch of 100 even the products are
too small for BLAS's own threads to pay. Most layers, though, treat the examples of a batch
independently, and numpy lets go of Python's lock (the GIL) while it loops over an array, so
threads that each run the layers on their own slice of the batch do run at once.

`BatchSplit(layers, threads)` runs a model's layers that way (`Model.use_threads` sets it up,
for networks with a `worth_splitting` layer: a convolution or a pooling layer).
The batch is cut into slices at the input and joined again at the output; in between, every
layer works on the slices, one step after another:
  * a run of layers whose `per_example` is true (the output for an example depends on that
    example alone, and the layer draws no random numbers) runs on each slice, in replicas of
    the layers: copies that share the parameter arrays and keep caches and gradients of their
    own. A parameter's gradient, a sum over the examples, is then the sum of its replicas';
  * a layer with `forward_sums` (BatchNorm in training) needs sums over the whole batch: each
    slice is summed, the layer adds up the slices' sums once, and each slice is finished with
    the total;
  * any other layer (Dropout in training: its masks come from the run's one generator, in
    order; a layer of your own unless it says otherwise) gets the batch joined, whole.
There are two slices per thread, which the calling thread and a pool of threads - 1 more take
one by one: a thread that gets ahead takes another slice, so a core busy with something else
slows a step less, and a smaller slice stays in a core's cache (README, Performance).

The numbers are the model's own up to rounding (sums over the batch are added in another
order), and a run with the same number of threads is exactly reproducible. MLPs are not split:
their time is in matrix products, and each thread of a split Linear layer would pack all of its
weights for a share of the work. Nor are recurrent networks: each time step works on arrays so
small that the threads mostly wait on each other for Python's lock. (README, Performance, has
the measurements.) This is CPU-only: on a GPU one kernel already fills the device.
"""
import contextvars
import copy
import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

SLICES_PER_THREAD = 2


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
    """Whether splitting the batch across threads pays for these layers (see above)."""
    return any(layer.worth_splitting for layer in layers)


def replica(layer):
    """A copy of `layer` that shares its parameters (the very same arrays) and has caches and
    gradients of its own; its forward and backward leave the layer's own untouched."""
    twin = copy.copy(layer)
    twin.grads = {name: np.zeros_like(grad) for name, grad in layer.grads.items()}
    return twin


def stages(layers):
    """`layers` cut into stages (kind, first, stop), each over layers[first:stop], in order:
    "examples" for a run of per-example layers, "sums" for one layer whose pass needs sums over
    the batch (it has forward_sums: BatchNorm in training), "whole" for one that needs the batch
    itself."""
    cut = []
    for i, layer in enumerate(layers):
        if layer.per_example:
            kind = "examples"
        elif hasattr(layer, "forward_sums"):
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


def forward_sums(layers, x):
    (layer,) = layers
    return layer.forward_sums(x)


def forward_finish(total, layers, x):              # x: forward_sums kept what it needs
    (layer,) = layers
    return layer.forward_finish(total)


def backward_sums(layers, grad_y):
    (layer,) = layers
    return layer.backward_sums(grad_y)


def backward_finish(total, layers, grad_y):
    (layer,) = layers
    return layer.backward_finish(grad_y, total)


class BatchSplit:
    """Forward and backward through `layers` with each batch split across `threads` threads.

    forward(x) keeps the slices, the stages and the replicas (replicas[s][i]: slice s's copy of
    layers[i]); backward(grad_y) goes back through the same stages with the same replicas.
    """

    def __init__(self, layers, threads):
        self.layers, self.threads = layers, threads
        self.pool = ThreadPoolExecutor(max(threads - 1, 1), thread_name_prefix="batch-slice")
        self.slices, self.stages, self.replicas = None, None, None

    def close(self):
        """Lets the pool's threads end (they also do once the BatchSplit is garbage)."""
        self.pool.shutdown(wait=False)

    def on_slices(self, work, parts, first, stop):
        """[work(replicas of layers[first:stop] for slice s, parts[s]) for each slice s]: this
        thread and the pool's take the slices one by one until none is left."""
        jobs = [(twins[first:stop], part) for twins, part in zip(self.replicas, parts)]
        results = [None] * len(jobs)
        untaken, lock = iter(range(len(jobs))), threading.Lock()

        def take_slices():
            while True:
                with lock:
                    s = next(untaken, None)
                if s is None:
                    return
                results[s] = work(*jobs[s])

        # each helper runs in a copy of this thread's context, so numpy's error settings
        # (np.errstate: the engine's, or yours) hold in it too
        helpers = [self.pool.submit(contextvars.copy_context().run, take_slices) for _ in range(self.threads - 1)]
        try:
            take_slices()
        finally:
            with lock:
                for _ in untaken:          # after an error here (a second Ctrl-C), no helper takes more
                    pass
            wait(helpers)                  # no thread still works on these replicas when this returns
        for helper in helpers:
            helper.result()                # raises what a helper raised
        return results

    def forward(self, x):
        self.slices = batch_slices(len(x), SLICES_PER_THREAD * self.threads)
        self.stages = stages(self.layers)
        self.replicas = [[replica(layer) for layer in self.layers] for _ in self.slices]
        parts = [x[part] for part in self.slices]
        for kind, first, stop in self.stages:
            if kind == "examples":
                parts = self.on_slices(forward_through, parts, first, stop)
            elif kind == "sums":
                total = self.layers[first].forward_total(self.on_slices(forward_sums, parts, first, stop))
                parts = self.on_slices(functools.partial(forward_finish, total), parts, first, stop)
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
                total = self.layers[first].backward_total(self.on_slices(backward_sums, parts, first, stop))
                parts = self.on_slices(functools.partial(backward_finish, total), parts, first, stop)
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
