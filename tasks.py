"""The tasks that look at a network instead of training it: test, summary, plot, predict,
gradcheck (whose machinery is gradcheck.py's), watch (watch.py's) and explain (explain.py's).

Each is a function of the engine (engine.py), which holds the config, the dataset and the
checks; `TASKS` maps the config's "task" to it. Training is the engine's own.
"""
import json
import os

import numpy as np

import gradcheck
from backend import to_numpy
from config import changes
from datasets.prepare import prepare_image
from errors import ConfigError, DataError, ModelFileError
from log import counted
from model import build_model, forward_in_eval_mode
from nn_module import Flatten, Reshape, Softmax
from runfiles import read_history, read_watch, watch_path
from utils import atomic_write, check_writable, load_model
from watch import diagnose


def load_trained(engine):
    """The trained model from `model_file`, checked against the config and the dataset, in eval mode,
    on the run's device.

    A model file whose network differs from the config's is refused, naming each difference (the
    numbers would be another network's); one saved in another dtype runs in its own, with a warning.
    """
    c = engine.config
    model, saved = load_model(c["model_file"])
    different = changes(saved, c, only=("network",))
    if different:
        raise ModelFileError(f"{c['model_file']} holds another network than this config (file -> config: "
                             f"{'; '.join(different)}); use the config it was trained with, or set model_file "
                             f"to a model trained with this one")
    engine.log.info(f"loaded the model from {c['model_file']}")
    engine.trained_with = saved                   # the config the file was trained with, its seed included
    if saved["dtype"] != c["dtype"]:
        engine.log.warning(f"{c['model_file']} was saved in {saved['dtype']}, the config says {c['dtype']}: "
                           f"the model runs in {saved['dtype']}")
    engine.dtype = model.dtype                    # the data is cast to what the model was saved in
    if saved.get("dataset") != c["dataset"]:
        engine.log.warning(f"the model was trained on {saved.get('dataset')}, not {c['dataset']}")
    engine.check_fits(model)
    return engine.backend.place(model, engine.backend.random(engine.rng), c["threads"])


def probabilities(model, x):
    """Class probabilities of `model` (eval mode) for the examples x, in batches: its outputs
    if it ends in Softmax, else the softmax of its outputs (logits)."""
    out = forward_in_eval_mode(model, x)
    return out if isinstance(model.layers[-1], Softmax) else Softmax(model.dtype).forward(out)


def host_probabilities(engine, model, x):
    """`probabilities` for the numpy examples x, computed on the run's device, as numpy."""
    return to_numpy(probabilities(model, engine.backend.to_device(x)))


def test(engine):
    """Evaluates the saved model on the test set: the seed's three lines, then per-class
    accuracy and the confusion matrix."""
    model = load_trained(engine)
    data = engine.load_data("test")
    y = data["y_test"]
    predicted = host_probabilities(engine, model, data["x_test"]).argmax(axis=1)
    errors, n = int((predicted != y).sum()), len(y)
    engine.log.result(f"Number of errors: {errors}/{n}")
    engine.log.result(f"Error Rate: {100 * errors / n:.2f}%")
    engine.log.result(f"Test accuracy: {100 * (n - errors) / n:.2f}%")
    matrix = confusion_matrix(y, predicted, engine.info.num_classes)
    engine.log.result(confusion_text(matrix, engine.info.class_names))
    return (n - errors) / n


def summary(engine):
    """Prints the network as a table, from the config alone (no data, no model file)."""
    c = engine.config
    model = build_model(c["network"], engine.dtype, engine.rng, c["network_names"])
    engine.check_fits(model)
    engine.log.result(model.summary(engine.info.input_shape))
    engine.log.result(training_text(c))


def training_text(c):
    """The loss and optimizer lines under the summary, so a reproduction can be read off."""
    options = ", ".join(f"{k}={json.dumps(v)}" for k, v in c["optimizer"].items() if k != "name")  # JSON's spelling
    return (f"Loss: {c['loss']}\n"
            f"Optimizer: {c['optimizer']['name']}({options}), lr {c['lr']:g}, schedule {c['schedule']}, "
            f"batch {c['batch_size']}, {c['num_epochs']} epochs")


