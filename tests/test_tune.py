"""The tune task: bad search spaces, a small study end to end, workers sharing a study, a worker
killed or interrupted mid-trial, and two commands sharing a study in a real PostgreSQL server."""
import contextlib
import glob
import json
import os
import pathlib
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("optuna", reason="the tune task needs optuna: pip install -r requirements.txt")
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

import tune                                          # noqa: E402 (after the skip)
from config import from_raw, read_raw                # noqa: E402
from conftest import ROOT                            # noqa: E402
from main import main                                # noqa: E402
from test_cli import SMALL_NET, run_error, write_config  # noqa: E402

TINY_NET = [{"class": "Linear", "n_in": 784, "n_out": 16}, {"class": "Tanh"},
            {"class": "Linear", "n_in": 16, "n_out": 10}]
SPACE = {"lr": {"float": [0.02, 0.5], "log": True}, "optimizer.name": {"choices": ["sgd", "momentum"]},
         "network.0.n_out,network.2.n_in": {"int": [8, 24]}}
LONG_TRIALS = {"num_epochs": 200, "train_size": 500, "pruner": "none"}    # a few seconds: time to stop one
TRIAL_LINE = re.compile(r"^trial (\d+)(?: \(again, for trial (\d+)\))?  (.*)  (\d+\.\d)s$")


def tune_config(folder, data_dir, space=SPACE, train_size=1000, num_epochs=2, network=TINY_NET, **tune_keys):
    """A config of a tiny net on a slice of MNIST, with a tune section; its study's files are in
    folder/model/config (model_file without .pkl, then the study's name)."""
    return write_config(folder, data_dir=str(data_dir), network=network, train_size=train_size, valid_size=500,
                        num_epochs=num_epochs, tune={"space": space, "heartbeat": 1, **tune_keys})


def trial_lines(out):
    """{trial number: the rest of its line} from a tune command's output; no number twice."""
    lines = {}
    for line in out.splitlines():
        match = TRIAL_LINE.match(line)
        if match:
            number = int(match.group(1))
            assert number not in lines, out
            lines[number] = line
    return lines


def plan_of(config, given=()):
    """tune's plan for a config file with the `--set` strings `given`, read as main.py reads it."""
    raw = read_raw(config, given)
    return tune.make_plan(config, raw, from_raw(raw, config))


def study_of(config):
    """The study of a config file, through tune's own functions (the Optuna it uses is tune.optuna)."""
    return tune.open_study(plan_of(config))[0]


def slots(study):
    """{slot: state of its last trial}, each slot's trials counted once."""
    return {slot: trials[-1].state.name for slot, trials in tune.slot_trials(study).items()}


def assert_each_trial_ran_once(study, count):
    """`count` trials, one per slot, each finished once with values of its own. Two workers that
    reach for the last waiting trial at once may add an empty "surplus" trial; it runs nothing."""
    trials = [t for t in study.trials if not t.user_attrs.get("surplus")]
    assert all(t.state.name == "FAIL" and not t.params for t in study.trials if t not in trials)
    assert len(trials) == count and sorted(slots(study)) == list(range(count))
    assert set(slots(study).values()) <= {"COMPLETE", "PRUNED"}
    assert len({tuple(sorted(t.params.items())) for t in trials}) == count     # no values drawn twice


