"""The JSON config: read it, apply `--set` overrides, fill defaults, and validate every key.

Validation happens here, before any data is loaded or downloaded, and every problem is a
ConfigError whose message names the key, what was expected and what came:
    lr: expected a number in (0, inf), got -1
    lrr: unknown key; did you mean 'lr'?
    network[2].class: unknown 'Lineer'; did you mean 'Linear'? (choices: ...)
The result is a plain dict with every key of DEFAULTS; `network` becomes a list of layer specs
and `network_names` their names. Layer argument values are checked by the layer constructors
(see model.build_model), which the engine calls before loading data.
"""
import copy
import difflib
import inspect
import json
import math
import numbers
import os

from backend import DEVICES
from datasets import BROKEN, DATASETS
from errors import ConfigError
from layers import broken_files
from model import default_names
from nn_module import LAYERS, LOSSES
from optim import OPTIMIZERS, SCHEDULES

TASKS = ("train", "test", "plot", "summary", "predict", "gradcheck", "tune", "watch", "explain")

DEFAULTS = {
    "task": "train",            # train | test | plot | summary | predict | gradcheck | tune | watch | explain
    "dataset": "mnist",         # a name in datasets.DATASETS: mnist, fashion_mnist, npz, csv or your own
    "dataset_args": {},         # the dataset's arguments, e.g. {"path": "my_data.npz"} for npz
    "data_dir": "data",         # where downloaded data is cached
    "model_file": None,         # None: models/<config file name>.pkl
    "log_file": None,           # None: log to the terminal only
    "log_level": 1,             # 0 warnings, 1 a line per epoch (and a bar on a terminal), 2 progress, 3 debug
    "seed": 0,
    "dtype": "float32",
    "device": "cpu",            # cpu (numpy) | gpu (CuPy on an NVIDIA GPU)
    "threads": None,            # cpu: threads that share each batch of a conv net (parallel.py); None: every core
    "batch_size": 100,
    "num_epochs": 30,
    "lr": 0.1,
    "optimizer": {"name": "sgd"},
    "schedule": "step",
    "decay_rate": 1.0,
    "start_epoch_decay": 1,
    "warmup_epochs": 0,
    "clip_grad_norm": None,     # None: no clipping; else the largest joint L2 norm of the gradients
    "train_size": None,         # None: every training example not held out for validation
    "valid_size": 5000,
    "valid_epoch": 1,
    "patience": 0,              # validations without improvement before stopping; 0: never
    "loss": "SoftmaxCrossEntropyLoss",
    "network": None,            # required
    "plot_dir": None,           # None: beside model_file, as <model name>_plots/
    "plot": {"split": "train", "count": 30, "model": True},
    "show": False,              # plot: also open the figures in a window when there is a display
    "input": [],                # predict, explain: image files (PNG, JPEG or .npy)
    "save_prepared": False,     # predict: write the 28x28 image fed to the network into plot_dir
    "explain": {"index": None, "versus": None},     # explain: a test image to explain; a class to contrast
    "augment": None,            # None: off; {"shift": pixels, "rotate": degrees, "scale": fraction}
    "expand": 0,                # pixels; > 0: each training image joins its copies shifted that far
                                # down, up, right and left (NNDL's expand_mnist.py), 5 images for 1
    "watch": None,              # None: off; {"every": N} records every layer every N training batches (watch.py)
    "tensorboard": None,        # None: off; a folder for TensorBoard's event files, one subfolder a run (board.py)
    "tune": None,               # tune task: the search space and the study, see TUNE_DEFAULTS and tune.py
}
AUGMENT_DEFAULTS = {"shift": 0, "rotate": 0, "scale": 0}   # a key missing from "augment"
TUNE_DEFAULTS = {
    "space": {},                # dotted key -> {"float": [low, high], "log": bool}, {"int": ...} or {"choices": ...}
    "trials": 20,               # trials the study runs in all, over every command and worker
    "workers": 1,               # worker processes this command runs (--workers)
    "sampler": "tpe",           # tpe | random | grid (grid: every combination of the choices, once)
    "pruner": "median",         # median | none: stop a trial whose validation accuracy is below the median
    "study": None,              # None: the config file's name
    "storage": None,            # None: sqlite in the study's folder; or a database URL (postgresql://...)
    "heartbeat": 30,            # seconds between a running trial's heartbeats; silent for 2x that: failed, retried
}

