"""Looking inside one input: what each layer makes of it, and which pixels decided.

The explain task takes each image of `--input` (prepared as predict prepares it,
datasets/prepare.py) and the test image `explain.index`, runs it through the trained model in
eval mode and writes one PNG per image into plot_dir, `<name>.explain.png` (`test-17` for a
test image), with, from top to bottom:
  * the input as the network sees it, the predicted class and the top probabilities;
  * beside it the saliency map d(z_c)/d(input) of the predicted class c, and with
    `explain.versus` = v the contrast d(z_c - z_v)/d(input): "why c, not v?";
  * every layer's output in network order, named as in the config: feature maps of a conv or
    pooling layer (the most active channels first), a heat map of a sequence, bars or a heat
    map of a vector;
  * for a conv net, the filters of its first convolution.

The score is the logit z_c, the output of the last layer before the softmax (for a network
that ends in Softmax, the input of that Softmax), not the probability p_c and not the loss: p_c
also rises when the other classes' logits fall, so its gradient mixes in every class, while
z_c's says what speaks for c itself (Simonyan, Vedaldi and Zisserman 2014, "Deep Inside
Convolutional Networks"). Its gradient comes from the model's own backward passes, started
from dz/dz = the one-hot row of c instead of from a loss.

Nothing is written but the pictures: the model runs in eval mode (BatchNorm's running
averages stay, Dropout is the identity), and the model file is not touched. On a GPU the
arrays stay on the device; each layer's output and each gradient comes to the host once,
through backend.to_numpy, to be drawn.

This module computes and draws; tasks.py loads the model (load_trained) and names the files.
"""
import os

import numpy as np
from matplotlib.ticker import MaxNLocator

import plots
from backend import to_numpy
from datasets.prepare import prepare_image
from errors import ConfigError, DataError
from model import evaluating
from nn_module import Conv2D, Softmax
from tasks import load_trained, output_names
from utils import check_writable

MAPS = 16               # feature maps drawn per layer at most: the most active ones
BARS = 32               # a vector this long or shorter is drawn as bars, a longer one as a heat map
ROW = 64                # values per row of a vector's heat map
TOP = 5                 # classes in the probabilities panel
LABEL = 1.9             # width of a row's title, against 10 for its pictures
TITLE = 1.3             # inches above the first row, for the picture's title


# ---- what the network computes -------------------------------------------------------------

def logit_layers(model):
    """How many layers give the logits z: all of them, or all but a final Softmax."""
    return len(model.layers) - isinstance(model.layers[-1], Softmax)


def layer_outputs(model, x):
    """Each layer's output for the examples x, in network order (its forward caches kept)."""
    outputs = []
    for layer in model.layers:
        x = layer.forward(x)
        outputs.append(x)
    return outputs


def score_gradient(model, x, weights):
    """d(score)/dx for score = sum over k of weights[k] * z_k (z the logits), for each example
    of x: a forward pass, then the layers' own backward passes from the logits down to x,
    started from dscore/dz. The model must be in eval mode (see `examine`)."""
    outputs = layer_outputs(model, x)
    grad = np.zeros_like(outputs[logit_layers(model) - 1])        # dscore/dz: (N, K)
    for k, w in weights.items():
        grad[:, k] = w
    for layer in reversed(model.layers[:logit_layers(model)]):
        layer.needs_grad_x = True                                  # the gradient must reach the pixels
        grad = layer.backward(grad)
    return grad