def run_tune(config, *options):
    return subprocess.Popen([sys.executable, str(ROOT / "main.py"), config, "--task", "tune", *options],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("space,message", [
    ({}, "tune.space: the tune task needs a search space"),
    ({"lrr": {"float": [0.01, 0.1]}},
     "tune.space.lrr: the value 0.01 is refused: lrr: unknown key; did you mean 'lr'?"),
    ({"optimizer.momentun": {"choices": [0.9]}},
     "the value 0.9 is refused: optimizer.momentun: unknown argument of SGD"),
    ({"lr": {"choices": []}}, "tune.space.lr.choices: expected a non-empty list, got []"),
    ({"lr": {"float": [0.5, 0.1]}}, "tune.space.lr.float: low 0.5 is above high 0.1"),
    ({"lr": {"float": [0, 0.1], "log": True}}, "tune.space.lr.float: a log scale needs low > 0, got 0"),
    ({"lr": {"float": [0.01, 0.1], "int": [1, 2]}}, "tune.space.lr: expected one of"),
    ({"lr": {"floats": [0.01, 0.1]}}, "tune.space.lr: expected one of"),
    ({"num_epochs": {"int": [1, 2.5]}}, "tune.space.num_epochs.int: expected [low, high], two integers"),
    ({"lr": {"choices": [0.1, -1]}}, "tune.space.lr: the value -1 is refused: lr: expected a number in (0, inf)"),
    ({"network.0.n_out": {"int": [8, 16]}}, "tune.space.network.0.n_out: the value 8 is refused: network[2] (Linear) "
                                            "does not fit"),
    ({"network.9.n_out": {"int": [8, 16]}}, "expected a list index below 3"),
    ({"seed": {"int": [0, 9]}}, "tune.space.seed: seed is set by the tune task for each trial, not searched"),
    ({"num_epochs": {"float": [1, 2]}}, "tune.space.num_epochs: the value 1.0 is refused: num_epochs: expected"),
    ({"valid_size": {"choices": [0, 100]}},
     "tune.space.valid_size: the value 0 is refused: valid_size: the tune task scores trials on the validation split"),
])
def test_a_bad_search_space_is_one_line_before_any_trial(tmp_path, capsys, space, message):
    config = tune_config(tmp_path, tmp_path / "data", space=space)
    assert message in run_error(capsys, [config, "--task", "tune"])
    assert not (tmp_path / "model" / "study.db").exists() and not (tmp_path / "data").exists()


def test_bad_tune_settings_and_an_unreachable_database(tmp_path, capsys):
    config = tune_config(tmp_path, tmp_path / "data")
    assert "tune.sampler: unknown 'grd'" in run_error(capsys, [config, "--task", "tune", "--set", "tune.sampler=grd"])
    assert "tune.sampler: grid searches lists of choices only" in run_error(
        capsys, [config, "--task", "tune", "--set", "tune.sampler=grid"])
    assert "tune.workers: expected an integer >= 1, got 0" in run_error(capsys, [config, "--task", "tune",
                                                                                 "--workers", "0"])
    assert "valid_size: the tune task scores trials on the validation split" in run_error(
        capsys, [config, "--task", "tune", "--set", "valid_size=0"])
    assert "the tune task continues its study by itself" in run_error(capsys, [config, "--task", "tune", "--resume"])
    with socket.socket() as s:                      # a port where no server listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    message = run_error(capsys, [config, "--task", "tune", "--set",
                                 f"tune.storage=postgresql://tune:secret@127.0.0.1:{port}/tune"])
    assert message.startswith(f"error: tune.storage: cannot open the database postgresql://tune:***@127.0.0.1:{port}"
                              f"/tune: ") and "secret" not in message
    assert "cannot open the database" in run_error(capsys, [config, "--task", "tune", "--set",
                                                            "tune.storage=nosuchdb://x"])
    assert not (tmp_path / "data").exists()


def test_a_study_end_to_end_continues_when_run_again(tmp_path, capsys, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, trials=3)
    assert main([config, "--task", "tune"]) == 0
    out = capsys.readouterr().out
    lines = trial_lines(out)
    assert sorted(lines) == [0, 1, 2] and all(" complete " in line for line in lines.values()), out
    assert "study config: 3 trials, 3 complete, 0 pruned, 0 failed" in out and "best trials" in out

    study_folder, study = tmp_path / "model" / "config", study_of(config)
    seeds = set()
    for trial in study.trials:                  # the model and history of each trial, an ordinary run
        history = json.loads((study_folder / f"trial_{trial.number}.history.json").read_text())
        accuracies = {r["epoch"]: r["valid_accuracy"] for r in history}
        assert trial.value == max(accuracies.values())
        assert trial.intermediate_values == accuracies          # what the pruner was fed
        assert (study_folder / f"trial_{trial.number}.pkl").exists()
        assert trial.user_attrs["seed"] == tune.trial_seed(0, trial.user_attrs["slot"])
        seeds.add(trial.user_attrs["seed"])
    assert len(seeds) == 3
    assert not list(study_folder.glob("*.ckpt"))                 # no trial is resumed
    for name in ("history", "importances", "slice"):
        assert (tmp_path / "model_plots" / "config" / f"tune_{name}.png").stat().st_size > 10000

    best = json.loads((study_folder / "best.json").read_text())
    best_trial = max(study.trials, key=lambda t: t.value)
    assert "tune" not in best and best["seed"] == best_trial.user_attrs["seed"]
    assert best["lr"] == best_trial.params["lr"] and best["network"][2]["n_in"] == best["network"][0]["n_out"]
    best["model_file"] = str(tmp_path / "best.pkl")
    (tmp_path / "best.json").write_text(json.dumps(best))
    assert main([str(tmp_path / "best.json"), "-q"]) == 0       # ready to train: the same run again
    history = json.loads((tmp_path / "best.history.json").read_text())
    assert max(r["valid_accuracy"] for r in history) == best_trial.value

    assert main([config, "--task", "tune"]) == 0                # nothing left: no trial runs again
    out = capsys.readouterr().out
    assert trial_lines(out) == {} and "3 trials, 3 complete" in out
    assert main([config, "--task", "tune", "--trials", "4"]) == 0
    assert sorted(trial_lines(capsys.readouterr().out)) == [3]
    assert slots(study_of(config)) == {k: "COMPLETE" for k in range(4)}
    assert "already has 4 trials; expected 4 or more, got 2" in run_error(capsys, [config, "--task", "tune",
                                                                                   "--trials", "2"])