# keys that say how a command runs here, not what a model trains: what it prints and draws, the
# images it predicts, its device and threads. A tune study's other machines and a resumed run may
# set them their own way (tune.PLACE_KEYS, runfiles.load_checkpoint add their own)
LOCAL_KEYS = ("log_level", "log_file", "plot", "show", "input", "save_prepared", "explain", "device", "threads",
              "watch", "tensorboard")

# What other tools (Keras, PyTorch, scikit-learn) call a key or argument of this project, in lower
# case. Spelling alone would lead elsewhere: difflib suggests 'decay_rate' for 'learning_rate'.
ALIASES = {
    "learning_rate": "lr", "learningrate": "lr", "eta": "lr",
    "epochs": "num_epochs", "n_epochs": "num_epochs", "max_epochs": "num_epochs", "nb_epoch": "num_epochs",
    "epoch": "num_epochs",
    "batch": "batch_size", "batchsize": "batch_size", "mini_batch_size": "batch_size",
    "layers": "network", "model": "network", "architecture": "network",
    "random_seed": "seed", "random_state": "seed", "verbose": "log_level", "verbosity": "log_level",
    "criterion": "loss", "loss_function": "loss", "objective": "loss", "optim": "optimizer", "solver": "optimizer",
    "scheduler": "schedule", "lr_scheduler": "schedule", "lr_schedule": "schedule", "lr_decay": "decay_rate",
    "validation_size": "valid_size", "val_size": "valid_size", "validation_split": "valid_size",
    "early_stopping_patience": "patience", "warmup": "warmup_epochs",
    "grad_clip": "clip_grad_norm", "clipnorm": "clip_grad_norm", "max_grad_norm": "clip_grad_norm",
    "model_path": "model_file", "save_path": "model_file", "checkpoint": "model_file", "data_path": "data_dir",
    "momentum": "optimizer.momentum", "weight_decay": "optimizer.weight_decay", "nesterov": "optimizer.nesterov",
    "units": "n_out", "out_features": "n_out", "in_features": "n_in", "input_dim": "n_in",
    "filters": "out_channels", "kernel": "kernel_size", "pool_size": "kernel_size", "strides": "stride",
    "rate": "p", "dropout": "p", "alpha": "negative_slope", "epsilon": "eps", "beta_1": "beta1", "beta_2": "beta2",
}


def _closest(word, choices):
    """'; did you mean X?' for a name not in `choices`, or '': the same name in other letter case
    (Relu: ReLU), else what other tools call it (ALIASES), else the closest spelling."""
    choices, word = list(choices), str(word)
    same_but_case = [c for c in choices if str(c).lower() == word.lower()]
    alias = ALIASES.get(word.lower())
    if same_but_case:
        guess = same_but_case[0]
    elif alias is not None and alias.split(".")[0] in choices:     # optimizer.momentum: its first part
        guess = alias
    else:
        close = difflib.get_close_matches(word, choices, n=1)
        guess = close[0] if close else None
    return f"; did you mean {guess!r}?" if guess is not None else ""


def _describe(value):
    return json.dumps(value) if isinstance(value, (bool, type(None))) else repr(value)


def _integer(low, high=math.inf):
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            bound = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
            raise ConfigError(f"{key}: expected an integer {bound}, got {_describe(value)}")
        return value
    return check


def _number(low, high, low_open=False):
    def check(key, value):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not (low < value if low_open else low <= value) or value > high:
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high == math.inf else ']'}"
            raise ConfigError(f"{key}: expected a number in {interval}, got {_describe(value)}")
        return float(value)
    return check


def _choice(choices):
    def check(key, value):
        if value not in choices:
            raise ConfigError(f"{key}: unknown {_describe(value)}{_closest(value, choices)} "
                              f"(choices: {', '.join(choices)})")
        return value
    return check


def _optional(check):
    return lambda key, value: None if value is None else check(key, value)


def _boolean():
    def check(key, value):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_describe(value)}")
        return value
    return check


def _strings():
    def check(key, value):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{key}: expected a list of file names, got {_describe(value)}")
        return value
    return check


