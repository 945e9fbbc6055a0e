"""The tune task: a hyperparameter search with Optuna, each trial an ordinary training run.

    python3 main.py configs/tune_seed_mlp.json --task tune [--trials N] [--workers N]

The config is a training config plus a `tune` section (keys and defaults in config.TUNE_DEFAULTS).
Its `space` maps keys that `--set` can reach to what to try:
    "lr":                 {"float": [0.01, 1.0], "log": true}     a float range, here on a log scale
    "num_epochs":         {"int": [10, 40]}                       an integer range (inclusive)
    "optimizer.name":     {"choices": ["sgd", "momentum"]}        a list of values
    "network.0.n_out,network.2.n_in": {"int": [64, 512]}         several keys, one value
Trial k of a study is the config with its sampled values set (as `--set` would), its own seed
(derived from the study's `seed` and k) and its model file in the study's folder (`model_file`
without `.pkl`, then the study's name, so that studies sharing a database keep their files
apart; its pictures go in `plot_dir`, then the study's name); the engine trains it, with every
check a training run has, and reports each validation accuracy to the pruner. The trial's value
is its best validation accuracy: the test set is never evaluated.

The study lives in a database: by default a SQLite file, study.db in `model_file` without
`.pkl`, or any URL Optuna's RDB storage takes (postgresql://... for several machines). It keeps
the search space, the base config and the heartbeat it was created with; a command with another
space or config is refused. Its trials are made up front as WAITING trials, one per "slot"
0..trials-1 (a user attribute). A worker takes one at a time,
and the database turns a WAITING trial into a RUNNING one for one worker only, so however many
workers, commands and machines share the study, each slot runs once, and running the command
again continues where the study stopped.

A slot's trial that is lost (Ctrl-C, SIGKILL, data that cannot be read, a bug) is recorded as FAIL
without a "failure" attribute and copied to a new WAITING trial with the same values and seed,
by this module (Ctrl-C) or by Optuna's heartbeat (a worker that stopped beating for two
heartbeats). A trial that fails on its own account (training diverges) keeps FAIL with its
reason in "failure", and the study goes on.

This is the only module that imports Optuna; nothing else in the project needs it installed.
"""
import contextlib
import copy
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import socket
import threading
import time
import warnings

import numpy as np

from config import LOCAL_KEYS, apply_override, changes, validate
from engine import Engine, Interrupted, stop_requests
from errors import ConfigError, DataError
from log import Logger, counted
from model import build_model
from parallel import available_cores
from runfiles import checkpoint_path
from utils import atomic_write, check_writable

try:
    import optuna
    import sqlalchemy.engine
    import sqlalchemy.exc
    from optuna.trial import TrialState
except ImportError as err:                     # this task only: the others never import this module
    raise ConfigError(f"the tune task needs optuna ({err}): pip install -r requirements.txt") from None

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)   # heartbeat, plots
BEST_SHOWN = 5                                  # rows of the final table
SETUP_WAIT = 30                                 # seconds to wait for the command that creates the study


class Surplus(Exception):
    """A trial made when no WAITING slot was left (two workers asked at once): it runs nothing."""


class TrialFailed(Exception):
    """The trial's own failure (divergence, values the checks refuse): recorded, the study goes on."""


# ---- the plan: everything checked before any trial ------------------------------------------

def run(config_path, raw, config, log):
    """The tune task: checks the search space and the database, runs the trials with
    `tune.workers` processes, then prints the best trials and writes best.json and the plots
    (when it is interrupted too, from the trials finished so far). Returns the exit status:
    1 if a worker process failed (its traceback is above), else 0."""
    plan = make_plan(config_path, raw, config)
    study, created = open_study(plan)
    add_slots(study, plan, created)
    grid = " (grid: every combination once, whatever tune.trials says)" if plan.sampler == "grid" else ""
    log.info(f"study {plan.name} in {plan.shown_url}: {plan.trials} trials{grid}, "
             f"{counted(plan.workers, 'worker')} here")
    failed = []
    try:
        if plan.workers == 1:
            work(plan, study, log)
        else:
            failed = run_workers(plan, log)
    except Interrupted:
        report(plan, study, log)                # the best trials so far
        raise
    report(plan, study, log)
    for name in failed:
        log.error(f"{name} failed; see its traceback above")
    return 1 if failed else 0


