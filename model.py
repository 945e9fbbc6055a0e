"""A network: an ordered stack of layers that is itself an `NNModule`.

`Model` runs its layers forward and backward, exposes their arrays under dotted names
("0.weight") as the very same objects (so an optimizer's in-place update reaches the layer),
checks at build time that the layers chain, and prints a summary. It knows nothing of
configs, files or data.
"""
import contextlib
import inspect
import re

import numpy as np

from errors import ConfigError
from layers import broken_files
from nn_module import LOSSES, CrossEntropyLoss, NNModule, Softmax, SoftmaxCrossEntropyLoss, get_module
from parallel import BatchSplit, worth_splitting

EVAL_BATCH = 1000      # examples per forward pass when a whole split is evaluated


def default_names(count):
    """The names of layers that the config did not name: "network[0]", "network[1]", ..."""
    return [f"network[{i}]" for i in range(count)]


@contextlib.contextmanager
def evaluating(model):
    """The model in eval mode for the `with` block; the mode it was in is restored on the way
    out, an exception included."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class Model(NNModule):
    """y = layers[-1](... layers[0](x)).

    Args:
        layers: the layer objects, in order.
        names: optional names for error messages (the config's layer names or "network[i]").
    """

    def __init__(self, layers, names=None):
        super().__init__(layers[0].dtype if layers else np.float32)
        self.layers = list(layers)
        self.names = list(names) if names is not None else default_names(len(layers))
        self.gather()
        self.packed_params, self.packed_grads = self.params, self.grads     # what an optimizer updates
        self.split = None                # a BatchSplit once use_threads asks for more than one thread

    def gather(self):
        """Fills params, grads and state with the layers' arrays under dotted names ("0.weight")."""
        for i, layer in enumerate(self.layers):
            for table, own in ((self.params, layer.params), (self.grads, layer.grads), (self.state, layer.state)):
                table.update({f"{i}.{k}": v for k, v in own.items()})

    def use_threads(self, threads):
        """Splits every batch across `threads` CPU threads from now on, if the layers are worth
        it (parallel.py); 1 runs the layers in the calling thread, as a new Model does."""
        if self.split is not None:
            self.split.close()
        self.split = BatchSplit(self.layers, threads) if threads > 1 and worth_splitting(self.layers) else None
        return self

    def forward(self, x):
        if self.split is not None:
            return self.split.forward(x)
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, grad_y):
        if self.split is not None:
            return self.split.backward(grad_y)
        for layer in reversed(self.layers):
            grad_y = layer.backward(grad_y)
            if grad_y is None:           # a layer reading the data needs no dL/dx, nor do those before it
                return None
        return grad_y

    def skip_input_grad(self):
        """Lets the layers up to the first one with parameters skip dL/dx: the input is data."""
        for layer in self.layers:
            layer.needs_grad_x = False
            if layer.params:
                break
        return self

    def train(self, mode=True):
        super().train(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def map_arrays(self, fn):
        """Replaces every layer's arrays with fn(array) (as moving to a device does), then gathers
        the new arrays under their dotted names; call pack() afterwards, not before."""
        for layer in self.layers:
            layer.map_arrays(fn)
        self.gather()
        self.packed_params, self.packed_grads = self.params, self.grads
        return self

    def pack(self, group=lambda name: "all"):
        """Moves every parameter into one flat array, and every gradient into another. Each
        layer keeps a view of its part, reads and writes it as before, and no value changes;
        but an optimizer can now update the whole network with a few operations on
        `packed_params` and `packed_grads`, each {"all": flat array}, instead of a few per
        parameter. On a GPU every operation is a kernel launch, and for a small network those
        launches are most of a step. (Call it after moving the model: map_arrays copies.)

        `group(name)` names the flat array that parameter `name` ("0.weight") joins: one for
        all by default; an optimizer that treats weights and biases apart passes its own
        (Optimizer.pack_group), and gets {"weights": ..., "biases": ...}."""
        groups = {}                                    # group -> [(layer, parameter name)], in order
        for i, layer in enumerate(self.layers):
            for name in layer.params:
                groups.setdefault(group(f"{i}.{name}"), []).append((layer, name))
        self.packed_params, self.packed_grads = {}, {}
        for key, members in groups.items():
            arrays = [layer.params[name] for layer, name in members]
            flat_params = np.empty_like(arrays[0], shape=sum(p.size for p in arrays))
            flat_grads = np.zeros_like(flat_params)
            start = 0
            for (layer, name), p in zip(members, arrays):
                part = slice(start, start + p.size)
                flat_params[part] = p.reshape(-1)
                layer.params[name] = flat_params[part].reshape(p.shape)
                layer.grads[name] = flat_grads[part].reshape(p.shape)
                start += p.size
            self.packed_params[key], self.packed_grads[key] = flat_params, flat_grads
        self.gather()
        return self

    def __repr__(self):
        lines = [f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)]
        return "Model(\n" + "\n".join(lines) + "\n)"

    def iter_output_shapes(self, input_shape):
        """Yields the per-example output shape of each layer in turn, from one zero sample run
        through the layers in eval mode (the mode they were in is restored when it finishes).

        Raises ConfigError naming the first layer that does not accept what arrives (its forward
        raised ValueError); any other error of a layer's forward is raised as it is.
        """
        first = next(iter(self.params.values()), None)      # the probe is made where the parameters are
        x = np.zeros((1, *input_shape), self.dtype) if first is None else np.zeros_like(
            first, dtype=self.dtype, shape=(1, *input_shape))
        with evaluating(self):
            for i, (layer, name) in enumerate(zip(self.layers, self.names)):
                try:
                    x = layer.forward(x)
                except ValueError as err:
                    arriving = f"layer {i - 1} ({self.names[i - 1]}) gives" if i else "the data gives"
                    raise ConfigError(f"{name} ({type(layer).__name__}) does not fit: {err}; "
                                      f"{arriving} {tuple(x.shape[1:])} per example") from None
                yield tuple(x.shape[1:])

    def output_shapes(self, input_shape):
        """The per-example output shape of every layer, as a list (see iter_output_shapes)."""
        return list(self.iter_output_shapes(input_shape))

    def summary(self, input_shape):
        """A table of the layers (name, hyperparameters, output shape, parameters, multiply-adds per
        example) with totals, from one zero sample; no data is needed."""
        shapes = self.output_shapes(input_shape)
        macs = [layer.multiply_adds(shape) for layer, shape in zip(self.layers, shapes)]
        rows = [(name, repr(layer), init_text(layer), str(shape), f"{sum(p.size for p in layer.params.values()):,}",
                 f"{m:,}") for name, layer, shape, m in zip(self.names, self.layers, shapes, macs)]
        header = ("Name", "Layer (type)", "Init", "Output Shape", "Param #", "Mult-Adds")
        widths = [max(len(r[c]) for r in rows + [header]) for c in range(len(header))]
        line = lambda r: " | ".join(f"{v:<{w}}" if c < 4 else f"{v:>{w}}" for c, (v, w) in enumerate(zip(r, widths)))
        rule = "-" * len(line(header))
        total = sum(p.size for p in self.params.values())
        return "\n".join([f"Input shape: {tuple(input_shape)}", line(header), rule, *map(line, rows), rule,
                          f"Total params: {total:,}", f"Total mult-adds per example: {sum(macs):,}"])

    def multiply_adds_per_example(self, input_shape):
        """The multiply-adds of one forward pass of one example, summed over the layers."""
        return sum(layer.multiply_adds(shape) for layer, shape in zip(self.layers, self.output_shapes(input_shape)))