def _object(checks, defaults=None):
    """An object whose keys are checked by `checks` and missing ones filled from `defaults`
    (None: the key's DEFAULTS)."""
    def check(key, value):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected an object, got {_describe(value)}")
        for name in value:
            if name not in checks:
                raise ConfigError(f"{key}.{name}: unknown key{_closest(name, checks)} (keys: {', '.join(checks)})")
        filled = {**(DEFAULTS[key] if defaults is None else defaults), **value}
        return {name: checks[name](f"{key}.{name}", filled[name]) for name in checks}
    return check


def _object_of_anything():
    """An object whose values are checked elsewhere (the tune task checks its search space)."""
    def check(key, value):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected an object, got {_describe(value)}")
        return value
    return check


def _string():
    def check(key, value):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: expected a non-empty string, got {_describe(value)}")
        return value
    return check


CHECKS = {
    "task": _choice(TASKS),
    "data_dir": _string(),
    "model_file": _optional(_string()),
    "log_file": _optional(_string()),
    "log_level": _integer(0, 3),
    "seed": _integer(0),
    "dtype": _choice(("float32", "float64")),
    "device": _choice(DEVICES),
    "threads": _optional(_integer(1)),
    "batch_size": _integer(1),
    "num_epochs": _integer(1),
    "lr": _number(0, math.inf, low_open=True),
    "schedule": _choice(SCHEDULES),
    "decay_rate": _number(0, 1, low_open=True),
    "start_epoch_decay": _integer(1),
    "warmup_epochs": _integer(0),
    "clip_grad_norm": _optional(_number(0, math.inf, low_open=True)),
    "train_size": _optional(_integer(1)),
    "valid_size": _integer(0),
    "valid_epoch": _integer(1),
    "patience": _integer(0),
    "loss": _choice(sorted(LOSSES)),
    "plot_dir": _optional(_string()),
    "plot": _object({"split": _choice(("train", "test")), "count": _integer(1, 400), "model": _boolean()}),
    "show": _boolean(),
    "input": _strings(),
    "save_prepared": _boolean(),
    "explain": _object({"index": _optional(_integer(0)), "versus": _optional(_integer(0))}),
    "augment": _optional(_object({"shift": _integer(0), "rotate": _number(0, 180), "scale": _number(0, 0.5)},
                                 AUGMENT_DEFAULTS)),
    "expand": _integer(0),
    "watch": _optional(_object({"every": _integer(1)}, {"every": 50})),
    "tensorboard": _optional(_string()),
    "tune": _optional(_object({"space": _object_of_anything(), "trials": _integer(1), "workers": _integer(1),
                               "sampler": _choice(("tpe", "random", "grid")), "pruner": _choice(("median", "none")),
                               "study": _optional(_string()), "storage": _optional(_string()),
                               "heartbeat": _integer(1)}, TUNE_DEFAULTS)),
}


def read_json(path):
    """The JSON object in `path`; ConfigError for a missing, empty, invalid or non-object file."""
    if os.path.isdir(path):
        raise ConfigError(f"config {path}: is a folder, expected a JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config {path}: cannot read it: {getattr(err, 'strerror', None) or err}") from None
    if not text.strip():
        raise ConfigError(f"config {path}: the file is empty, expected a JSON object")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"config {path}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: expected a JSON object at the top, got {type(raw).__name__}")
    return raw