@dataclasses.dataclass
class Plan:
    """Everything a worker needs, checked before any trial (plain data: it travels to worker
    processes). `heartbeat` alone changes later: a command on an existing study takes the
    study's own (use_stored_heartbeat)."""
    config_path: str        # the config file, for the paths inside it
    raw: dict               # the config with the --set strings applied, without task and tune
    space: dict             # key -> checked entry (parse_entry)
    name: str               # the study's name
    folder: str             # model_file without .pkl: the default database and the studies' folders
    study_folder: str       # this study's trial models and best.json
    plot_dir: str           # this study's pictures
    url: str                # the database's URL
    shown_url: str          # the same without its password
    storage_given: bool     # tune.storage was given (else the SQLite file in `folder`)
    trials: int
    workers: int
    sampler: str
    pruner: str
    threads: int            # each trial's threads: the workers share the cores
    heartbeat: float
    seed: int
    log_level: int
    log_file: str


def make_plan(config_path, raw, config):
    """The Plan of a tune command. `raw` is the config file with the `--set` strings applied
    (config.read_raw), `config` its validation."""
    c, t = config, config["tune"]
    if not t or not t["space"]:
        raise ConfigError('tune.space: the tune task needs a search space, e.g. "tune": {"space": '
                          '{"lr": {"float": [0.01, 1.0], "log": true}}}')
    check_validates(c)
    space = {key: parse_entry(f"tune.space.{key}", entry) for key, entry in t["space"].items()}
    for key in space:
        reserved = {k.strip().split(".")[0] for k in key.split(",")} & {"seed", "model_file", "task", "tune"}
        if reserved:
            raise ConfigError(f"tune.space.{key}: {reserved.pop()} is set by the tune task for each trial, "
                              "not searched")
    raw = copy.deepcopy(raw)                    # the plan's own: `config` shares objects with it
    raw.pop("tune", None)
    raw.pop("task", None)
    for key, entry in space.items():
        check_values(raw, key, entry, config_path)
    name = t["study"] or os.path.splitext(os.path.basename(config_path))[0]
    if name in ("", ".", "..") or "/" in name or os.sep in name:
        raise ConfigError(f"tune.study: the study's files go in a folder of its name; expected a name without "
                          f"'/', got {json.dumps(name)}")
    folder = os.path.splitext(c["model_file"])[0]
    check_writable(os.path.join(folder, "study.db"), "model_file")
    trials = t["trials"]
    if t["sampler"] == "grid":
        if any("choices" not in entry for entry in space.values()):
            raise ConfigError("tune.sampler: grid searches lists of choices only; give every key of tune.space "
                              "as {\"choices\": [...]}, or use tpe or random")
        trials = int(np.prod([len(entry["choices"]) for entry in space.values()]))    # each combination once
    url = t["storage"] or "sqlite:///" + os.path.abspath(os.path.join(folder, "study.db"))
    return Plan(config_path=config_path, raw=raw, space=space, name=name, folder=folder,
                study_folder=os.path.join(folder, name), plot_dir=os.path.join(c["plot_dir"], name),
                url=url, shown_url=shown(url), storage_given=t["storage"] is not None,
                trials=trials, workers=t["workers"], sampler=t["sampler"], pruner=t["pruner"],
                threads=c["threads"] or max(1, available_cores() // t["workers"]),
                heartbeat=t["heartbeat"], seed=c["seed"], log_level=c["log_level"], log_file=c["log_file"])


def parse_entry(key, entry):
    """One search-space entry, checked: {"float": [low, high], "log": bool}, {"int": [low, high],
    "log": bool} or {"choices": [value, ...]} (numbers, strings, true, false or null)."""
    kinds = [kind for kind in ("float", "int", "choices") if isinstance(entry, dict) and kind in entry]
    if len(kinds) != 1:
        raise ConfigError(f'{key}: expected one of {{"float": [low, high]}}, {{"int": [low, high]}} or '
                          f'{{"choices": [...]}}, got {json.dumps(entry)}')
    kind = kinds[0]
    allowed = {"choices"} if kind == "choices" else {kind, "log"}
    for name in entry:
        if name not in allowed:
            raise ConfigError(f"{key}.{name}: unknown key (keys: {', '.join(sorted(allowed))})")
    if kind == "choices":
        choices = entry["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}.choices: expected a non-empty list, got {json.dumps(choices)}")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in choices):
            raise ConfigError(f"{key}.choices: expected numbers, strings, true, false or null, "
                              f"got {json.dumps(choices)}")
        return {"choices": choices}
    bounds, log = entry[kind], entry.get("log", False)
    number = int if kind == "int" else (int, float)
    if (not isinstance(bounds, list) or len(bounds) != 2
            or not all(isinstance(b, number) and not isinstance(b, bool) for b in bounds)):
        raise ConfigError(f"{key}.{kind}: expected [low, high], two {'integers' if kind == 'int' else 'numbers'}, "
                          f"got {json.dumps(bounds)}")
    low, high = bounds
    if low > high:
        raise ConfigError(f"{key}.{kind}: low {low} is above high {high}")
    if not isinstance(log, bool):
        raise ConfigError(f"{key}.log: expected true or false, got {json.dumps(log)}")
    if log and low <= 0:
        raise ConfigError(f"{key}.{kind}: a log scale needs low > 0, got {low}")
    if kind == "float":                         # sampled as floats, so checked as floats: 1.0 is no epoch count
        low, high = float(low), float(high)
    return {kind: [low, high], "log": log}