def examine(model, x, versus=None):
    """What the picture of one example shows, as host arrays. x is (1, ...) where the model's
    arrays are; versus a class or None. Computed in eval mode, whatever mode the model was in
    (and left in); every layer is asked for dL/dx (`needs_grad_x`). Returns a dict:
        outputs:       each layer's output for the example, (its shape without the batch axis);
        logits, probabilities (K,) and predicted, the class of the largest logit;
        saliency:      d(z_predicted)/dx, x's shape without the batch axis;
        contrast:      d(z_predicted - z_versus)/dx, or None without versus or where the
                       network predicts versus itself."""
    with evaluating(model):
        outputs = [to_numpy(y)[0] for y in layer_outputs(model, x)]
        logits = outputs[logit_layers(model) - 1]
        predicted = int(np.argmax(logits))
        saliency = to_numpy(score_gradient(model, x, {predicted: 1}))[0]
        contrast = None
        if versus is not None and versus != predicted:
            contrast = to_numpy(score_gradient(model, x, {predicted: 1, versus: -1}))[0]
    probabilities = Softmax(np.float64).forward(logits[None].astype(np.float64))[0]
    return {"outputs": outputs, "logits": logits, "probabilities": probabilities, "predicted": predicted,
            "saliency": saliency, "contrast": contrast}


def first_filters(model):
    """(name, weight (F, C, k, k)) of the first Conv2D, as host arrays, or None in a net without one."""
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, Conv2D):
            return name, to_numpy(layer.params["weight"])
    return None


def shown_name(name):
    """A layer's name as the config writes it: "fc1" for a named layer, "network[3]" in a list."""
    return name.removeprefix("network.")


# ---- the task -----------------------------------------------------------------------------

def run(engine):
    """The explain task: one picture per input (see the module docstring). A file that cannot be
    read gets its own `error:` line and the others go on; the task then fails naming them.
    Returns {input: {"path", "panels" (the titles drawn), "predicted", "probabilities", "saliency"}}."""
    c, info = engine.config, engine.info
    index, versus = c["explain"]["index"], c["explain"]["versus"]
    if not c["input"] and index is None:
        raise ConfigError("input: nothing to explain (give images with --input FILE [FILE ...], "
                          "or a test image with --set explain.index=N)")
    if c["input"] and int(np.prod(info.input_shape)) != 28 * 28:
        raise ConfigError(f"dataset: --input images are prepared as 28x28 MNIST digits, but {c['dataset']} has "
                          f"examples of shape {info.input_shape}; explain a test image with explain.index")
    if versus is not None and versus >= info.num_classes:
        raise ConfigError(f"explain.versus: expected a class below {info.num_classes}, got {versus}")
    model = load_trained(engine)
    sources = c["input"] + ([f"test-{index}"] if index is not None else [])
    targets = [os.path.join(c["plot_dir"], name) for name in output_names(sources, "explain")]
    check_writable(targets[0], "plot_dir")
    test = test_example(engine, index) if index is not None else None       # (image, label)
    results, failed = {}, []
    for i, (source, target) in enumerate(zip(sources, targets)):
        try:
            image, label = test if i == len(c["input"]) else (prepare_image(source), None)
        except DataError as err:
            if len(sources) == 1:
                raise
            engine.log.error(str(err))
            failed.append(source)
            continue
        x = engine.backend.to_device(image.reshape(1, *info.input_shape).astype(engine.dtype))
        seen = examine(model, x, versus)
        panels = draw(seen, image.reshape(info.image_shape), model, info.class_names, label, versus, source, target)
        engine.log.result(f"{source}: {info.class_names[seen['predicted']]} "
                          f"{seen['probabilities'][seen['predicted']]:.4f}; wrote {target}")
        results[source] = {"path": target, "panels": panels, "predicted": seen["predicted"],
                           "probabilities": seen["probabilities"], "saliency": seen["saliency"]}
    if failed:
        raise ConfigError(f"{len(failed)} of {len(sources)} images could not be explained: {', '.join(failed)}")
    return results


def test_example(engine, index):
    """(the test image `index`, its label); ConfigError for an index past the test set."""
    data = engine.load_data("test")
    if index >= len(data["x_test"]):
        raise ConfigError(f"explain.index: expected an index below {len(data['x_test'])} (the test images), "
                          f"got {index}")
    return data["x_test"][index], int(data["y_test"][index])


# ---- the picture --------------------------------------------------------------------------