def test_two_studies_in_one_folder_keep_their_files_apart(tmp_path, capsys, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, trials=1)
    for name in ("a", "b"):
        assert main([config, "--task", "tune", "--set", f"tune.study={name}"]) == 0
    out = capsys.readouterr().out
    for name in ("a", "b"):
        assert f"wrote {tmp_path / 'model' / name / 'best.json'}" in out
        assert (tmp_path / "model" / name / "trial_0.pkl").exists()
        assert (tmp_path / "model_plots" / name / "tune_history.png").exists()
    assert "tune.study: the study's files go in a folder of its name" in run_error(
        capsys, [config, "--task", "tune", "--set", "tune.study=a/b"])


def test_a_study_refuses_another_search_space_or_base_config(tmp_path, capsys, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, trials=1)
    assert main([config, "--task", "tune"]) == 0
    capsys.readouterr()
    message = run_error(capsys, [config, "--task", "tune", "--set", 'tune.space.lr={"float": [0.01, 0.2]}'])
    assert message.startswith('error: tune.space: study config was created with another search space '
                              '(lr: {"float": [0.02, 0.5], "log": true} -> {"float": [0.01, 0.2], "log": false})')
    message = run_error(capsys, [config, "--task", "tune", "--set", "batch_size=50"])
    assert message.startswith("error: study config was created with another config (batch_size: 100 -> 50)")
    assert main([config, "--task", "tune", "--trials", "2", "--set", "log_level=0"]) == 0   # where and how loud: free
    assert slots(study_of(config)) == {0: "COMPLETE", 1: "COMPLETE"}


def test_a_diverging_trial_is_failed_with_its_reason_and_the_study_goes_on(tmp_path, capsys, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, space={"lr": {"choices": [0.1, 1e30]}}, sampler="grid",
                         pruner="none", network=SMALL_NET)          # ReLU: nothing saturates, the loss overflows
    assert main([config, "--task", "tune"]) == 0
    out = capsys.readouterr().out
    lines = list(trial_lines(out).values())
    assert len(lines) == 2
    assert any("lr=1e+30  failed: training diverged at epoch 1" in line for line in lines), out
    assert any("lr=0.1  valid" in line and " complete " in line for line in lines), out
    assert "2 trials, 1 complete, 0 pruned, 1 failed" in out
    assert "2 trials (grid: every combination once, whatever tune.trials says)" in out
    assert json.loads((tmp_path / "model" / "config" / "best.json").read_text())["lr"] == 0.1


def test_an_unexpected_error_in_a_trial_keeps_its_traceback_and_queues_its_slot_again(
        tmp_path, capsys, mnist_data_dir, monkeypatch):
    config = tune_config(tmp_path, mnist_data_dir, trials=1)

    def broken(self, on_epoch=None):
        raise RuntimeError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(tune.Engine, "train", broken)
        with pytest.raises(RuntimeError, match="a bug"):
            main([config, "--task", "tune"])
    assert "stopped by RuntimeError: a bug; runs again when the study continues" in capsys.readouterr().err
    study = study_of(config)
    assert [t.state.name for t in study.trials] == ["FAIL", "WAITING"]
    assert study.trials[1].system_attrs["failed_trial"] == 0
    assert main([config, "--task", "tune"]) == 0
    assert slots(study_of(config)) == {0: "COMPLETE"}


def test_a_trial_taken_over_by_another_worker_is_left_to_it(tmp_path, capsys, mnist_data_dir, monkeypatch):
    """Another worker found the trial's heartbeat stale while it trained: it failed the trial and
    queued its slot again. The first worker, back from training, says so and goes on."""
    config = tune_config(tmp_path, mnist_data_dir, trials=1)
    train, calls = tune.Engine.train, []

    def taken_over_while_training(self, on_epoch=None):
        calls.append(1)
        if len(calls) > 1:
            return train(self, on_epoch=on_epoch)
        study = study_of(config)
        running, = [t for t in study.trials if t.state.name == "RUNNING"]
        study._storage.set_trial_state_values(running._trial_id, tune.TrialState.FAIL)
        tune.optuna.storages.RetryHeartbeatStaleTrialCallback()(study, running)
        return [{"epoch": 1, "valid_accuracy": 0.5}]

    monkeypatch.setattr(tune.Engine, "train", taken_over_while_training)
    assert main([config, "--task", "tune"]) == 0
    captured = capsys.readouterr()
    assert "trial 0 was taken over by another worker" in captured.err
    assert "trial 1 (again, for trial 0)" in captured.out and len(calls) == 2
    assert slots(study_of(config)) == {0: "COMPLETE"}