def check_validates(config):
    """ConfigError unless the config holds out a validation split: it is what scores a trial."""
    if not config["valid_size"]:
        raise ConfigError("valid_size: the tune task scores trials on the validation split; expected > 0, got 0")


def check_values(raw, key, entry, config_path):
    """Each choice, or both ends of a range, set into the config as `--set` would, must pass the
    config check and build a network that fits the data; else one ConfigError naming the key."""
    for value in entry.get("choices") or entry.get("float") or entry.get("int"):
        try:
            config = trial_config(raw, {key: value}, config_path)
            check_validates(config)
            engine = Engine(config, Logger(0))
            engine.check_fits(build_model(config["network"], engine.dtype, engine.rng, config["network_names"]))
        except ConfigError as err:
            raise ConfigError(f"tune.space.{key}: the value {json.dumps(value)} is refused: {err}") from None


def trial_config(raw, params, config_path, **fixed):
    """The validated config of a trial: `raw` with the values of `params` set, then the `fixed`
    keys (seed, model_file, threads)."""
    raw = with_params(raw, params)
    raw.update(fixed, task="train")
    return validate(raw, config_path)


def with_params(raw, params):
    """A copy of `raw` with each value of `params` set as `--set KEY=VALUE` would set it; a name
    with commas sets each of its keys."""
    raw = copy.deepcopy(raw)
    for name, value in params.items():
        for key in name.split(","):
            apply_override(raw, f"{key.strip()}={json.dumps(value)}")
    return raw


def trial_seed(study_seed, slot):
    """Slot k's seed: numpy's SeedSequence of (study seed, k), so seeds of nearby slots or of
    studies with nearby seeds share nothing; a retried trial gets its slot's seed again."""
    return int(np.random.SeedSequence([study_seed, slot]).generate_state(1)[0])


def shown(url):
    """The database URL as it may be printed: without its password."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


# ---- the study in its database -----------------------------------------------------------------

def open_study(plan):
    """(the study in plan.url, whether this call created it); ConfigError if the database
    cannot be reached."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)          # the trial lines below say it all
    url = plan.url
    if not plan.storage_given:               # the SQLite file in the study's folder, made here
        try:
            os.makedirs(plan.folder, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"model_file: cannot create the study's folder {plan.folder}: {err.strerror}") from None
    if url.startswith("postgresql://"):         # SQLAlchemy 2.1 would look for psycopg 3; we install psycopg2
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    connect = {"timeout": 60} if url.startswith("sqlite") else {"connect_timeout": 10} if url.startswith(
        "postgresql") else {}                                      # sqlite: wait for other workers' writes
    try:
        storage = rdb_storage(url, plan.heartbeat, connect)
        try:                                    # the database lets one command create it
            study, created = optuna.create_study(study_name=plan.name, storage=storage, direction="maximize",
                                                 pruner=make_pruner(plan)), True
        except optuna.exceptions.DuplicatedStudyError:
            study, created = optuna.load_study(study_name=plan.name, storage=storage,
                                               pruner=make_pruner(plan)), False
        if created:                             # the heartbeat last: a command that loads it waits for it
            study.set_user_attr("space", plan.space)
            study.set_user_attr("config", plan.raw)
            study.set_user_attr("heartbeat", plan.heartbeat)
        else:
            use_stored_heartbeat(study, storage, plan)
        study.sampler = make_sampler(plan)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"tune.storage: cannot open the database {plan.shown_url}: {reason}") from None
    if not created:
        check_unchanged(study, plan)
    return study, created