def draw(seen, image, model, class_names, label, versus, source, path):
    """Writes the picture of one example (`seen`, from examine) to `path`; returns the panel titles."""
    plt = plots.pyplot(False)
    filters = first_filters(model)
    layers = list(zip(model.names, model.layers, seen["outputs"]))
    heights = [3.3] + [row_height(y) for _, _, y in layers] + ([filter_height(filters[1])] if filters else [])
    inches = sum(heights) + TITLE + 0.45                            # and the last row's tick labels
    fig = plt.figure(figsize=(12, inches))
    outer = fig.add_gridspec(len(heights), 1, height_ratios=heights, hspace=0.6, top=1 - TITLE / inches,
                             bottom=0.45 / inches, left=0.01, right=0.97)
    predicted = seen["predicted"]
    truth = "" if label is None else f", true class {class_names[label]}"
    fig.suptitle(f"{source}: predicted {class_names[predicted]} (probability {seen['probabilities'][predicted]:.3f})"
                 f"{truth}", fontsize=13, y=1 - 0.1 / inches, va="top")
    fig.text(0.5, 1 - 0.42 / inches, "below: each layer's output, from the input (top) to the output (bottom), "
             "named as in the config\ncolours, one scale a row: red > 0 > blue where the values have both signs; "
             "dark (0) to yellow where none is negative", fontsize=9, ha="center", va="top", color="0.25")
    panels = header(fig, outer[0], seen, image, class_names, versus)
    previous = image
    for row, (name, layer, y) in enumerate(layers, start=1):
        title = f"{shown_name(name)}\n{type(layer).__name__} {shape_text(y.shape)}"
        panels.append(title.replace("\n", " "))
        same = y.size == previous.size and np.array_equal(y.reshape(-1), previous.reshape(-1))
        role = None if row < logit_layers(model) else "logits" if row == logit_layers(model) else "probabilities"
        layer_row(fig, outer[row], title, y, class_names, predicted, role, same)
        previous = y
    if filters:
        panels.append(filter_row(fig, outer[-1], *filters))
    plots.save(plt, fig, path, show=False)
    return panels


def shape_text(shape):
    """(32, 28, 28) for a shape, (128) for one of one axis (not Python's (128,))."""
    return "(" + ", ".join(map(str, shape)) + ")"