def init_text(layer):
    """How a layer's parameters were drawn, for the summary: "he", "normal std=1, bias std=1"; "" if none."""
    if not hasattr(layer, "init"):
        return ""
    text = f"{layer.init} std={layer.std:g}" if layer.init == "normal" else layer.init
    return text + (f", bias std={layer.bias_std:g}" if getattr(layer, "bias_std", 0) else "")


def build_model(network, dtype=np.float32, rng=None, names=None):
    """A Model from layer specs: a list of {"class": name, **arguments} (from the config).

    Each layer is `cls(**arguments)`, plus `dtype` and, for layers that draw random numbers, `rng`.
    A bad class or argument raises ConfigError naming the layer: "network[2].p: expected ...".
    """
    names = list(names) if names is not None else default_names(len(network))
    layers = []
    for spec, name in zip(network, names):
        arguments = {k: v for k, v in spec.items() if k != "class"}
        try:
            cls = get_module(spec.get("class"))
        except ValueError as err:
            raise ConfigError(f"{name}.class: {err}{broken_files()}") from None
        if "rng" in inspect.signature(cls).parameters:
            arguments["rng"] = rng
        try:
            layers.append(cls(**arguments, dtype=dtype))
        except ValueError as err:              # constructors say "<argument>: expected ..., got ..."
            about_argument = re.match(r"\w+: ", str(err)) is not None
            raise ConfigError(f"{name}.{err}" if about_argument else f"{name}: {err}") from None
        except TypeError as err:               # a missing or unknown argument
            raise ConfigError(f"{name}: {err}") from None
        except MemoryError:
            raise ConfigError(f"{name}: its parameters do not fit in memory; use fewer units or channels") from None
    if not layers:
        raise ConfigError("network: expected at least one layer, got none")
    return Model(layers, names)


def build_trainable(network, loss, dtype=np.float32, rng=None, names=None):
    """(model, loss object) to train: `build_model(network)` and the loss class named `loss`.

    A network that ends in Softmax and is trained with CrossEntropyLoss is built without that
    Softmax, and trained with SoftmaxCrossEntropyLoss on its logits: the same loss and gradient,
    computed in log space, so it stays finite where a probability underflows to 0. The model is
    one object, the one that trains and is saved (Softmax has no parameters, so its arrays are
    those of the whole network); no second network has to share its layers to reach the logits.
    """
    names = list(names) if names is not None else default_names(len(network))
    loss_class = LOSSES[loss]
    if network and network[-1].get("class") == Softmax.__name__ and loss_class is CrossEntropyLoss:
        network, names, loss_class = network[:-1], names[:-1], SoftmaxCrossEntropyLoss
    return build_model(network, dtype, rng, names), loss_class(dtype)


def forward_in_eval_mode(model, x):
    """The model's outputs for every example of x, in eval mode and batches of EVAL_BATCH;
    the mode the model was in is restored."""
    with evaluating(model):
        return np.concatenate([model.forward(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