def test_a_study_keeps_the_heartbeat_it_was_created_with(tmp_path, capsys, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, trials=1)
    assert main([config, "--task", "tune"]) == 0
    plan = plan_of(config, ["tune.heartbeat=7"])
    study = tune.open_study(plan)[0]
    assert study.user_attrs["heartbeat"] == 1 and plan.heartbeat == 1
    assert study._storage.get_heartbeat_interval() == 1 and study._storage._backend.grace_period == 2


def test_a_worker_that_fails_with_a_traceback_makes_the_command_fail(tmp_path, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, trials=2)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(      # a bug in every training of every process
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nimport engine\n"
        "def broken(self, on_epoch=None):\n    raise RuntimeError('a bug')\nengine.Engine.train = broken\n")
    process = subprocess.run([sys.executable, str(ROOT / "main.py"), config, "--task", "tune", "--workers", "2"],
                             capture_output=True, text=True, timeout=240,
                             env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert process.returncode == 1, process.stderr
    assert "RuntimeError: a bug" in process.stderr
    assert re.search(r"^error: worker [01] failed; see its traceback above$", process.stderr, re.M), process.stderr
    assert process.stderr.rstrip().splitlines()[-1].startswith("error: worker ")


def test_two_workers_share_one_study_and_run_each_trial_once(tmp_path, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, trials=6)
    process = run_tune(config, "--workers", "2")
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert sorted(trial_lines(out)) == list(range(6)), out
    assert_each_trial_ran_once(study_of(config), 6)


def wait_for(path, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_a_worker_killed_mid_trial_loses_only_that_trial(tmp_path, mnist_data_dir):
    """SIGKILL gives no chance to clean up: the trial stays RUNNING until its heartbeat is two
    heartbeats old (2 s here); then the next command fails it and runs its slot again, with the
    same values and seed."""
    config = tune_config(tmp_path, mnist_data_dir, trials=2, **LONG_TRIALS)
    process = run_tune(config)
    wait_for(tmp_path / "model" / "config" / "trial_0.history.json", process)       # trial 0 is past its first epoch
    process.kill()
    process.communicate()
    rerun = run_tune(config)
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    study = study_of(config)
    killed, *_ = [t for t in study.trials if t.number == 0]
    again = [t for t in study.trials if t.system_attrs.get("failed_trial") == 0]
    assert killed.state.name == "FAIL" and len(again) == 1
    assert again[0].params == killed.params and again[0].user_attrs["seed"] == killed.user_attrs["seed"]
    assert "(again, for trial 0)" in out
    assert slots(study) == {0: "COMPLETE", 1: "COMPLETE"}                # two trials, each run to the end once


def test_a_killed_worker_s_trial_is_run_again_by_the_others(tmp_path, mnist_data_dir):
    config = tune_config(tmp_path, mnist_data_dir, trials=3, **LONG_TRIALS)
    process = run_tune(config, "--workers", "2")
    wait_for(tmp_path / "model" / "config" / "trial_0.history.json", process)
    wait_for(tmp_path / "model" / "config" / "trial_1.history.json", process)       # both workers are training
    children = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    workers = [int(pid) for pid in children if "spawn_main" in pathlib.Path(f"/proc/{pid}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, err
    assert "worker 0 was killed by signal 9" in err or "worker 1 was killed by signal 9" in err, err
    study = study_of(config)
    lost = [t for t in study.trials if t.state.name == "FAIL"]
    again = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert len(lost) == 1 and len(again) == 1 and again[0].params == lost[0].params
    assert f"(again, for trial {lost[0].number})" in out
    assert slots(study) == {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path, mnist_data_dir, workers):
    config = tune_config(tmp_path, mnist_data_dir, trials=2, **LONG_TRIALS)
    process = run_tune(config, "--workers", workers)
    wait_for(tmp_path / "model" / "config" / "trial_0.history.json", process)
    process.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = process.communicate(timeout=60)
    assert time.monotonic() - sent < 10
    assert process.returncode == 130, err
    assert "interrupted: rerun the same command to continue study config" in err
    assert ": stopped, runs again when the study continues" in out
    assert "study config: 2 trials, " in out                             # the report of what is done
    assert not glob.glob(str(tmp_path / "model" / "config" / "*.ckpt"))
    states = [t.state.name for t in study_of(config).trials]
    assert "RUNNING" not in states and "FAIL" in states              # the stopped trial, recorded as failed
    rerun = run_tune(config, "--workers", workers)
    out, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert slots(study_of(config)) == {0: "COMPLETE", 1: "COMPLETE"}


# ---- PostgreSQL -----------------------------------------------------------------------------------

def server_program(name):
    """A PostgreSQL server program (initdb, pg_ctl) from PATH or Debian's folder, or None."""
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server of its own, on a free port of 127.0.0.1, for this module's tests."""
    initdb, pg_ctl, createdb = (server_program(name) for name in ("initdb", "pg_ctl", "createdb"))
    if not (initdb and pg_ctl and createdb):
        pytest.skip("PostgreSQL's server is not installed (Debian: apt-get install postgresql, as .ci/run does)")
    run_as, folder, data = [], None, None
    try:
        folder = tempfile.mkdtemp(prefix="nnfs-postgres-")
        if os.geteuid() == 0:                       # the server refuses to run as root
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run the server as")
            os.chown(folder, user.pw_uid, user.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        data = os.path.join(folder, "data")
        options = f"-k {folder} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
        steps = [[initdb, "-D", data, "-U", "tune", "-A", "trust", "--no-sync"],
                 [pg_ctl, "-D", data, "-l", os.path.join(folder, "log"), "-o", options, "-w", "start"],
                 [createdb, "-h", "127.0.0.1", "-p", str(port), "-U", "tune", "tune"]]
        for step in steps:
            done = subprocess.run(run_as + step, capture_output=True, text=True, timeout=60)
            if done.returncode:
                pytest.skip(f"could not start PostgreSQL: {' '.join(step[:1])}: {done.stderr.strip()[-300:]}")
        yield f"postgresql://tune@127.0.0.1:{port}/tune"
    finally:
        if data and os.path.exists(data):
            with contextlib.suppress(Exception):
                subprocess.run(run_as + [pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True,
                               timeout=60)
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def test_two_commands_share_a_study_in_postgresql(tmp_path, mnist_data_dir, postgres_url):
    """Two commands, as on two machines, on one study in PostgreSQL: each trial runs once."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    configs = [tune_config(tmp_path / side, mnist_data_dir, trials=6, storage=postgres_url, study="shared")
               for side in ("a", "b")]
    processes = [run_tune(config) for config in configs]
    outputs = [p.communicate(timeout=240) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err
    numbers = [sorted(trial_lines(out)) for out, _ in outputs]
    assert sorted(numbers[0] + numbers[1]) == list(range(6)), outputs     # each trial printed by one command
    assert numbers[0] and numbers[1], outputs                             # and both took part
    assert_each_trial_ran_once(study_of(configs[0]), 6)


def test_workers_stop_when_their_command_is_killed(tmp_path, mnist_data_dir):
    """Workers run in sessions of their own, so no terminal signal reaches them; when the command
    that started them dies, they stop as after a Ctrl-C and leave no trial RUNNING."""
    config = tune_config(tmp_path, mnist_data_dir, trials=2, **{**LONG_TRIALS, "num_epochs": 100_000})
    process = run_tune(config, "--workers", "2")
    wait_for(tmp_path / "model" / "config" / "trial_0.history.json", process)
    children = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children")
    workers = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    assert workers, "the command started no worker processes"
    alive = lambda: [pid for pid in workers if pathlib.Path(f"/proc/{pid}").exists()
                     and "zombie" not in pathlib.Path(f"/proc/{pid}/status").read_text().lower()]
    process.kill()
    process.communicate(timeout=60)
    deadline = time.monotonic() + 20                    # their trials would train for hours
    try:
        while alive():
            assert time.monotonic() < deadline, "the workers outlived their command"
            time.sleep(0.2)
    finally:
        for pid in alive():
            os.kill(pid, signal.SIGKILL)
    assert "RUNNING" not in [t.state.name for t in study_of(config).trials]


def test_the_workers_share_the_cores(tmp_path, mnist_data_dir, monkeypatch):
    monkeypatch.setattr(tune, "available_cores", lambda: 8)
    config = tune_config(tmp_path, mnist_data_dir, workers=3)
    assert plan_of(config).threads == 2                                # 8 cores, 3 workers
    assert plan_of(config, ["threads=3"]).threads == 3