def row_height(y):
    """Inches for the row of a layer whose output (per example) is y."""
    if y.ndim == 3 and min(y.shape[1:]) > 1:
        return 1.25
    if y.ndim == 2:
        return 1.5
    if y.size <= BARS:
        return 1.2
    return min(2.0, 0.95 + 0.02 * -(-y.size // ROW))


def filter_height(weight):
    """Inches for the row of the first convolution's filters: two lines of MAPS at most."""
    return 0.9 * -(-min(len(weight), 2 * MAPS) // MAPS) + 0.5


def header(fig, spec, seen, image, class_names, versus):
    """The input, its saliency map (and the contrast with `versus`), and the top probabilities;
    returns their titles."""
    predicted = class_names[seen["predicted"]]
    maps = [("input as the network sees it\n(after preparation; 1 = ink)", None, None),
            (f"saliency: d(logit of {predicted}) / d(pixel)", seen["saliency"],
             "red: more ink here raises the logit\n(the score before the softmax); blue:\n"
             "lowers it. Gray line: the digit's outline")]
    if versus is not None:
        other = class_names[versus]
        note = (f"red: ink here speaks for {predicted},\nblue: for {other}" if seen["contrast"] is not None
                else f"the network predicts {other} itself:\nno contrast to draw")
        maps.append((f"why {predicted}, not {other}?\nd(logit {predicted} - logit {other}) / d(pixel)",
                     seen["contrast"], note))
    grid = spec.subgridspec(1, len(maps) + 1, width_ratios=[1] * len(maps) + [1.3], wspace=0.45)
    titles = []
    for i, (title, grad, note) in enumerate(maps):
        ax = fig.add_subplot(grid[i])
        if i == 0:
            im = ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            im = saliency_image(ax, image, grad)
            ax.set_xlabel(note, fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        titles.append(title.replace("\n", " "))
    titles.append(probability_bars(fig.add_subplot(grid[-1]), seen["probabilities"], class_names))
    return titles


def saliency_image(ax, image, grad):
    """A gradient as red (> 0) and blue (< 0) on a scale symmetric about 0, the digit's outline
    drawn over it in gray; an empty panel where there is no gradient."""
    if grad is None:
        return ax.imshow(np.zeros_like(image), cmap="RdBu_r", vmin=-1, vmax=1)
    grad = grad.reshape(image.shape)
    limit = max(float(np.abs(grad).max()), np.finfo(np.float64).tiny)
    im = ax.imshow(grad, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    if image.max() > image.min():
        ax.contour(image, levels=[0.5 * (image.min() + image.max())], colors="0.35", linewidths=0.7)
    return im


def probability_bars(ax, probabilities, class_names):
    """The TOP most probable classes as horizontal bars, the predicted one on top and dark."""
    top = np.argsort(-probabilities, kind="stable")[:TOP]
    ax.barh(range(len(top)), probabilities[top], color=["C3"] + ["0.6"] * (len(top) - 1))
    ax.set_yticks(range(len(top)), [class_names[k] for k in top], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    for i, k in enumerate(top):                                    # the value beside its bar, or inside a long one
        inside = probabilities[k] > 0.75
        ax.text(probabilities[k] + (-0.02 if inside else 0.02), i, f"{probabilities[k]:.3f}", va="center",
                ha="right" if inside else "left", color="white" if inside else "black", fontsize=8)
    ax.set_xlabel("probability (softmax of the logits)", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    title = f"top {len(top)} classes"
    ax.set_title(title, fontsize=9)
    return title


def layer_row(fig, spec, title, y, class_names, predicted, role, same):
    """One layer's row: its title on the left, its output in the middle, a colour bar on the right.
    role: "logits" for the layer that gives them, "probabilities" for a final Softmax, else None;
    same: whether the output holds its input's values (Dropout in eval mode, a Reshape)."""
    grid = spec.subgridspec(1, 3, width_ratios=[LABEL, 10, 0.18], wspace=0.04)
    label = row_label(fig, grid[0], title)
    if y.ndim == 3 and min(y.shape[1:]) > 1:
        im, note = feature_maps(fig, grid[1], y)
    elif y.ndim == 2:
        im, note = heat_map(fig.add_subplot(grid[1]), y, "feature", "time step"), "one row per time step"
    elif y.size <= BARS:
        names = class_names if role is not None and y.size == len(class_names) else None
        im = bars(fig.add_subplot(grid[1]), y.reshape(-1), names, predicted, role or "value")
        note = {"logits": "the logits z: the scores\nthe saliency maps start from", "probabilities": "softmax(z)",
                None: ""}[role]
    else:
        rows = -(-y.size // ROW)
        flat = np.full(rows * ROW, np.nan)
        flat[:y.size] = y.reshape(-1)
        im = heat_map(fig.add_subplot(grid[1]), flat.reshape(rows, ROW), f"column (unit = {ROW} row + column)", "row")
        note = f"{y.size} values, {ROW} a row"
    if same:
        note = "\n".join(filter(None, [note, "the same values as its input"]))
    if note:
        label.text(0, 0.12, note, fontsize=7, va="top", ha="left", color="0.3")
    if im is not None:
        fig.colorbar(im, cax=fig.add_subplot(grid[2])).ax.tick_params(labelsize=7)


def row_label(fig, spec, title):
    """The axes left of a row, with the row's title: its first line bold (the layer's name)."""
    label = fig.add_subplot(spec)
    label.axis("off")
    name, _, rest = title.partition("\n")
    label.text(0, 0.78, name, fontsize=10, va="center", ha="left", fontweight="bold")
    label.text(0, 0.5, rest, fontsize=8, va="center", ha="left")
    return label


def colour_scale(values):
    """(colour map, low, high): viridis from 0 for values that are never negative (a ReLU's),
    else red above 0 and blue below on a scale symmetric about 0."""
    finite = values[np.isfinite(values)]
    high = max(float(np.abs(finite).max()) if finite.size else 0.0, np.finfo(np.float32).tiny)
    return ("viridis", 0.0, high) if finite.size and finite.min() >= 0 else ("RdBu_r", -high, high)


def feature_maps(fig, spec, y):
    """The MAPS most active channels of a (C, H, W) output (largest mean |value|), on one
    colour scale, each titled by its channel; returns (image for the colour bar, note)."""
    activity = np.abs(y).mean(axis=(1, 2))
    order = np.argsort(-activity, kind="stable")[:MAPS]
    cmap, low, high = colour_scale(y)
    grid = spec.subgridspec(1, MAPS, wspace=0.08)
    for slot, channel in enumerate(order):
        ax = fig.add_subplot(grid[slot])
        im = ax.imshow(y[channel], cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
        ax.set_title(f"ch {channel}", fontsize=7, pad=2)
        ax.axis("off")
    note = (f"the {len(order)} most active of {len(y)} channels\n(mean |value|), most active first"
            if len(order) < len(y) else (f"all {len(y)} channels, most active first" if len(y) > 1 else ""))
    return im, note


def heat_map(ax, values, xlabel, ylabel):
    """A 2-D array as colours, with the colour scale of `colour_scale`."""
    cmap, low, high = colour_scale(values)
    im = ax.imshow(values, cmap=cmap, vmin=low, vmax=high, aspect="auto", interpolation="nearest")
    ax.set_xlabel(xlabel, fontsize=7, labelpad=1)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))    # rows and steps are whole
    ax.tick_params(labelsize=6)
    return im


def bars(ax, values, class_names, predicted, ylabel):
    """A short vector as bars, red above 0 and blue below; by class name (the predicted one
    marked) where `class_names` are given. Returns None: the bars carry no colour scale."""
    ax.bar(range(len(values)), values, color=np.where(values >= 0, "C3", "C0"))
    ax.axhline(0, color="0.3", linewidth=0.6)
    if class_names is not None:
        ax.set_xticks(range(len(values)), [f"[{n}]" if k == predicted else n for k, n in enumerate(class_names)],
                      fontsize=8)
        ax.set_xlabel("class (the predicted one in [ ])", fontsize=7, labelpad=1)
    else:
        ax.set_xlabel("unit", fontsize=7, labelpad=1)
        ax.tick_params(axis="x", labelsize=6)
    ax.tick_params(axis="y", labelsize=6)
    ax.set_ylabel(ylabel, fontsize=7)
    ax.set_xlim(-0.6, len(values) - 0.4)
    return None


def filter_row(fig, spec, name, weight):
    """The first convolution's filters (up to 2 * MAPS, on its first input channel) as images,
    red for a positive weight, blue for a negative one; returns the row's title."""
    grid = spec.subgridspec(1, 3, width_ratios=[LABEL, 10, 0.18], wspace=0.04)
    count = min(len(weight), 2 * MAPS)
    channel = ", input channel 0" if weight.shape[1] > 1 else ""
    title = f"filters of {shown_name(name)}\n{count} of {len(weight)}, {weight.shape[2]}x{weight.shape[3]}{channel}"
    label = row_label(fig, grid[0], title)
    label.text(0, 0.12, "red: ink there raises the\nchannel's map, blue: lowers it", fontsize=7, va="top",
               color="0.3")
    limit = float(np.abs(weight[:count, 0]).max()) or 1.0
    tiles = grid[1].subgridspec(-(-count // MAPS), MAPS, wspace=0.08, hspace=0.35)
    for f in range(count):
        ax = fig.add_subplot(tiles[f // MAPS, f % MAPS])
        im = ax.imshow(weight[f, 0], cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_title(f"ch {f}", fontsize=7, pad=2)
        ax.axis("off")
    fig.colorbar(im, cax=fig.add_subplot(grid[2])).ax.tick_params(labelsize=7)
    return title.replace("\n", " ")
