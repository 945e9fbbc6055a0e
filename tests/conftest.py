"""Shared fixtures: the project root on sys.path, and the real MNIST files when they exist."""
import contextlib
import os
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import main  # noqa: E402,F401  (before numpy: the tests run with main.py's BLAS threads, as its subprocesses do)
from datasets.mnist import FILES  # noqa: E402

MNIST_DIR = ROOT.parent / "shared" / "data" / "mnist"


def mnist_mirror():
    """The mirror of the real MNIST files: NNFS_MIRROR if set, else ../shared/data/mnist, else the
    cache in data/ that a first training run fills."""
    if os.environ.get("NNFS_MIRROR"):
        return os.environ["NNFS_MIRROR"]
    for folder in (MNIST_DIR, ROOT / "data"):
        if all((folder / f"{name}.gz").exists() for name in FILES.values()):
            return folder.as_uri() + "/"
    pytest.skip(f"real MNIST not found: set NNFS_MIRROR, put the four files in {MNIST_DIR}, or run the "
                "README's two commands once (training and the test task fill data/)")


@pytest.fixture(scope="session")
def mnist_data_dir(tmp_path_factory):
    """A data_dir holding the verified MNIST files, downloaded once per test session."""
    from datasets.mnist import load_mnist
    data_dir = tmp_path_factory.mktemp("mnist")
    load_mnist(str(data_dir), mirrors=[mnist_mirror()])
    return data_dir


@pytest.fixture(scope="session")
def mnist(mnist_data_dir):
    from datasets.mnist import load_mnist
    return load_mnist(str(mnist_data_dir), mirrors=[])


def gpu_or_skip():
    """CuPy's backend, or a skip that says what is missing."""
    import backend
    from errors import ConfigError
    try:
        return backend.gpu()
    except ConfigError as err:
        pytest.skip(f"no GPU here: {err}")


def on_device(module, device):
    """`module` with its arrays on `device` (a backend.Backend), its random layers (Dropout)
    drawing through it: what the engine's to_device does to a model."""
    module.map_arrays(device.to_device)
    if hasattr(module, "rng"):
        module.rng = device.random(module.rng)
    return module


@pytest.fixture(params=["cpu", "stand-in", "gpu"])
def device(request):
    """Each backend the layer, gradient and optimizer tests run on: numpy; the strict stand-in
    for a GPU (tests/strict_device.py), which fails on any host/device mix; and CuPy's, where
    a GPU is present (skipped otherwise)."""
    import backend
    from strict_device import StrictBackend
    if request.param == "gpu":
        return gpu_or_skip()
    return StrictBackend() if request.param == "stand-in" else backend.Backend()


@contextlib.contextmanager
def restored(package, registries, broken):
    """Puts back, when the block ends, what discovering a test's files in `package` (layers or
    datasets) changed: the entries of `registries` and of `broken`, and the package's modules."""
    saved, saved_broken, prefix = [dict(r) for r in registries], dict(broken), package.__name__ + "."
    modules = {name: module for name, module in sys.modules.items() if name.startswith(prefix)}
    attributes = dict(vars(package))
    try:
        yield
    finally:
        for registry, entries in zip(registries, saved):
            registry.clear()
            registry.update(entries)
        broken.clear()
        broken.update(saved_broken)
        for name in [name for name in sys.modules if name.startswith(prefix)]:
            del sys.modules[name]
        sys.modules.update(modules)
        for name in set(vars(package)) - set(attributes):        # the modules imported set themselves there
            delattr(package, name)
        vars(package).update(attributes)
