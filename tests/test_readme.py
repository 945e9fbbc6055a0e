"""The README documents what the code has: every config key, layer class and optimizer."""
import pathlib

from config import DEFAULTS
from nn_module import LAYERS, LOSSES
from optim import OPTIMIZERS

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_config_key_is_documented():
    assert [k for k in DEFAULTS if f"| `{k}` |" not in README] == []


def test_every_class_and_optimizer_is_documented():
    built_in = [n for n, cls in {**LAYERS, **LOSSES}.items() if not cls.__module__.startswith("layers.")]
    assert [n for n in built_in if f"`{n}`" not in README] == []
    assert [n for n in OPTIMIZERS if f"`{n}`" not in README] == []


def test_ci_runs_the_readme_test_command():
    command = "python3 -m pytest -q"
    assert f"pip install -r requirements.txt && {command}" in README
    assert command in (ROOT / ".ci" / "run").read_text()