def plot(engine):
    """Writes PNG pictures of the data and, with a trained model, of what it learned."""
    import plots
    c, info = engine.config, engine.info
    show, folder, split, count = c["show"], c["plot_dir"], c["plot"]["split"], c["plot"]["count"]
    check_writable(os.path.join(folder, "samples.png"), "plot_dir")
    model = load_trained(engine) if c["plot"]["model"] else None
    data = engine.load_data("test" if split == "test" else None)
    x, y = data[f"x_{split}"][:count], data[f"y_{split}"][:count]
    paths = [plots.samples(x, y, info.class_names, info.image_shape, os.path.join(folder, "samples.png"),
                           show, title=f"{c['dataset']} {split} samples")]
    if model is not None:
        probs = host_probabilities(engine, model, data["x_test"])
        matrix = confusion_matrix(data["y_test"], probs.argmax(axis=1), info.num_classes)
        paths.append(plots.confusion(matrix, info.class_names, os.path.join(folder, "confusion.png"), show))
        paths.append(plots.mistakes(data["x_test"], data["y_test"], probs, info.class_names, info.image_shape,
                                    os.path.join(folder, "mistakes.png"), show=show))
        weight = first_layer_weight(model, info.image_shape)
        if weight is None:
            engine.log.info("first_layer.png skipped: the first layer with weights does not read the pixels")
        else:
            paths.append(plots.first_layer(to_numpy(weight), info.image_shape, os.path.join(folder, "first_layer.png"),
                                           show=show, initial=initial_first_layer(engine, weight)))
        history = read_history(c["model_file"], engine.log)
        if history:
            paths.append(plots.training_curves(history, os.path.join(folder, "curves.png"), show))
        watch = read_watch(c["model_file"], engine.log)
        if watch and watch["records"]:
            drawn = [draw(watch, os.path.join(folder, f"watch_{name}.png"), show) for name, draw in
                     (("gradients", plots.watch_gradients), ("updates", plots.watch_updates),
                      ("outputs", plots.watch_outputs), ("dead", plots.watch_dead))]
            paths += [path for path in drawn if path]          # watch_dead: only with ReLU, tanh or sigmoid
    for path in paths:
        engine.log.result(f"wrote {path}")
    if show:
        plots.pyplot(show).show()
    return paths


def predict(engine):
    """Classifies the user's images: one line per file, `FILE: CLASS probability (top-3 ...)`.
    A file that cannot be read gets its own `error:` line and the others go on; the task then
    fails naming them, so the exit status says that some failed. Returns {file: probabilities}."""
    c, info = engine.config, engine.info
    if not c["input"]:
        raise ConfigError("input: no images to predict (give them with --input FILE [FILE ...])")
    if int(np.prod(info.input_shape)) != 28 * 28:
        raise ConfigError(f"dataset: predict prepares 28x28 images, but {c['dataset']} has examples "
                          f"of shape {info.input_shape}")
    model = load_trained(engine)
    targets = [os.path.join(c["plot_dir"], name) for name in output_names(c["input"], "prepared")]
    if c["save_prepared"]:
        check_writable(targets[0], "plot_dir")
    names, results, failed, good = info.class_names, {}, [], []
    for path, target in zip(c["input"], targets):
        try:
            good.append((path, target, prepare_image(path)))                   # image (28, 28)
        except DataError as err:
            if len(c["input"]) == 1:
                raise
            engine.log.error(str(err))
            failed.append(path)
    probs = []                                    # one forward pass for all the readable images
    if good:
        x = np.stack([image for _, _, image in good]).reshape(len(good), *info.input_shape)
        probs = host_probabilities(engine, model, x.astype(engine.dtype))
    for (path, target, image), p in zip(good, probs):
        top = np.argsort(-p)[:3]
        others = ", ".join(f"{names[k]} {p[k]:.4f}" for k in top)
        engine.log.result(f"{path}: {names[top[0]]} {p[top[0]]:.4f} (top-3: {others})")
        results[path] = p
        if c["save_prepared"]:
            import plots
            with atomic_write(target) as f:
                plots.pyplot(False).imsave(f, image, cmap="gray", vmin=0, vmax=1, format="png")
            engine.log.result(f"wrote {target}")
    if failed:
        raise ConfigError(f"{len(failed)} of {len(c['input'])} images could not be classified: {', '.join(failed)}")
    return results


