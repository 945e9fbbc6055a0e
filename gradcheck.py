"""The gradcheck task: each layer of a config's network, and its loss, against central differences.

    python3 main.py CONFIG --task gradcheck

The network is built from the config in float64, and each layer is checked on its own: it gets
a small batch (BATCH examples) of random values of the shape that reaches it (the first layer
the data's shape), kept 0.01 away from zero so that the kink of ReLU-like activations at 0
sits outside +-EPS of every value (other kinks, such as two nearly equal values in one
max-pooling window, are merely unlikely with random values, not ruled out). With a fixed
random g and f(x) = sum(forward(x) * g), backward(g) must be df/dx and grads[k]
df/dparams[k]; both are compared with the central differences (f(v + EPS) - f(v - EPS)) /
(2 EPS), on the input and on every parameter, as
    relative error = ||analytic - numeric|| / (||analytic|| + ||numeric||)
over every entry of an array of up to SAMPLES entries, and SAMPLES random entries of a larger
one. A layer passes when its largest relative error is below TOLERANCE. The loss is checked
the same way on random logits (their softmax when the network ends in Softmax) and labels.

A layer must also write its gradients in place: each grads[k] is the same array after backward
as before it. One that rebinds `self.grads[k] = ...` passes the differences, yet in training
its parameter would learn nothing: the trainer packs every gradient into one array, which the
optimizer reads (model.py, Model.pack), and a rebound grads[k] is detached from it. Such a
layer FAILS, with that reason, and so does one whose backward modifies the grad_y it is given
(the layer below it would get a changed gradient). A layer whose forward fails FAILS with the
error, and the layers after it are "not reached".

A layer that draws random numbers (Dropout) is given the same seed before every forward pass,
so its mask stays fixed while the differences are taken. A layer with running statistics
(BatchNorm) is checked in train mode and again in eval mode.

Nothing is trained, no data is read and no file is written; it is the test suite's check
(tests/test_gradients.py), for the layers of one config, your own among them.
"""
import numpy as np

from errors import ConfigError
from model import build_model
from nn_module import LOSSES, Softmax

EPS = 1e-6
TOLERANCE = 1e-6
BATCH = 4
SAMPLES = 30


class GradcheckFailed(ConfigError):
    """Some layer's backward pass disagrees with central differences (exit status 2)."""


def relative_error(analytic, numeric):
    """||analytic - numeric|| / (||analytic|| + ||numeric||), of two host arrays."""
    return float(np.linalg.norm(analytic - numeric) / max(np.linalg.norm(analytic) + np.linalg.norm(numeric), 1e-30))


def sample(shape, rng):
    """Indices into an array of `shape`: all of them, or SAMPLES random ones of a larger array."""
    size = int(np.prod(shape))
    flat = np.arange(size) if size <= SAMPLES else rng.choice(size, SAMPLES, replace=False)
    return np.unravel_index(flat, shape)


def numeric_grad(f, array, index):
    """Central differences of the scalar f() with respect to array[index] (each entry in turn)."""
    grad = np.empty(len(index[0]))
    for n, i in enumerate(zip(*index)):
        saved = array[i].copy()             # CuPy's array[i] is a view, numpy's a copy
        array[i] = saved + EPS
        up = f()
        array[i] = saved - EPS
        down = f()
        array[i] = saved
        grad[n] = (up - down) / (2 * EPS)
    return grad


def away_from_kinks(shape, rng):
    """Normal values at least 0.01 away from 0, so ReLU-like kinks sit outside +-EPS."""
    x = rng.normal(size=shape)
    return x + 0.01 * np.sign(x)


