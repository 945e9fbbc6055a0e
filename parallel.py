"""Every CPU core at work on one batch: the batch split across threads.

numpy computes a matrix product on several cores (BLAS), but everything else a layer does
(im2col's copy, pooling, elementwise work) on one; and at a batch of 100 even the products are
too small for BLAS's own threads to pay. Most layers, though, treat the examples of a batch
independently, and numpy lets go of Python's lock (the GIL) while it loops over an array, so
threads that each run the layers on their own slice of the batch really do run at once.

`BatchSplit(layers, threads)` runs a model's layers that way (`Model.use_threads` sets it up).
It cuts the layers into stretches:
  * layers whose `per_example` is true (the output for an example depends on that example
    alone, and the layer draws no random numbers) make up stretches, which run in the threads
    when one of their layers is `worth_splitting` (a convolution, a pooling or a recurrent
    layer: much work for every value it gives). Other stretches run whole: joining the slices
    again costs a copy of the output, which a Linear or an elementwise layer does not repay
    (a ReLU on 100 x 1024 values: 0.12 ms whole, 0.42 ms split in two on this project's
    2-core test machine), and each thread of a Linear layer's product would pack all of its
    weights for a share of the work;
  * any other layer runs alone on the whole batch, between two stretches: BatchNorm in
    training (it averages over the batch), Dropout in training (its masks come from the
    run's one generator, in order), and a layer of your own unless it says otherwise.
Within a stretch each thread runs replicas of the layers (copies that share the parameter
arrays and keep caches and gradients of their own) on its slice, forward and then backward;
a parameter's gradient, a sum over the examples, is then the sum of its replicas' gradients.

So the numbers are the model's own up to rounding (sums over the batch are added in another
order), and a run with the same number of threads is exactly reproducible. This is CPU-only:
on a GPU one kernel already spreads over the whole device.
"""
import copy
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def available_cores():
    """The CPUs this process may run on (a container or `taskset` may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:             # not on Linux
        return os.cpu_count() or 1


def replica(layer):
    """A copy of `layer` that shares its parameters (the very same arrays) and has caches and
    gradients of its own; its forward and backward leave the layer's own untouched."""
    twin = copy.copy(layer)
    twin.grads = {name: np.empty_like(grad) for name, grad in layer.grads.items()}
    return twin


def stretches(layers):
    """`layers` cut into runs, in order: each run is either per-example layers or one layer
    that needs the whole batch."""
    runs = []
    for layer in layers:
        if layer.per_example and runs and runs[-1][0].per_example:
            runs[-1].append(layer)
        else:
            runs.append([layer])
    return runs


def batch_slices(n, parts):
    """`parts` slices of about equal size that cover range(n) in order (fewer when n < parts)."""
    bounds = [n * i // parts for i in range(parts + 1)]
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:]) if stop > start]


def forward_through(layers, x):
    for layer in layers:
        x = layer.forward(x)
    return x


def backward_through(layers, grad_y):
    for layer in reversed(layers):
        grad_y = layer.backward(grad_y)
        if grad_y is None:             # a layer reading the data needs no dL/dx
            return None
    return grad_y


class BatchSplit:
    """Forward and backward through `layers` with each batch split across `threads` threads.

    forward(x) keeps, for each stretch it ran in threads, its layers, their replicas (one list
    per slice) and the slices; backward(grad_y) runs the same replicas back and then sums their
    gradients into the layers' own `grads`.
    """

    def __init__(self, layers, threads):
        self.layers, self.threads = layers, threads
        self.pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="batch-slice") if threads > 1 else None
        self.runs = []

    def on_slices(self, through, replicas, parts):
        """[through(replicas[i], parts[i]) for each i]: the first in this thread, which keeps
        its data in this core's caches, the others in the pool's threads meanwhile."""
        others = [self.pool.submit(through, *job) for job in zip(replicas[1:], parts[1:])]
        return [through(replicas[0], parts[0])] + [job.result() for job in others]

    def forward(self, x):
        self.runs = []
        for run in stretches(self.layers):
            if not any(layer.worth_splitting for layer in run):
                x = forward_through(run, x)
                self.runs.append((run, None, None))
                continue
            slices = batch_slices(len(x), self.threads)
            replicas = [[replica(layer) for layer in run] for _ in slices]
            x = np.concatenate(self.on_slices(forward_through, replicas, [x[part] for part in slices]))
            self.runs.append((run, replicas, slices))
        return x

    def backward(self, grad_y):
        for run, replicas, slices in reversed(self.runs):
            if replicas is None:
                grad_y = backward_through(run, grad_y)
            else:
                grads = self.on_slices(backward_through, replicas, [grad_y[part] for part in slices])
                for i, layer in enumerate(run):           # dL/dparams: a sum over the slices
                    for name, total in layer.grads.items():
                        np.copyto(total, replicas[0][i].grads[name])
                        for twins in replicas[1:]:
                            total += twins[i].grads[name]
                grad_y = None if grads[0] is None else np.concatenate(grads)
            if grad_y is None:
                return None
        return grad_y
