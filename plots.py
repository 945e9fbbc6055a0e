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


def first_layer(weight, image_shape, path, count=64, show=False):
    """The first layer's weights as pictures: of a Linear layer, each unit's incoming weights as an
    image; of a Conv2D layer, each filter's weights on its first input channel. At most `count`
    are drawn: the units or filters whose weights have the largest L2 norm, titled by their index."""
    plt = pyplot(show)
    if weight.ndim == 2:                                     # Linear: (n_in, n_out)
        kind, units = "units", [weight[:, j].reshape(image_shape) for j in range(weight.shape[1])]
        norms = np.linalg.norm(weight, axis=0)
    else:                                                    # Conv2D: (F, C, k, k)
        kind, units = "filters", [weight[f, 0] for f in range(weight.shape[0])]
        norms = np.linalg.norm(weight.reshape(len(weight), -1), axis=1)
    chosen = np.argsort(-norms, kind="stable")[:count]
    limit = max(abs(units[j]).max() for j in chosen)
    tiles = [units[j] / limit for j in chosen]               # one shared scale: red > 0, blue < 0
    fig = image_grid(plt, tiles, [str(j) for j in chosen], columns=8)
    for ax in fig.axes:
        for im in ax.get_images():
            im.set_cmap("RdBu_r")
            im.set_clim(-1, 1)
    which = f"all {len(units)} {kind}" if len(chosen) == len(units) else \
        f"the {len(chosen)} of {len(units)} {kind} with the largest weights (L2 norm)"
    fig.suptitle(f"first layer weights: {which}", fontsize=9)
    fig.tight_layout()
    return save(plt, fig, path, show)