def apply_override(raw, assignment):
    """Applies one `--set KEY=VALUE` to `raw`. VALUE is JSON if it parses, else a string;
    dotted keys reach into objects (optimizer.momentum) and lists (network.0.n_out)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {assignment}: expected KEY=VALUE (for example --set lr=0.05)")
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    *parents, last = key.split(".")
    node = raw
    for depth, part in enumerate(parents):
        node = _child(node, part, ".".join(parents[:depth + 1]), assignment, top=depth == 0)
    if isinstance(node, list):
        node[_index(node, last, key, assignment)] = value
    else:
        node[last] = value


def _child(node, part, where, assignment, top):
    """The object or list under `part` of `node`, created as the default (or {}) if missing."""
    if isinstance(node, list):
        child = node[_index(node, part, where, assignment)]
    else:
        if part not in node and where == f"network.{part}":        # named layers: no new layer half-made
            raise ConfigError(f"--set {assignment}: the network has no layer {part!r} "
                              f"(its layers: {', '.join(node)})")
        if part not in node:
            default = DEFAULTS.get(part) if top else None
            node[part] = copy.deepcopy(default) if isinstance(default, dict) else {}
        child = node[part]
    if not isinstance(child, (dict, list)):
        raise ConfigError(f"--set {assignment}: {where} is {_describe(child)}, not an object or list")
    return child


def _index(node, part, where, assignment):
    if not (part.isascii() and part.isdigit()) or int(part) >= len(node):
        raise ConfigError(f"--set {assignment}: {where}: expected a list index below {len(node)}")
    return int(part)


def check_layers(network):
    """(layer specs as a list, their names) from the list or named-object form of `network`."""
    if isinstance(network, dict):
        names, specs = [f"network.{name}" for name in network], list(network.values())
    elif isinstance(network, list):
        names, specs = default_names(len(network)), network
    else:
        raise ConfigError(f"network: expected a list of layers or an object of named layers, "
                          f"got {_describe(network)}")
    if not specs:
        raise ConfigError("network: expected at least one layer, got none")
    for name, spec in zip(names, specs):
        if not isinstance(spec, dict):
            raise ConfigError(f"{name}: expected an object with a \"class\", got {_describe(spec)}")
        if "class" not in spec:
            raise ConfigError(f"{name}: missing \"class\" (choices: {', '.join(sorted(LAYERS))})")
        cls = LAYERS.get(spec["class"]) if isinstance(spec["class"], str) else None
        if cls is None:
            raise ConfigError(f"{name}.class: unknown {_describe(spec['class'])}"
                              f"{_closest(spec['class'], LAYERS)} (choices: {', '.join(sorted(LAYERS))})"
                              f"{broken_files()}")
        check_arguments(name, cls, {k: v for k, v in spec.items() if k != "class"}, ("dtype", "rng"))
    return [dict(spec) for spec in specs], names


def check_arguments(name, cls, arguments, hidden):
    """Argument names against `cls`'s signature: unknown ones and missing required ones."""
    signature = inspect.signature(cls)
    known = [p for p in signature.parameters if p not in hidden]
    for key in arguments:
        if key not in known:
            raise ConfigError(f"{name}.{key}: unknown argument of {cls.__name__}{_closest(key, known)} "
                              f"(arguments: {', '.join(known) or 'none'})")
    for p in signature.parameters.values():
        if p.default is inspect.Parameter.empty and p.name not in arguments and p.name not in hidden:
            raise ConfigError(f"{name}.{p.name}: missing (required by {cls.__name__})")


def check_loss(loss, last_class):
    """The loss must suit the network's end: probabilities for CrossEntropyLoss, logits for
    SoftmaxCrossEntropyLoss and SigmoidCrossEntropyLoss (a second softmax would train on
    softmax(softmax(z)), a second sigmoid on sigmoid(sigmoid(z)))."""
    if loss == "CrossEntropyLoss" and last_class != "Softmax":
        raise ConfigError("loss: CrossEntropyLoss takes probabilities, but the network ends in "
                          f"{last_class}; end it with {{\"class\": \"Softmax\"}} or use SoftmaxCrossEntropyLoss")
    if loss == "SoftmaxCrossEntropyLoss" and last_class == "Softmax":
        raise ConfigError("loss: SoftmaxCrossEntropyLoss applies the softmax itself, but the network already "
                          "ends in Softmax; use CrossEntropyLoss or remove the final Softmax")
    if loss == "SigmoidCrossEntropyLoss" and last_class == "Sigmoid":
        raise ConfigError("loss: SigmoidCrossEntropyLoss applies the sigmoid itself, but the network already "
                          "ends in Sigmoid; remove the final Sigmoid")


def check_optimizer(optimizer, lr):
    if not isinstance(optimizer, dict):
        raise ConfigError(f"optimizer: expected an object like {{\"name\": \"sgd\"}}, got {_describe(optimizer)}")
    optimizer = {"name": "sgd", **optimizer}
    name = _choice(sorted(OPTIMIZERS))("optimizer.name", optimizer["name"])
    arguments = {k: v for k, v in optimizer.items() if k != "name"}
    for key in ("lr", "learning_rate"):
        if key in arguments:
            raise ConfigError(f"optimizer.{key}: set the learning rate with the top-level key 'lr'")
    check_arguments("optimizer", OPTIMIZERS[name], arguments, ("lr",))
    try:
        OPTIMIZERS[name](lr=lr, **arguments)
    except ValueError as err:
        raise ConfigError(f"optimizer.{err}") from None
    return optimizer