def check_layer(layer, x, rng):
    """(the largest relative error of layer's dL/dx and grads[k], for f = sum(forward(x) * g),
    and why the layer fails whatever that error is, or "")."""
    seed = int(rng.integers(1 << 30))

    def f():
        if hasattr(layer, "rng"):                  # Dropout: the same mask on every call
            layer.rng = np.random.default_rng(seed)
        return float(np.sum(layer.forward(x) * g))

    g = rng.normal(size=layer.forward(x).shape)
    f()
    before, grad_y = dict(layer.grads), g.copy()
    analytic = {"input": layer.backward(grad_y), **{k: v.copy() for k, v in layer.grads.items()}}
    rebound = [k for k, array in before.items() if layer.grads.get(k) is not array]
    modified = not np.array_equal(grad_y, g)         # the layer below would get a changed gradient
    arrays = {"input": x, **layer.params}
    errors = []
    for name, array in arrays.items():
        index = sample(array.shape, rng)
        errors.append(relative_error(analytic[name][index], numeric_grad(f, array, index)))
    reasons = []
    if rebound:                                    # a packed model would train a detached array
        reasons.append(f"backward rebinds {', '.join(f'grads[{k!r}]' for k in rebound)}; write into the array "
                       f"in place, as in self.grads[{rebound[0]!r}][...] = ...")
    if modified:
        reasons.append("backward modifies grad_y; compute into a new array")
    return max(errors), "".join(f" ({reason})" for reason in reasons)


def check_loss(loss, pred, labels, rng):
    """The relative error of loss.backward() against central differences on pred."""
    f = lambda: loss.forward(pred, labels)
    f()
    index = sample(pred.shape, rng)
    return relative_error(loss.backward()[index], numeric_grad(f, pred, index))


def run(config, input_shape, log):
    """Checks every layer and the loss, one line each; GradcheckFailed names those that fail."""
    rng = np.random.default_rng(config["seed"])
    model = build_model(config["network"], np.float64, rng, config["network_names"])
    shapes, failure = [tuple(input_shape)], None       # shapes[i]: what reaches layer i
    try:
        for shape in model.iter_output_shapes(input_shape):
            shapes.append(shape)
    except ConfigError:                                # a layer that does not fit: the config's fault
        raise
    except Exception as err:                           # a layer being written can fail in any way
        failure = f" ({type(err).__name__}: {err})"
    ran = len(shapes) - 1                              # layers whose forward ran; the next raised `failure`
    if failure is None and len(shapes[-1]) != 1:
        raise ConfigError(f"network: the last layer gives {shapes[-1]} per example; the loss needs (classes,)")
    log.result(f"gradcheck: float64, a batch of {BATCH}, central differences (eps {EPS:g}) on up to {SAMPLES} "
               f"entries of the input and of each parameter; ok below {TOLERANCE:g}")
    results = []
    for i, (layer, name) in enumerate(zip(model.layers, model.names)):
        modes = ("train", "eval") if layer.state else ("train",)
        labels = [f"{name} ({type(layer).__name__}{', ' + mode + ' mode' if len(modes) > 1 else ''})"
                  for mode in modes]
        if i >= ran:                                   # its forward raised, or an earlier layer's did
            results.extend((label, np.nan, failure if i == ran else None) for label in labels)
            continue
        for mode, label in zip(modes, labels):
            layer.train(mode == "train")
            try:
                results.append((label, *check_layer(layer, away_from_kinks((BATCH, *shapes[i]), rng), rng)))
            except Exception as err:
                results.append((label, np.nan, f" ({type(err).__name__}: {err})"))
    label = f"loss ({config['loss']})"
    if failure is not None:
        results.append((label, np.nan, None))
    else:
        loss = LOSSES[config["loss"]](np.float64)
        pred = away_from_kinks((BATCH, *shapes[-1]), rng)
        if isinstance(model.layers[-1], Softmax):         # CrossEntropyLoss takes probabilities
            pred = model.layers[-1].forward(pred)
        labels = rng.integers(0, shapes[-1][0], BATCH)
        results.append((label, check_loss(loss, pred, labels, rng), ""))
    width, failed = max(len(label) for label, _, _ in results), []
    for label, error, why in results:                  # why None: an earlier layer failed to run
        if why is None:
            verdict = "not reached"
        else:
            passed = error < TOLERANCE and not why     # why "": it ran; " (Error: ...)": it raised
            verdict = f"{error:.2e}  {'ok' if passed else 'FAILED'}{why}"
            if not passed:
                failed.append(label)
        log.result(f"{label:<{width}}  {verdict}")
    if failed:
        raise GradcheckFailed(f"gradcheck: {len(failed)} of {len(results)} FAILED: {', '.join(failed)}")
    return results
