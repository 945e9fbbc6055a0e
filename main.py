"""Command line: python3 main.py CONFIG.json [--task T] [--set KEY=VALUE ...] [--resume] [-v | -q]
                                 [--trials N] [--workers N].

Parses the options, loads the config and hands it to the engine; no training logic lives here.
Exit status: 0 on success, 2 with one line `error: ...` for any bad input, 130 when interrupted
(SIGINT or SIGTERM; training leaves a checkpoint for --resume), 141 when the reader of the
output leaves, 1 for a bug.
"""
import argparse
import contextlib
import json
import os
import signal
import sys
import threading

# One BLAS thread unless the environment asks for more. At batches of 100 OpenBLAS's threads
# gain little on a quiet machine (they lose on the MLPs and conv nets, win 1.3x on network1),
# and while they wait they spin, which makes a machine with one other busy process many times
# slower (docs/performance.md). The cores work instead through the `threads` setting, which
# splits each batch of a conv net (parallel.py); BLAS threads inside each of its threads would
# fight over the cores. This must happen before numpy is imported.
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
if not any(variable in os.environ for variable in BLAS_THREADS):
    os.environ.update(dict.fromkeys(BLAS_THREADS, "1"))

from backend import DEVICES  # noqa: E402  (after the BLAS threads are set)
from config import TASKS, from_raw, read_raw  # noqa: E402
from engine import Engine, Interrupted  # noqa: E402
from errors import ConfigError  # noqa: E402
from log import Logger  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def error(self, message):                  # one line, like every other user error
        raise ConfigError(message)


def parse_args(argv):
    parser = _Parser(prog="main.py", description="Train and test neural networks written from scratch "
                                                 "in numpy, from a JSON config.",
                     epilog="Each epoch's line gives \"train (running)\": the mean loss and accuracy over "
                            "the epoch's batches while the weights changed, so usually below \"valid\", "
                            "which the weights at the end of the epoch give.")
    parser.add_argument("config", nargs="?", help="the JSON config file (see docs/config.md for every key); it may "
                                                  "come before or after the options")
    parser.add_argument("--task", choices=TASKS, default=None,
                        help="the task to run (default: the config's \"task\", itself 'train' by default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key; VALUE is JSON or else a string; dotted keys reach "
                             "nested objects, e.g. optimizer.momentum=0.8 (repeatable; default: none)")
    parser.add_argument("--input", nargs="+", metavar="FILE", default=None,
                        help="predict, explain: PNG, JPEG or .npy images to classify (default: the config's \"input\", none)")
    parser.add_argument("--save-prepared", action="store_true",
                        help="predict: also write the 28x28 image fed to the network into plot_dir (default: off)")
    parser.add_argument("--show", action="store_true",
                        help="plot: also open the figures in a window when there is a display (default: off)")
    parser.add_argument("--device", choices=DEVICES, default=None,
                        help="where to compute: cpu (numpy) or gpu (CuPy on an NVIDIA GPU) "
                             "(default: the config's \"device\", itself 'cpu' by default)")
    parser.add_argument("--trials", type=int, default=None, metavar="N",
                        help="tune: trials the study runs in all (default: the config's tune.trials, 20)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="tune: worker processes on this machine (default: the config's tune.workers, 1)")
    parser.add_argument("--resume", action="store_true",
                        help="continue training from the checkpoint beside model_file: an interrupted run, "
                             "or a finished one to a larger num_epochs (default: start afresh)")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="raise log_level by one per -v (default: the config's log_level, 1)")
    verbosity.add_argument("-q", "--quiet", action="count", default=0,
                           help="lower log_level by one per -q (default: the config's log_level, 1)")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = _config_among_inputs(args)
    return args


def _config_among_inputs(args):
    """The config when it came after --input's files (`--input a.png config.json`): --input takes
    every word up to the next option, and images are never .json files, so a lone .json is the config."""
    configs = [name for name in args.input or [] if name.lower().endswith(".json")]
    if len(configs) != 1:
        raise ConfigError("no config file given (usage: main.py CONFIG.json [options], see --help)")
    args.input.remove(configs[0])
    return configs[0]


def _terminate(signum, frame):
    raise KeyboardInterrupt                       # SIGTERM ends the run like Ctrl-C: cleanly, exit 130


def _tell(log, message):
    """A line on stderr that ends the run, in the place of a progress bar still drawn."""
    if log:
        log.end_progress()
    print(message, file=sys.stderr)


def main(argv=None):
    log, on_main_thread = None, threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        args = parse_args(argv)
        overrides = args.overrides + [f"{key}={value}" for key, value in (
            ("input", json.dumps(args.input) if args.input else None),
            ("save_prepared", "true" if args.save_prepared else None),
            ("show", "true" if args.show else None), ("device", args.device), ("tune.trials", args.trials),
            ("tune.workers", args.workers)) if value is not None]
        raw = read_raw(args.config, overrides)      # read once: the tune task plans its trials from it too
        config = from_raw(raw, args.config, args.task)
        config["log_level"] = min(3, max(0, config["log_level"] + args.verbose - args.quiet))
        try:
            log = Logger(config["log_level"], config["log_file"])
        except OSError as err:
            raise ConfigError(f"log_file: cannot open {config['log_file']}: {err.strerror}") from None
        if config["task"] == "tune":
            if args.resume:
                raise ConfigError("--resume: the tune task continues its study by itself; run the same command again")
            import tune                           # imports Optuna, which only this task needs
            status = tune.run(args.config, raw, config, log)
        else:
            Engine(config, log).run(args.resume)
            status = 0
    except ConfigError as err:
        _tell(log, f"error: {err}")
        return 2
    except Interrupted as err:
        _tell(log, str(err))
        return 130
    except KeyboardInterrupt:
        _tell(log, "interrupted")
        return 130
    except BrokenPipeError:                       # the reader left (`... | head`): stop quietly
        with contextlib.suppress(OSError, ValueError):   # no more writes to the closed pipe at exit
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return 141
    finally:
        if log:
            log.close()
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    return status


if __name__ == "__main__":
    sys.exit(main())