def check_dataset(name, arguments, data_dir):
    """The dataset's name against the registry, and its arguments against its class: names by
    the signature, values by constructing it (which reads no data)."""
    if not isinstance(name, str) or name not in DATASETS:
        broken = "".join(f"; {reason}" for reason in BROKEN.values())
        raise ConfigError(f"dataset: unknown {_describe(name)}{_closest(name, DATASETS)} "
                          f"(choices: {', '.join(sorted(DATASETS))}){broken}")
    if not isinstance(arguments, dict):
        raise ConfigError(f"dataset_args: expected an object of the dataset's arguments, got {_describe(arguments)}")
    check_arguments("dataset_args", DATASETS[name], arguments, ("data_dir",))
    try:
        DATASETS[name](data_dir=data_dir, **arguments)
    except ValueError as err:
        raise ConfigError(f"dataset_args.{err}") from None


def validate(raw, path="config.json"):
    """A complete, checked config from the raw JSON object (see the module docstring)."""
    for key in raw:
        if key not in DEFAULTS:
            raise ConfigError(f"{key}: unknown key{_closest(key, DEFAULTS)}")
    config = {**copy.deepcopy(DEFAULTS), **raw}
    for key, check in CHECKS.items():
        config[key] = check(key, config[key])
    check_dataset(config["dataset"], config["dataset_args"], config["data_dir"])
    if config["network"] is None:
        raise ConfigError("network: missing (a list of layers, e.g. [{\"class\": \"Linear\", \"n_in\": 784, "
                          "\"n_out\": 10}])")
    config["network"], config["network_names"] = check_layers(config["network"])
    config["optimizer"] = check_optimizer(config["optimizer"], config["lr"])
    check_loss(config["loss"], config["network"][-1]["class"])
    if config["model_file"] is None:
        stem = os.path.splitext(os.path.basename(path))[0]
        config["model_file"] = os.path.join("models", stem + ".pkl")
    if config["plot_dir"] is None:
        config["plot_dir"] = os.path.splitext(config["model_file"])[0] + "_plots"
    return config


def changes(old, new, ignore=(), only=("",), shown=6):
    """What differs between two validated configs, as 'key: OLD -> NEW' strings with the keys a
    user writes: optimizer.momentum, and layers by the names in `new` (network.fc1.n_out), so a
    network given as a list and the same one as named layers do not differ. Only keys starting
    with one of `only`, and none of `ignore`, are compared; after `shown` changes, the rest are counted."""
    old_layers, new_layers = old.get("network") or [], new["network"]
    names = list(new["network_names"]) + default_names(len(old_layers))[len(new_layers):]
    before, after = _leaves(old, names), _leaves(new, names)
    found = [f"network: {len(old_layers)} layers -> {len(new_layers)}"] if len(old_layers) != len(new_layers) else []
    for key in [*after, *(k for k in before if k not in after)]:
        compared = key.startswith(tuple(only)) and not key.startswith(tuple(ignore))
        if compared and before.get(key, _UNSET) != after.get(key, _UNSET):
            found.append(f"{key}: {_shown(before.get(key, _UNSET))} -> {_shown(after.get(key, _UNSET))}")
    return found[:shown] + ([f"and {len(found) - shown} more"] if len(found) > shown else [])


_UNSET = object()       # a key one of the two configs does not have


def _shown(value):
    return "(not set)" if value is _UNSET else _describe(value)


def _leaves(config, names):
    """{dotted key: value} of a validated config: objects opened one level, layers by `names`."""
    leaves = {}
    for key, value in config.items():
        if key == "network":
            for name, spec in zip(names, value):
                leaves.update({f"{name}.{argument}": v for argument, v in spec.items()})
        elif isinstance(value, dict) and value:
            leaves.update({f"{key}.{k}": v for k, v in value.items()})
        elif key != "network_names":
            leaves[key] = value
    return leaves


def load_config(path, overrides=(), task=None):
    """Reads, overrides (`--set` strings, then `--task`), fills and validates a config file."""
    return from_raw(read_raw(path, overrides), path, task)


def read_raw(path, overrides=()):
    """The config file's JSON object with the `--set` strings applied: not yet filled or validated."""
    raw = read_json(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw


def from_raw(raw, path, task=None):
    """The filled and validated config of `raw` (read_raw's) with `--task` set; `raw` stays as it is."""
    return validate(raw if task is None else {**raw, "task": task}, path)
