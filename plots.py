"""Pictures of the data and of what a network learned, as PNG files (matplotlib).

Each function draws one figure from plain arrays and writes it atomically to the path it is
given; none of them loads data or models (the engine does). Without `show`, or without a
display, matplotlib's Agg backend is used, so this works on a machine with no screen.
"""
import os
import sys

import numpy as np

from utils import atomic_write

DPI = 100


def pyplot(show):
    """matplotlib.pyplot, on the Agg backend unless figures are to be shown on a display."""
    import matplotlib
    has_display = sys.platform in ("win32", "darwin") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if not (show and has_display):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(plt, fig, path, show):
    with atomic_write(path) as f:
        fig.savefig(f, format="png", dpi=DPI)
    if not show:
        plt.close(fig)
    return path


def image_grid(plt, images, titles, columns, side=1.1):
    """A figure with one small gray image per entry, each with its title."""
    rows = max(1, -(-len(images) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * side, rows * (side + 0.25)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title in zip(axes.flat, images, titles):
        ax.imshow(image, cmap="gray_r" if image.min() >= 0 else "RdBu", interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.tight_layout()
    return fig


def samples(x, y, class_names, image_shape, path, show=False, title="samples"):
    """A grid of examples with their labels."""
    plt = pyplot(show)
    fig = image_grid(plt, [row.reshape(image_shape) for row in x], [class_names[label] for label in y],
                     columns=min(10, len(x)))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save(plt, fig, path, show)


def training_curves(history, path, show=False):
    """Loss and accuracy per epoch, train and validation, from the saved history."""
    plt = pyplot(show)
    from matplotlib.ticker import MaxNLocator
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [h["epoch"] for h in history]
    for key, ax, scale in (("loss", ax_loss, 1), ("accuracy", ax_acc, 100)):
        ax.plot(epochs, [scale * h[f"train_{key}"] for h in history], "o-", label="train")
        valid = [(h["epoch"], scale * h[f"valid_{key}"]) for h in history if h[f"valid_{key}"] is not None]
        if valid:
            ax.plot(*zip(*valid), "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))     # epochs are whole: no tick at 1.5
        ax.set_ylabel(key + (" (%)" if scale == 100 else ""))
        ax.grid(alpha=0.3)
        ax.legend()
    ax_loss.set_yscale("log")
    fig.tight_layout()
    return save(plt, fig, path, show)


def confusion(matrix, class_names, path, show=False):
    """The confusion matrix: rows are true classes, columns predicted ones."""
    plt = pyplot(show)
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(np.log1p(matrix), cmap="Blues")
    k = len(class_names)
    ax.set_xticks(range(k), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0, fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 3 else "black")
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    return save(plt, fig, path, show)


def mistakes(x, y, probs, class_names, image_shape, path, count=30, show=False):
    """The test images the network got wrong with the most confidence."""
    plt = pyplot(show)
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:count]
    titles = [f"{class_names[predicted[i]]} ({probs[i, predicted[i]]:.2f})\ntrue {class_names[y[i]]}" for i in wrong]
    fig = image_grid(plt, [x[i].reshape(image_shape) for i in wrong], titles, columns=10, side=1.2)
    fig.suptitle("most confident mistakes: predicted (probability), true", fontsize=9)
    fig.tight_layout()
    return save(plt, fig, path, show)


def first_layer(weight, image_shape, path, count=64, show=False, initial=None):
    """The first layer's weights as pictures: of a Linear layer, each unit's incoming weights as an
    image; of a Conv2D layer, each filter's weights on its first input channel. At most `count`
    are drawn: the units or filters whose weights have the largest L2 norm, titled by their index.

    With `initial`, the same layer's weights before training, a Linear layer is drawn as what
    training changed, weight - initial: in a wide layer the random initial weights, which
    training moves only a little, hide the strokes each unit learned to look for."""
    plt = pyplot(show)
    change = initial is not None and weight.ndim == 2
    if change:
        weight = weight - initial
    if weight.ndim == 2:                                     # Linear: (n_in, n_out)
        kind, units = "units", [weight[:, j].reshape(image_shape) for j in range(weight.shape[1])]
        norms = np.linalg.norm(weight, axis=0)
    else:                                                    # Conv2D: (F, C, k, k)
        kind, units = "filters", [weight[f, 0] for f in range(weight.shape[0])]
        norms = np.linalg.norm(weight.reshape(len(weight), -1), axis=1)
    chosen = np.argsort(-norms, kind="stable")[:count]
    limit = max(abs(units[j]).max() for j in chosen)         # one scale for every tile: 0 is white
    fig = image_grid(plt, [units[j] for j in chosen], [str(j) for j in chosen], columns=8)
    for ax in fig.axes:
        for im in ax.get_images():
            im.set_cmap("RdBu_r")
            im.set_clim(-limit, limit)
    which = f"all {len(units)} {kind}, the largest first" if len(chosen) == len(units) else \
        f"the {len(chosen)} of {len(units)} {kind} that {'changed most' if change else 'have the largest weights'}"
    what = "change of each unit's weights in training (final - initial)" if change else "weights"
    fig.suptitle(f"first layer, {what}: {which} (L2 norm)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    bar = fig.colorbar(fig.axes[0].get_images()[0], cax=fig.add_axes((0.88, 0.1, 0.015, 0.8)))
    bar.set_label("change: red grew, blue shrank" if change else "weight: red > 0, blue < 0", fontsize=8)
    return save(plt, fig, path, show)


# ---- the watch record (watch.py): what every layer did while the network trained ----------

def layer_colours(plt, count):
    """One colour a layer, from dark (the first) to light (the last), so network order shows."""
    return plt.cm.viridis(np.linspace(0, 0.85, max(count, 1)))


def epochs_of(watch):
    """Each record's place in training, in epochs (0.5: half way through the first)."""
    batches = watch.get("batches_per_epoch")
    return [r["step"] / batches if batches else r["step"] for r in watch["records"]], \
        "epoch" if batches else "training batch"


def over_training(plt, watch, series, ylabel, title, path, show, log=True, guide=None, ylim=None):
    """One line per entry of `series` ([(label, values per record, layer index, solid)], in
    network order) against training time: a colour a layer, solid for weights and dashed for
    the layer's other parameters. `guide`, a (value, label), is drawn as a black dashed line.
    With a single record there is no line to draw: each value is a dot."""
    x, xlabel = epochs_of(watch)
    colours = layer_colours(plt, len(watch["layout"]))
    marker = "o" if len(x) == 1 else None
    fig, ax = plt.subplots(figsize=(9, 4.8))
    for label, values, layer, solid in series:
        ax.plot(x, [np.nan if v is None else v for v in values], color=colours[layer], lw=1.4 if solid else 1,
                ls="-" if solid else "--", marker=marker, label=label)
    if guide:
        ax.axhline(guide[0], color="black", ls=":", lw=1.5, label=guide[1])
    if log:
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="in network order",
              title_fontsize=8)
    fig.tight_layout()
    return save(plt, fig, path, show)


def watch_gradients(watch, path, show=False):
    """Nielsen's speed of learning: the norm of each weight's gradient over training, one line
    a layer. Lines far below the last layer's mean layers that barely learn."""
    from watch import weights
    plt = pyplot(show)
    layout, records = watch["layout"], watch["records"]
    series = [(f"{layout[i]['name']}.{name}", [r["layers"][i]["params"][name]["grad"] for r in records], i, True)
              for i, name, _ in weights(layout)]
    return over_training(plt, watch, series, "gradient norm ||dL/dW|| (log scale)",
                         "how fast each layer learns: the size of its weights' gradient", path, show)


def watch_updates(watch, path, show=False):
    """The update-to-weight ratio of each parameter over training, with the 1e-3 guide line."""
    plt = pyplot(show)
    layout, records = watch["layout"], watch["records"]
    series = [(f"{entry['name']}.{name}", [r["layers"][i]["params"][name]["ratio"] for r in records], i,
               len(shape) >= 2)
              for i, entry in enumerate(layout) for name, shape in zip(entry["params"], entry["shapes"])]
    return over_training(plt, watch, series, "||w after - w before|| / ||w before|| (log scale)",
                         "how much each step changes each parameter (update-to-weight ratio)", path, show,
                         guide=(1e-3, "1e-3, the usual healthy size"))


def watch_dead(watch, path, show=False):
    """The fraction of dead ReLU units and saturated tanh or sigmoid outputs over training;
    None when the network has no such layer."""
    plt = pyplot(show)
    layout, records = watch["layout"], watch["records"]
    series = [(f"{entry['name']} ({'dead' if entry['type'] == 'ReLU' else 'saturated'})",
               [None if r["layers"][i]["fraction"] is None else 100 * r["layers"][i]["fraction"] for r in records],
               i, True)
              for i, entry in enumerate(layout) if entry["type"] in ("ReLU", "Tanh", "Sigmoid")]
    if not series:
        return None
    path = over_training(plt, watch, series, "% of the layer", "dead ReLU units (0 for every example of a "
                         "batch) and saturated tanh or sigmoid outputs (within 0.01 of a bound)", path, show, log=False,
                         ylim=(-3, 103))                     # a line at 0% stays in sight
    return path


def watch_outputs(watch, path, show=False):
    """Deep Learning from Scratch's figure: each layer's output histogram at the start, the
    middle and the end of training, a panel a layer in network order, on a log scale so that
    a bar of 0.1% shows beside one of 90%. Reshape and Flatten, which only rearrange their
    input, are left out."""
    plt = pyplot(show)
    layout, records = watch["layout"], watch["records"]
    shown = [i for i, entry in enumerate(layout) if entry["type"] not in ("Reshape", "Flatten")]
    moments = [(0, "start"), (len(records) // 2, "middle"), (len(records) - 1, "end")]
    x, xlabel = epochs_of(watch)
    columns = min(5, len(shown))
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 2.4 * rows), squeeze=False)
    for ax in axes.flat[len(shown):]:
        ax.axis("off")
    for ax, i in zip(axes.flat, shown):
        for (k, when), colour in zip(moments, ("#9ecae1", "#3182bd", "#08306b")):
            hist = records[k]["layers"][i]["hist"]
            counts = np.asarray(hist["counts"], dtype=float)
            edges = np.linspace(hist["low"], hist["high"], len(counts) + 1)
            ax.stairs(100 * counts / counts.sum(), edges, color=colour, lw=1.5,
                      label=f"{when} ({xlabel} {x[k]:.3g})")
        ax.set_title(f"{layout[i]['name']} ({layout[i]['type']})", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("output value", fontsize=8)
        ax.set_yscale("log")                     # a ReLU's spike at 0 beside its few large values
        ax.set_ylabel("% of values (log)", fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    spare = axes.flat[len(shown)] if len(shown) < axes.size else None      # an empty panel holds the legend
    (spare or fig).legend(handles, labels, fontsize=8, loc="center" if spare else "lower right")
    fig.suptitle("what each layer gives: its outputs' histogram at the start, middle and end of training",
                 fontsize=10)
    fig.tight_layout()
    return save(plt, fig, path, show)
