"""benchmarks/bench.py: a --quick run shows its numbers but judges no target; a full one judges them."""
import importlib.util
import json

import pytest

from conftest import ROOT


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)                        # bench.main changes into the repository; this restores it
    spec = importlib.util.spec_from_file_location("bench", ROOT / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("quick", [True, False])
def test_targets_are_judged_only_by_a_full_run(bench, tmp_path, capsys, mnist_data_dir, quick):
    results = tmp_path / "results.json"
    options = ["--quick"] if quick else ["--repeats", "1"]
    assert bench.main([*options, "--only", "load", "--data-dir", str(mnist_data_dir), "--json", str(results)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("MNIST load from the verified cache"))
    target = json.loads(results.read_text())["targets"][0]
    assert target["target"] == "MNIST load from the verified cache" and target["value"] > 0
    if quick:
        assert row.rstrip().endswith("not judged (--quick)") and target["met"] is None
        assert "QUICK: 1/20 epochs scaled up, not a measurement" in out
    else:
        assert row.rstrip().endswith(("yes", "NO")) and target["met"] in (True, False)


def test_launches_counts_a_training_step_of_every_shipped_config_on_the_stand_in(bench, tmp_path, mnist_data_dir):
    import engine
    step = engine.train_step
    results = tmp_path / "results.json"
    assert bench.main(["--only", "launches", "--data-dir", str(mnist_data_dir), "--json", str(results)]) == 0
    counts = json.loads(results.read_text())["launches"]
    assert list(counts) == list(bench.SHIPPED)
    assert all(c["host_copies"] == 0 for c in counts.values())           # the loss stays on the device too
    assert engine.train_step is step                                       # the counting is taken out again
    readme = " ".join((ROOT / "README.md").read_text().split())            # the figures it quotes are today's
    assert f"a `cnn.json` training step is {counts['cnn']['kernels']} operations" in readme
    assert f"`network1.json`'s {counts['network1']['kernels']}," in readme


def test_watch_reports_what_a_record_costs(bench, tmp_path, mnist_data_dir):
    results = tmp_path / "results.json"
    assert bench.main(["--quick", "--only", "watch", "--data-dir", str(mnist_data_dir), "--json", str(results)]) == 0
    measured = json.loads(results.read_text())
    assert list(measured["watch"]) == ["network1", "cnn"]
    for cost in measured["watch"].values():          # a record is an extra forward and backward pass at least
        assert cost["recorded_step_ms"] > 1.5 * cost["step_ms"] > 0 and cost["cost"] > 0
    assert [t["met"] for t in measured["targets"]] == [None, None]