# keys that change where a trial's files go or what it prints, not what it trains: another
# machine may set them its own way
PLACE_KEYS = LOCAL_KEYS + ("model_file", "plot_dir", "data_dir")


def check_unchanged(study, plan):
    """A study's trials are comparable, and best.json is the config its best trial trained, only
    if every command runs the search space and the base config the study was created with."""
    name, stored = plan.name, study.user_attrs
    if "space" in stored and stored["space"] != plan.space:
        old, new = stored["space"], plan.space
        changed = [f"{key}: {json.dumps(old.get(key))} -> {json.dumps(new.get(key))}"
                   for key in [*new, *(k for k in old if k not in new)] if old.get(key) != new.get(key)]
        raise ConfigError(f"tune.space: study {name} was created with another search space ({'; '.join(changed)}); "
                          f"use its space, or another tune.study")
    if "config" in stored:
        changed = changes(trial_config(stored["config"], {}, plan.config_path),
                          trial_config(plan.raw, {}, plan.config_path), ignore=PLACE_KEYS)
        if changed:
            raise ConfigError(f"study {name} was created with another config ({'; '.join(changed)}); "
                              f"use its config, or another tune.study")


def wait_for_attribute(study, keys):
    """Waits, SETUP_WAIT seconds at most, until the study has one of the user attributes `keys`,
    which the command that creates it stores (machines may start at once)."""
    deadline = time.monotonic() + SETUP_WAIT
    while not set(keys) & set(study.user_attrs) and time.monotonic() < deadline:
        time.sleep(0.2)


def use_stored_heartbeat(study, storage, plan):
    """Every command on a study uses the heartbeat it was created with, since each one decides
    when the others' trials are stale; waits for the command that creates it to have stored it."""
    wait_for_attribute(study, ("heartbeat", "trials"))
    heartbeat = study.user_attrs.get("heartbeat", plan.heartbeat)
    plan.heartbeat, storage.heartbeat_interval, storage.grace_period = heartbeat, heartbeat, 2 * heartbeat


def rdb_storage(url, heartbeat, connect, tries=3):
    """Optuna's storage in the database at `url`, whose tables it creates when they are missing;
    two commands creating them at once collide, and the one that lost tries again."""
    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs={"connect_args": connect}, heartbeat_interval=heartbeat,
                grace_period=2 * heartbeat,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback())
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == tries - 1:
                raise
            time.sleep(1)


def make_sampler(plan):
    """The sampler, with a seed of this process's own (from the study's seed, the machine's name
    and the process id), so that no two workers, here or elsewhere, draw the same values. The
    draws of a search are not repeatable; each trial is (its values and seed are in the storage)."""
    text = f"{plan.seed} {socket.gethostname()} {os.getpid()}"
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    if plan.sampler == "grid":
        return optuna.samplers.GridSampler({key: e["choices"] for key, e in plan.space.items()}, seed=seed)
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)   # running trials count as middling


def make_pruner(plan):
    """median: after 5 finished trials, stop a trial whose validation accuracy at an epoch is
    below the median of the other trials' at that epoch."""
    return optuna.pruners.MedianPruner() if plan.pruner == "median" else optuna.pruners.NopPruner()


def slot_trials(study):
    """{slot: its trials, oldest first}; surplus trials are left out."""
    slots = {}
    for trial in study.get_trials(deepcopy=False):
        if "slot" in trial.user_attrs and not trial.user_attrs.get("surplus"):
            slots.setdefault(trial.user_attrs["slot"], []).append(trial)
    return slots


def is_lost(trial):
    """A FAIL that was not the trial's own doing (interrupted, killed): its slot runs again."""
    return trial.state == TrialState.FAIL and "failure" not in trial.user_attrs