def output_names(paths, kind):
    """The file name of each input's picture of `kind`, `<stem>.<kind>.png`, numbered where stems
    repeat (a/x.png and b/x.png give x.prepared.png and x-2.prepared.png), so none overwrites another."""
    used, names = set(), []
    for path in paths:
        stem, number = os.path.splitext(os.path.basename(path))[0], 1
        name = f"{stem}.{kind}.png"
        while name in used:
            number += 1
            name = f"{stem}-{number}.{kind}.png"
        used.add(name)
        names.append(name)
    return names


def gradcheck_task(engine):
    """Checks the backward pass of each layer of the config's network, and of its loss, against
    central differences (gradcheck.py); no data is read and no file written."""
    return gradcheck.run(engine.config, engine.info.input_shape, engine.log)


def watch_task(engine):
    """Judges the watch record a training run with "watch" left beside `model_file`: one line a
    problem, with its evidence and a hint (watch.diagnose), or one line saying none was found."""
    model_file = engine.config["model_file"]
    watch = read_watch(model_file, engine.log)
    if watch is None:
        raise ConfigError(f"model_file: no watch record at {watch_path(model_file)}; train with "
                          f"\"watch\": {{\"every\": 50}} in the config (or --set watch.every=50) first")
    records = watch["records"]
    epochs = records[-1]["epoch"] if records else 0
    engine.log.result(f"{watch_path(model_file)}: {counted(len(records), 'record')} of "
                      f"{counted(len(watch['layout']), 'layer')}{spacing(records)}, {counted(epochs, 'epoch')}")
    lines = diagnose(watch)
    for line in lines or ["no problem found: no dead or saturated layer, no vanishing or exploding gradient, "
                          "update-to-weight ratios between 1e-5 and 1e-1"]:
        engine.log.result(line)
    return lines


def explain_task(engine):
    """Draws what each layer makes of one input and which pixels decided (explain.py)."""
    import explain                                # which imports this module, and matplotlib
    return explain.run(engine)


TASKS = {"test": test, "summary": summary, "plot": plot, "predict": predict, "gradcheck": gradcheck_task,
         "watch": watch_task, "explain": explain_task}


def first_layer_weight(model, image_shape):
    """The first weights that read the pixels: a Linear's (n_in, n_out) or a Conv2D's
    (F, C, k, k) right after the input (only reshaping layers before it), else None."""
    for layer in model.layers:
        if "weight" in layer.params:
            weight = layer.params["weight"]
            reads_pixels = weight.ndim == 4 or weight.shape[0] == int(np.prod(image_shape))
            return weight if reads_pixels else None
        if not isinstance(layer, (Reshape, Flatten)):
            return None
    return None


def initial_first_layer(engine, weight):
    """The weights `weight` (first_layer_weight's) had before training, as a host array: the
    network built again from the seed it was trained with (the model file's, whatever the
    config says now), as training built it first thing."""
    c = engine.trained_with
    model = build_model(c["network"], to_numpy(weight).dtype, np.random.default_rng(c["seed"]), c["network_names"])
    initial = first_layer_weight(model, engine.info.image_shape)
    return initial if initial is not None and initial.shape == weight.shape else None


def spacing(records):
    """", every 50 batches" from the records' own steps (a resumed run may have changed
    watch.every: ", every 50 to 100 batches"); "" for a single record."""
    gaps = sorted({b["step"] - a["step"] for a, b in zip(records, records[1:])})
    if not gaps:
        return ""
    if len(gaps) == 1:
        return f", every {counted(gaps[0], 'batch', 'batches')}"
    return f", every {gaps[0]} to {gaps[-1]} batches"


def confusion_matrix(y, predicted, num_classes):
    """matrix[i, j] = how many examples of class i were predicted as class j."""
    return np.bincount(y * num_classes + predicted, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def confusion_text(matrix, class_names):
    """Per-class accuracy, then the confusion matrix (rows true, columns predicted), as text."""
    width = max(6, *map(len, class_names))
    lines = ["", "Per-class accuracy:"]
    for name, row, hits in zip(class_names, matrix, np.diag(matrix)):
        lines.append(f"  {name:>{width}}: {100 * hits / max(row.sum(), 1):6.2f}%  ({hits}/{row.sum()})")
    lines += ["", "Confusion matrix (rows: true class, columns: predicted class):",
              " " * (width + 2) + "".join(f"{name[:width]:>{width + 1}}" for name in class_names)]
    for name, row in zip(class_names, matrix):
        lines.append(f"  {name:>{width}}" + "".join(f"{v:>{width + 1}}" for v in row))
    return "\n".join(lines)
