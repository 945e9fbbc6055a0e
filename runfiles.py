"""The run's files: its checkpoint, its history and its watch record, all beside `model_file`.

A run that saves `model.pkl` also keeps
  * `model.ckpt`, its checkpoint: the weights, the optimizer's state, the random generator's
    state and the progress (`engine.new_progress`), all --resume needs to go on where it was;
  * `model.history.json`, its history: one record per finished epoch (see `Engine.train`),
    which the plot task draws as training curves;
  * `model.watch.json`, with `"watch"` in the config, its watch record (watch.py): what every
    layer did every few batches, which the plot and watch tasks draw and judge.
All are written atomically (utils.atomic_write): a run cut off while writing leaves the old
file whole. The checkpoint is a model file (utils.save_model) with three more keys, read back
through the same restricted unpickler.

This module is not the model file's (utils.py saves and loads that), and it does not train: the
engine decides when to save, and what a resumed run does with what is read here.
"""
import contextlib
import json
import os

from backend import map_arrays, to_numpy
from config import LOCAL_KEYS, changes
from errors import ConfigError, ModelFileError
from log import counted
from utils import atomic_write, copy_arrays, read_pickle, save_model


def checkpoint_path(model_file):
    """Where the checkpoint of the run that saves `model_file` goes: beside it, as .ckpt."""
    return os.path.splitext(model_file)[0] + ".ckpt"


def history_path(model_file):
    """Where the history of the run that saves `model_file` goes: beside it, as .history.json."""
    return os.path.splitext(model_file)[0] + ".history.json"


def is_finished(progress, num_epochs):
    """Whether a run with this progress ended (all num_epochs trained, or stopped early), rather
    than was interrupted."""
    return progress["epoch"] > num_epochs or progress["stopped"]


def save_checkpoint(config, model, optimizer, rng, progress, threads):
    """Everything a resumed run needs: weights, optimizer state, random state, position, and the
    number of threads that shared each batch (their sums round differently)."""
    save_model(checkpoint_path(config["model_file"]), model, config, {
        "optimizer": map_arrays(to_numpy, optimizer.state_dict()), "rng": rng.bit_generator.state,
        "progress": progress, "threads": threads})


def load_checkpoint(config, model, optimizer, rng, threads, log):
    """Restores model, optimizer and `rng` from the checkpoint of `config`'s run, after checking
    that it may go on under `config` (on `threads` threads); returns the progress."""
    path = checkpoint_path(config["model_file"])
    payload = read_pickle(path, what="checkpoint", hint="nothing to resume: train without --resume")
    if not {"optimizer", "rng", "progress"} <= payload.keys():
        raise ModelFileError(f"{path}: not a checkpoint (a model file?); train without --resume")
    ignored = LOCAL_KEYS + ("task", "num_epochs")    # a checkpoint holds numpy arrays: any device resumes it
    changed = changes(payload["config"], config, ignore=ignored)
    if changed:
        raise ConfigError(f"--resume: {path} was made with another config (then -> now: {'; '.join(changed)}); "
                          "only num_epochs may change, to train longer: resume with the run's config, "
                          "or train without --resume")
    progress, epochs, then = payload["progress"], config["num_epochs"], payload["config"]["num_epochs"]
    if not is_finished(progress, then) and epochs < then:
        raise ConfigError(f"--resume: the run was interrupted in epoch {progress['epoch']}; num_epochs may only "
                          f"grow, to train longer (num_epochs {then} -> {epochs}): resume with num_epochs {then} "
                          "or more, or train without --resume")
    if progress["epoch"] > epochs or (progress["stopped"] and epochs == then):
        trained = progress["epoch"] - 1
        epochs_text = counted(trained, "epoch")
        ended = (f"stopped early after {epochs_text}" if progress["stopped"]
                 else f"has already trained {epochs_text}")
        raise ConfigError(f"--resume: the run {ended} (num_epochs {then}); "
                          f"to train longer, raise num_epochs (--set num_epochs=N, N > {trained})")
    if progress["stopped"]:                       # more epochs for a run that stopped early: patience anew
        progress.update(stopped=False, stale=0)
    trained_on = payload.get("threads", 1)
    if trained_on != threads:
        log.warning(f"--resume: the run trained on {trained_on} thread(s) and goes on with {threads}; its "
                    f"weights will differ in the last bits from those of a run on {trained_on} "
                    f"(--set threads={trained_on} gives those)")
    copy_arrays(model, payload, path)
    optimizer.load_state_dict(payload["optimizer"])
    rng.bit_generator.state = payload["rng"]
    return progress


def finished_checkpoint(model_file):
    """Whether the checkpoint beside `model_file` is that of a run that ended (kept for --resume
    to extend), not of an interrupted one. One that cannot be read raises its ModelFileError."""
    payload = read_pickle(checkpoint_path(model_file), what="checkpoint", hint="delete it to start afresh")
    try:
        return is_finished(payload["progress"], payload["config"]["num_epochs"])
    except (KeyError, TypeError):
        return False


def replaces_checkpoint(model_file):
    """Whether a fresh run that saves `model_file` finds a checkpoint to replace: that of a run that
    ended (which --resume could extend), to be removed once the new run has files of its own. That
    of an interrupted run is a ConfigError: only --resume, or deleting it, may end it."""
    path = checkpoint_path(model_file)
    if not os.path.exists(path):
        return False
    if not finished_checkpoint(model_file):
        raise ConfigError(f"{path} holds an interrupted run: continue it with --resume, or delete it to start afresh")
    return True


def remove_checkpoint(model_file):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(checkpoint_path(model_file))


def read_history(model_file, log):
    """The saved training history, or None (with a warning if it exists but cannot be read)."""
    path = history_path(model_file)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning(f"{path}: cannot read the training history ({err}); no curves drawn")
        return None


def save_history(model_file, history):
    """Writes the history (a list of epoch records) as JSON, atomically."""
    with atomic_write(history_path(model_file), "w") as f:
        json.dump(history, f, indent=1)


def watch_path(model_file):
    """Where the watch record of the run that saves `model_file` goes: beside it, as .watch.json."""
    return os.path.splitext(model_file)[0] + ".watch.json"


def read_watch(model_file, log):
    """The saved watch record ({"every", "layout", "records"}; see watch.py), or None (with a
    warning if it exists but cannot be read)."""
    path = watch_path(model_file)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning(f"{path}: cannot read the watch record ({err})")
        return None


def remove_watch(model_file):
    with contextlib.suppress(FileNotFoundError):
        os.unlink(watch_path(model_file))


def save_watch(model_file, watch):
    """Writes the watch record as JSON, atomically."""
    with atomic_write(watch_path(model_file), "w") as f:
        json.dump(watch, f)