def add_slots(study, plan, created):
    """One WAITING trial for each slot the study does not have yet, then the study's attribute
    "trials" set to their number. A command that did not create the study first waits for the
    one that did to have done so (machines started at once), so no slot is made twice. Trials
    of earlier commands whose heartbeat stopped long ago are failed and queued again."""
    optuna.storages.fail_stale_trials(study)
    if not created:
        wait_for_attribute(study, ("trials",))
    planned = study.user_attrs.get("trials", 0)
    if plan.trials < planned:
        raise ConfigError(f"tune.trials: study {plan.name} already has {planned} trials; "
                          f"expected {planned} or more, got {plan.trials}")
    have = slot_trials(study)
    with stop_requests() as stop:               # Ctrl-C waits for the few writes below
        for slot in range(plan.trials):
            if slot not in have:
                study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, user_attrs={"slot": slot}))
        if plan.trials != planned:
            study.set_user_attr("trials", plan.trials)
    if stop.is_set():
        raise interrupted(plan)


# ---- workers ------------------------------------------------------------------------------------

def interrupted(plan):
    """The Interrupted that a stopped command raises."""
    return Interrupted(f"interrupted: rerun the same command to continue study {plan.name}")


def work(plan, study, log):
    """Runs WAITING trials until none is left and no other worker's trial is running (one of
    them may stop beating and come back as WAITING). SIGINT or SIGTERM stops the running trial,
    which is queued again, and raises Interrupted."""
    trial_log = Logger(max(0, plan.log_level - 1), plan.log_file)   # -v shows the trials' epochs
    try:
        with stop_requests() as stop:
            while not stop.is_set():
                optuna.storages.fail_stale_trials(study)
                states = [t.state for t in study.get_trials(deepcopy=False)]
                if TrialState.WAITING in states:
                    run_one_trial(plan, study, log, trial_log, stop)
                elif TrialState.RUNNING in states:
                    stop.wait(min(5, plan.heartbeat))
                else:
                    return
    finally:
        trial_log.close()
    raise interrupted(plan)


def run_one_trial(plan, study, log, trial_log, stop):
    """Runs one trial through study.optimize (which keeps its heartbeat) and prints its line."""
    ran = {}

    def objective(trial):
        ran["trial"] = trial
        return train_trial(plan, study, trial, trial_log, stop)

    try:
        study.optimize(objective, n_trials=1, catch=(TrialFailed, Surplus))
    except (Interrupted, KeyboardInterrupt, DataError) as err:
        if "trial" in ran:                           # recorded FAIL by Optuna: queue its slot again
            frozen = find_trial(study, ran["trial"].number)
            optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)
            log.info(trial_line(frozen, plan) + ": stopped, runs again when the study continues")
        if isinstance(err, DataError):
            raise
        raise interrupted(plan) from None
    except Exception as err:                         # a bug: the slot is not lost, the traceback is shown
        if "trial" in ran:
            frozen = find_trial(study, ran["trial"].number)
            told_elsewhere = isinstance(err, (ValueError, optuna.exceptions.UpdateFinishedTrialError))
            if told_elsewhere and taken_over(study, frozen.number):    # "Cannot tell a FAIL trial." and the like
                log.warning(f"trial {frozen.number} was taken over by another worker (its heartbeat was "
                            f"over {2 * plan.heartbeat} s old)")
                return
            if told_elsewhere and frozen.state.is_finished():
                # SQLite cannot lock a row, so two workers may take the same waiting trial at the same
                # moment; the first to finish records it ("Cannot tell a COMPLETE trial." for the other).
                log.warning(f"trial {frozen.number} was also run by another worker, whose result it keeps")
                return
            if frozen.state == TrialState.FAIL:
                optuna.storages.RetryHeartbeatStaleTrialCallback()(study, frozen)
            log.warning(trial_line(frozen, plan) + f": stopped by {type(err).__name__}: {err}; "
                        f"runs again when the study continues")
        raise
    frozen = find_trial(study, ran["trial"].number)
    if not frozen.user_attrs.get("surplus"):
        log.info(trial_line(frozen, plan))


def train_trial(plan, study, trial, trial_log, stop):
    """The objective: trains the trial's config and returns its best validation accuracy,
    reporting each validation to the pruner."""
    slot = trial.user_attrs.get("slot")
    if slot is None or holds_slot_elsewhere(study, trial, slot):
        trial.set_user_attr("surplus", True)
        raise Surplus(f"trial {trial.number}: no slot left to run")
    params = {key: suggest(trial, key, entry) for key, entry in plan.space.items()}
    seed = trial_seed(plan.seed, slot)
    model_file = os.path.join(plan.study_folder, f"trial_{trial.number}.pkl")
    trial.set_user_attr("seed", seed)

    def on_epoch(record):
        if stop.is_set():                            # a signal that came between two trainings
            raise Interrupted(f"interrupted in trial {trial.number}")
        if record["valid_accuracy"] is not None:
            trial.report(record["valid_accuracy"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {100 * record['valid_accuracy']:.2f}% "
                                         f"at epoch {record['epoch']}")

    try:
        config = trial_config(plan.raw, params, plan.config_path, seed=seed, model_file=model_file,
                              threads=plan.threads)
        engine = Engine(config, trial_log)
        with engine.device_errors():                 # a GPU too small for this trial fails it, in one line
            history = engine.train(on_epoch=on_epoch)
    except DataError:
        raise                                        # not the trial's fault: the study stops
    except ConfigError as err:                       # diverged, or values the checks refuse together
        trial.set_user_attr("failure", str(err))
        raise TrialFailed(str(err)) from None
    finally:                                         # a trial is never resumed: a stopped one runs again
        remove_checkpoint(model_file)
    best = max((r for r in history if r["valid_accuracy"] is not None), key=lambda r: r["valid_accuracy"])
    trial.set_user_attr("best_epoch", best["epoch"])
    return best["valid_accuracy"]


def holds_slot_elsewhere(study, trial, slot):
    """Whether an older trial already holds this slot (two commands that started a new study at
    the same moment may both have made it): one that is not lost."""
    return any(other.number < trial.number and not is_lost(other) for other in slot_trials(study).get(slot, []))


def suggest(trial, key, entry):
    if "choices" in entry:
        return trial.suggest_categorical(key, entry["choices"])
    if "int" in entry:
        return trial.suggest_int(key, *entry["int"], log=entry["log"])
    return trial.suggest_float(key, *entry["float"], log=entry["log"])


def taken_over(study, number):
    """Whether another worker found trial `number`'s heartbeat stale, failed it and queued its slot again."""
    return any(t.system_attrs.get("failed_trial") == number for t in study.get_trials(deepcopy=False))


def find_trial(study, number):
    return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def remove_checkpoint(model_file):
    """The engine leaves a checkpoint beside each model, for --resume to continue or extend the run;
    a trial never is (a stopped one runs again from its start), so its checkpoint goes."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(checkpoint_path(model_file))


def run_workers(plan, log):
    """`workers` processes, each running `work` on the same study. They run in sessions of their
    own, so Ctrl-C reaches this process only, which passes each signal on once. Returns the names
    of the workers that ended with an unexpected error (their tracebacks are on stderr)."""
    context = multiprocessing.get_context("spawn")    # a fresh interpreter: no database connection shared
    errors = context.SimpleQueue()
    processes = [context.Process(target=worker_process, args=(plan, errors), name=f"worker {i}")
                 for i in range(plan.workers)]
    for p in processes:
        p.start()

    def pass_on(signum, frame):
        for p in processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGINT)

    previous = {s: signal.signal(s, pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for p in processes:
            while p.is_alive():
                p.join(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for p in processes:
        if p.exitcode < 0:
            log.warning(f"{p.name} was killed by signal {-p.exitcode}; its trial runs again once its heartbeat "
                        f"is {2 * plan.heartbeat} s old")
    messages = []
    while not errors.empty():
        messages.append(errors.get())
    if messages:
        raise ConfigError(messages[0])
    if any(p.exitcode == 130 for p in processes):
        raise interrupted(plan)
    return [p.name for p in processes if p.exitcode > 0]     # a bug, which printed its traceback


def worker_process(plan, errors):
    """One worker process: exit status 0 done, 130 interrupted, 2 with its message in `errors`."""
    os.setsid()
    threading.Thread(target=stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    log = Logger(plan.log_level, plan.log_file)
    try:
        work(plan, open_study(plan)[0], log)
    except ConfigError as err:
        errors.put(str(err))
        raise SystemExit(2)
    except (Interrupted, KeyboardInterrupt):
        raise SystemExit(130)
    finally:
        log.close()


def stop_when_orphaned(parent):
    """Stops this worker as a Ctrl-C does once the command that started it is gone (killed, or its
    terminal closed): its own session keeps it from hearing that, and its trial runs again later."""
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGINT)


# ---- what the study found ---------------------------------------------------------------------

def trial_line(trial, plan):
    """trial 3  lr=0.05 num_epochs=20  valid 97.84% (epoch 12)  complete  41.2s"""
    params = " ".join(f"{key}={param_text(value)}" for key, value in trial.params.items())
    retry = trial.system_attrs.get("failed_trial")
    line = f"trial {trial.number}" + (f" (again, for trial {retry})" if retry is not None else "") + f"  {params}"
    seconds = trial.duration.total_seconds() if trial.duration else 0.0
    if trial.state == TrialState.COMPLETE:
        line += f"  valid {100 * trial.value:.2f}% (epoch {trial.user_attrs['best_epoch']})  complete"
    elif trial.state == TrialState.PRUNED:
        epoch, value = max(trial.intermediate_values.items()) if trial.intermediate_values else (0, 0.0)
        line += f"  valid {100 * value:.2f}% at epoch {epoch}  pruned"
    elif "failure" in trial.user_attrs:
        line += f"  failed: {trial.user_attrs['failure']}"
    else:
        line += f"  {trial.state.name.lower()}"
    return line + f"  {seconds:.1f}s"


def param_text(value):
    """A drawn value as the trial lines and the table show it: floats to 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def report(plan, study, log):
    """Counts, the table of the best trials, best.json and the plots."""
    finals = [trials[-1] for trials in slot_trials(study).values()]      # the slot's last attempt
    count = {state: sum(t.state == state for t in finals) for state in TrialState}
    complete = sorted((t for t in finals if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    unfinished = "".join(f", {count[s]} {s.name.lower()}" for s in (TrialState.RUNNING, TrialState.WAITING) if count[s])
    log.result(f"study {plan.name}: {len(finals)} trials, {count[TrialState.COMPLETE]} complete, "
               f"{count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed{unfinished}")
    if not complete:
        return
    keys = list(plan.space)
    rows = [["trial", "valid", "epoch", "seconds", *keys]]
    for t in complete[:BEST_SHOWN]:
        rows.append([str(t.number), f"{100 * t.value:.2f}%", str(t.user_attrs["best_epoch"]),
                     f"{t.duration.total_seconds():.0f}" if t.duration else "",
                     *[param_text(t.params[k]) for k in keys]])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    log.result("best trials (validation accuracy):")
    for row in rows:
        log.result("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    best = complete[0]
    path = write_best(plan, best)
    log.result(f"wrote {path}: trial {best.number}'s config, ready to train")
    for path in draw(plan, study, log):
        log.result(f"wrote {path}")


def write_best(plan, trial):
    """best.json: the config of `trial` (its values and seed), without the tune section."""
    raw = with_params(plan.raw, trial.params)
    raw["seed"] = trial.user_attrs["seed"]
    path = os.path.join(plan.study_folder, "best.json")
    with atomic_write(path, "w") as f:
        json.dump(raw, f, indent=2)
        f.write("\n")
    return path


def draw(plan, study, log):
    """Optuna's matplotlib pictures: the best accuracy so far, the parameters' importances, and
    the accuracy against each parameter. One that cannot be drawn yet is skipped with a note."""
    import plots
    from optuna.visualization import matplotlib as pictures
    plt = plots.pyplot(False)
    paths = []
    for name, picture in (("history", pictures.plot_optimization_history),
                          ("importances", pictures.plot_param_importances), ("slice", pictures.plot_slice)):
        path = os.path.join(plan.plot_dir, f"tune_{name}.png")
        try:
            with warnings.catch_warnings():          # matplotlib's notes on a parameter with one value tried
                warnings.simplefilter("ignore", UserWarning)
                axes = np.ravel(picture(study))      # one Axes, or one per parameter
        except (ValueError, RuntimeError) as err:
            log.info(f"{path} skipped: {err}")
            continue
        figure = axes[0].figure
        figure.set_size_inches(max(6.4, 3.2 * len(axes)), 4.8)
        with atomic_write(path) as f:           # tight: the legends Optuna puts beside the axes
            figure.savefig(f, format="png", dpi=plots.DPI, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths
