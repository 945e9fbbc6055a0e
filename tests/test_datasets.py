"""Datasets: npz and csv from small files written here, Fashion-MNIST from the Debian package,
bad files and arguments (one `error:` line each), and a user's own dataset file as the README shows.
"""
import os
import re

import numpy as np
import pytest

import datasets
from conftest import ROOT, restored
from datasets import BROKEN, DATASETS, Dataset, Info, discover, load_dataset, make_dataset, mnist
from datasets.mnist import FASHION_CLASS_NAMES, FASHION_SYSTEM_DIR, FILES, load_fashion_mnist
from main import main
from test_cli import run_error, write_config
from test_mnist import RecordingLog, write_fake_mirror

TINY_NET = [{"class": "Linear", "n_in": 64, "n_out": 3}]
NAMES = ["circle", "square", "cross"]


def arrays(n_train=40, n_test=12, seed=0):
    """8x8 uint8 images with labels 0..2, as an npz file holds them."""
    rng = np.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 8, 8), dtype=np.uint8), "y_train": np.arange(n_train) % 3,
            "x_test": rng.integers(0, 256, (n_test, 8, 8), dtype=np.uint8), "y_test": np.arange(n_test) % 3}


def write_npz(path, **changes):
    """An npz file of arrays() with some arrays replaced (or left out with None); returns its name."""
    content = {**arrays(), "class_names": np.array(NAMES), **changes}
    np.savez(path, **{k: v for k, v in content.items() if v is not None})
    return str(path)


def write_csv(path, x, y, header="label," + ",".join(f"pixel{i}" for i in range(64))):
    rows = [header] + [",".join(str(v) for v in [label, *image.reshape(-1)]) for image, label in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def loaded(**config):
    """(info, arrays) of the dataset a config names, through the engine's entry points."""
    dataset = make_dataset({"data_dir": "unused", "dataset_args": {}, **config})
    return dataset.info(), load_dataset(dataset)


# --- npz and csv from small files ----------------------------------------------------------------

def test_npz_images_are_flattened_scaled_and_named(tmp_path):
    raw = arrays()
    info, data = loaded(dataset="npz", dataset_args={"path": write_npz(tmp_path / "d.npz")})
    assert info == ((64,), 3, (8, 8), NAMES)
    assert data["x_train"].shape == (40, 64) and data["x_train"].dtype == np.float32
    np.testing.assert_allclose(data["x_test"][5], raw["x_test"][5].reshape(64) / 255, rtol=1e-6)
    assert data["y_train"].dtype == np.int64 and data["y_train"].tolist() == raw["y_train"].tolist()
    assert data["class_names"] == NAMES


def test_npz_flat_rows_in_0_1_stay_as_they_are_and_classes_come_from_labels(tmp_path):
    x = np.random.default_rng(1).random((20, 10))
    path = write_npz(tmp_path / "d.npz", x_train=x, y_train=np.arange(20) % 4, x_test=x[:5],
                     y_test=np.arange(5), class_names=None)
    info, data = loaded(dataset="npz", dataset_args={"path": path})
    assert info == ((10,), 5, (1, 10), ["0", "1", "2", "3", "4"])     # 10 is not square: one row of 10
    np.testing.assert_allclose(data["x_train"], x, rtol=1e-6)


def test_csv_with_a_test_file_and_with_held_out_rows(tmp_path):
    raw = arrays()
    train = write_csv(tmp_path / "train.csv", raw["x_train"], raw["y_train"])
    test = write_csv(tmp_path / "test.csv", raw["x_test"], raw["y_test"])
    info, data = loaded(dataset="csv", dataset_args={"path": train, "test_path": test})
    assert info == ((64,), 3, (8, 8), ["0", "1", "2"])
    np.testing.assert_allclose(data["x_test"] * 255, raw["x_test"].reshape(12, 64), atol=1e-4)
    assert data["y_test"].tolist() == raw["y_test"].tolist()
    _, data = loaded(dataset="csv", dataset_args={"path": train, "test_size": 8, "class_names": NAMES})
    assert len(data["x_train"]) == 32 and data["y_test"].tolist() == raw["y_train"][-8:].tolist()
    assert data["class_names"] == NAMES


def test_npz_trains_and_tests_through_main(tmp_path, capsys):
    config = write_config(tmp_path, dataset="npz", dataset_args={"path": write_npz(tmp_path / "d.npz")},
                          network=TINY_NET, valid_size=10, num_epochs=2, log_level=0)
    assert main([config]) == 0
    assert main([config, "--task", "test"]) == 0
    out = capsys.readouterr().out
    assert "Number of errors: " in out and "/12" in out
    assert all(f"{name}: " in out for name in NAMES)


# --- one split at a time: load_split -------------------------------------------------------------

class TwoSplits(Dataset):
    """Two examples in each split, from `load`; `calls` records each load and load_split."""
    name = "two_splits"                                     # not registered: used directly

    def __init__(self, data_dir="unused"):
        super().__init__(data_dir)
        self.calls = []

    def info(self):
        return Info((4,), 2, (2, 2), ["a", "b"])

    def load(self, log=None):
        self.calls.append("load")
        return {**self.split_arrays("train"), **self.split_arrays("test"), "class_names": ["a", "b"]}

    @staticmethod
    def split_arrays(split):
        return {f"x_{split}": np.zeros((2, 4), np.float32), f"y_{split}": np.array([0, 1])}


class FilePerSplit(TwoSplits):
    """A dataset whose splits are in files of their own: it reads only the split asked for."""
    def load_split(self, split, log=None):
        self.calls.append(split)
        return self.split_arrays(split)


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_split_is_load_split_s_or_by_default_kept_from_load(split):
    dataset = TwoSplits()
    assert set(load_dataset(dataset, split=split)) == {f"x_{split}", f"y_{split}", "class_names"}
    assert dataset.calls == ["load"]
    dataset = FilePerSplit()
    assert set(load_dataset(dataset, split=split)) == {f"x_{split}", f"y_{split}"}
    assert set(load_dataset(dataset)) == {"x_train", "y_train", "x_test", "y_test", "class_names"}
    assert dataset.calls == [split, "load"]


# --- bad files and arguments: exit status 2 and one line -----------------------------------------

def bad_npz(**changes):
    return lambda folder: ("npz", {"path": write_npz(folder / "bad.npz", **changes)})


def bad_csv(text, **args):
    def make(folder):
        (folder / "bad.csv").write_text(text)
        return "csv", {"path": str(folder / "bad.csv"), **args}
    return make


def raw_file(name, content):
    def make(folder):
        (folder / name).write_bytes(content)
        return ("npz" if name.endswith(".npz") else "csv"), {"path": str(folder / name)}
    return make


GOOD = arrays()


@pytest.mark.parametrize("make,message", [
    (bad_npz(y_test=None), "bad.npz: missing the arrays y_test (expected x_train, y_train, x_test, y_test"),
    (raw_file("text.npz", b"not a zip file"), "text.npz: cannot read it as an .npz file (an .npz file is a zip "
                                              "archive of arrays, as numpy.savez writes it; this file is not one)"),
    (lambda folder: ("npz", {"path": str(folder / "gone.npz")}), "gone.npz: no such file"),
    (bad_npz(y_train=GOOD["y_train"][:-1]), "(train set): expected one label per image, shape (40,), got (39,)"),
    (bad_npz(y_test=GOOD["y_test"] + 1), "(test set): labels must be in [0, 2] (one per class name), found 3"),
    (bad_npz(y_train=GOOD["y_train"] - 1), "(train set): labels must be >= 0, found -1"),
    (bad_npz(y_train=GOOD["y_train"] + 0.5), "(train set): expected whole-number labels, got float64"),
    (bad_npz(x_train=GOOD["x_train"][:0], y_train=GOOD["y_train"][:0]), "(train set): no examples"),
    (bad_npz(x_train=GOOD["x_train"][:, None]), "expected images of numbers as (N, H, W) or (N, D), got uint8 of "
                                                "shape (40, 1, 8, 8)"),
    (bad_npz(x_test=GOOD["x_test"][:, :7]), "(test set): expected images of shape (8, 8) like the training set"),
    (bad_npz(x_train=np.full((40, 64), np.nan)), "(train set): the images contain NaN or infinite values"),
    (bad_csv("label,a,b\n1,2,3\n1,2\n"), "bad.csv: line 3: 2 values, but line 2 has 3"),
    (bad_csv("label,a,b\n1,2,x\n"), "bad.csv: line 2, column 3: 'x' is not a number"),
    (bad_csv("label,a,b\n\n1,2,3\n# a comment\n2,y,3\n"), "bad.csv: line 5, column 2: 'y' is not a number"),
    (bad_csv("1,2,3\n1,2,3,4\n"), "bad.csv: line 2: 4 values, but line 1 has 3"),
    (bad_csv("label,a,b\n"), "bad.csv: no examples"),
    (bad_csv("label\n1\n2\n"), "bad.csv: expected a label and at least one pixel per row, got 1 columns"),
    (bad_csv("label,a\n1,2\n2,3\n", test_size=2), "bad.csv: test_size 2 leaves no training rows of the 2"),
    (bad_npz(x_train=GOOD["x_train"][:, :4], x_test=GOOD["x_test"][:, :4]),
     "network[0] (Linear) does not fit: expected (N, 64) inputs, got (N, 32); the data gives"),
])
def test_bad_files_give_one_error_line(tmp_path, capsys, make, message):
    name, args = make(tmp_path)
    config = write_config(tmp_path, dataset=name, dataset_args=args, network=TINY_NET, valid_size=5)
    for task in ("train", "summary"):                 # summary reads the file too: it needs the shape
        assert message in run_error(capsys, [config, "--task", task])
    assert not (tmp_path / "model.pkl").exists()


@pytest.mark.parametrize("keys,message", [
    ({"dataset": "npz", "dataset_args": {"pth": "d.npz"}},
     "error: dataset_args.pth: unknown argument of NpzDataset; did you mean 'path'? (arguments: path)"),
    ({"dataset": "npz"}, "error: dataset_args.path: missing (required by NpzDataset)"),
    ({"dataset": "npz", "dataset_args": {"path": 3}}, "error: dataset_args.path: expected a file name, got 3"),
    ({"dataset": "csv", "dataset_args": ["x.csv"]}, "error: dataset_args: expected an object of the dataset's "
                                                    "arguments, got ['x.csv']"),
    ({"dataset": "csv", "dataset_args": {"path": "x.csv", "test_size": 0}},
     "error: dataset_args.test_size: expected an integer >= 1, got 0"),
    ({"dataset": "csv", "dataset_args": {"path": "x.csv", "test_size": 5, "test_path": "y.csv"}},
     "error: dataset_args.test_size: give test_size or test_path, not both"),
    ({"dataset": "mnist", "dataset_args": {"path": "x"}},
     "error: dataset_args.path: unknown argument of MNIST (arguments: none)"),
    ({"dataset": "fashion"}, "error: dataset: unknown 'fashion'; did you mean 'fashion_mnist'? "
                             f"(choices: {', '.join(sorted(DATASETS))})"),     # with any of your own
    ({"dataset": ["mnist"]}, "error: dataset: unknown ['mnist']"),
])
def test_bad_dataset_arguments_are_rejected_before_any_data(tmp_path, capsys, keys, message):
    assert run_error(capsys, [write_config(tmp_path, **keys)]).startswith(message)
    assert not (tmp_path / "data").exists()


# --- Fashion-MNIST ---------------------------------------------------------------------------------

needs_fashion = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(FASHION_SYSTEM_DIR, f"{name}.gz")) for name in FILES.values()),
    reason=f"the Debian package dataset-fashion-mnist is not installed (no files in {FASHION_SYSTEM_DIR}); "
           f".ci/run installs it with apt-get where it can")


@needs_fashion
def test_fashion_mnist_is_read_from_the_system_package_and_nothing_is_written(tmp_path):
    system_before = sorted(os.listdir(FASHION_SYSTEM_DIR))
    data = load_fashion_mnist(tmp_path / "data", mirrors=[])          # no mirror: the package must do
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = data[f"x_{split}"], data[f"y_{split}"]
        assert x.shape == (n, 784) and x.dtype == np.float32 and x.min() == 0 and x.max() == 1
        assert np.bincount(y).tolist() == [n // 10] * 10
    assert data["class_names"] == FASHION_CLASS_NAMES == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                          "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert not (tmp_path / "data").exists()
    assert sorted(os.listdir(FASHION_SYSTEM_DIR)) == system_before


@needs_fashion
def test_fashion_class_names_in_the_test_report(tmp_path, capsys):
    config = write_config(tmp_path, dataset="fashion_mnist", train_size=1000, valid_size=500, num_epochs=1,
                          log_level=0, network=[{"class": "Linear", "n_in": 784, "n_out": 10}])
    assert main([config]) == 0 and main([config, "--task", "test"]) == 0
    out = capsys.readouterr().out
    assert "/10000" in out and "T-shirt/top: " in out and "Ankle boot: " in out
    assert not (tmp_path / "data").exists()                           # the package's files were used


def test_fashion_mnist_falls_back_to_data_dir_for_a_bad_system_file(tmp_path, monkeypatch):
    """A fake package folder with one corrupt file: that one comes from the mirror into data_dir."""
    monkeypatch.setattr(mnist, "FASHION_SHA256", write_fake_mirror(tmp_path / "system"))
    write_fake_mirror(tmp_path / "mirror")
    victim = tmp_path / "system" / "train-labels-idx1-ubyte.gz"
    victim.write_bytes(b"corrupt")
    log = RecordingLog()
    data = mnist.load_fashion_mnist(tmp_path / "data", mirrors=[str(tmp_path / "mirror")], log=log,
                                    system_dir=str(tmp_path / "system"))
    assert log.said("warning", str(victim), "does not match")
    assert sorted(os.listdir(tmp_path / "data")) == ["train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz.sha256"]
    assert victim.read_bytes() == b"corrupt"
    assert data["y_train"].tolist() == [0, 1, 2, 3, 4] and data["class_names"] == FASHION_CLASS_NAMES


@pytest.mark.parametrize("split,prefix", [("train", "train"), ("test", "t10k")])
def test_fashion_mnist_reads_only_the_files_of_the_split_asked_for(tmp_path, monkeypatch, split, prefix):
    monkeypatch.setattr(mnist, "FASHION_SHA256", write_fake_mirror(tmp_path / "mirror"))
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIR", str(tmp_path / "no_package_here"))
    monkeypatch.setattr(mnist, "FASHION_MIRRORS", [])
    monkeypatch.setenv("NNFS_FASHION_MIRROR", str(tmp_path / "mirror"))
    dataset = make_dataset({"dataset": "fashion_mnist", "data_dir": str(tmp_path / "data"), "dataset_args": {}})
    data = load_dataset(dataset, split=split)
    assert set(data) == {f"x_{split}", f"y_{split}", "class_names"} and data["class_names"] == FASHION_CLASS_NAMES
    assert sorted(path.name for path in (tmp_path / "data" / "fashion-mnist").glob("*.gz")) == \
        sorted(f"{name}.gz" for name in FILES.values() if name.startswith(prefix))


def test_fashion_mnist_has_its_own_mirror_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("NNFS_MIRROR", "https://example.org/mnist")
    monkeypatch.setenv("NNFS_FASHION_MIRROR", str(tmp_path))
    assert mnist.mirror_list("NNFS_FASHION_MIRROR", mnist.FASHION_MIRRORS) == \
        [tmp_path.resolve().as_uri() + "/", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]


# --- your own dataset, from the README -------------------------------------------------------------

@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    """A folder that counts as part of the datasets package; the registry, the broken files and
    the package's modules are restored afterwards."""
    folder = tmp_path / "user_datasets"
    folder.mkdir()
    with restored(datasets, (DATASETS,), BROKEN):
        monkeypatch.setattr(datasets, "__path__", [*datasets.__path__, str(folder)])
        yield folder


def test_the_readme_example_dataset_works(user_folder, tmp_path, capsys):
    readme = (ROOT / "README.md").read_text()
    name, code = re.search(r"```python\n# datasets/(\w+)\.py\n(.*?)```", readme, re.S).groups()
    DATASETS.pop("bars", None)            # your own copy of the example (datasets/bars.py), if any, steps aside
    (user_folder / f"readme_{name}.py").write_text(code)
    discover()
    assert "bars" in DATASETS and BROKEN == {}
    config = write_config(tmp_path, dataset="bars", dataset_args={"size": 10}, valid_size=100, num_epochs=10,
                          lr=0.01, optimizer={"name": "adam"}, log_level=0,
                          network=[{"class": "Linear", "n_in": 100, "n_out": 32}, {"class": "ReLU"},
                                   {"class": "Linear", "n_in": 32, "n_out": 2}])
    assert main([config]) == 0 and main([config, "--task", "test"]) == 0
    out = capsys.readouterr().out
    assert "horizontal: " in out and "vertical: " in out
    assert float(out.split("Test accuracy: ")[1].split("%")[0]) > 90
    assert run_error(capsys, [config, "--set", "dataset_args.size=1"]) == \
        "error: dataset_args.size: expected an integer >= 2, got 1"


def test_a_broken_dataset_file_is_named_only_when_it_matters(user_folder, tmp_path, capsys):
    (user_folder / "mine.py").write_text("def broken(:\n")
    discover()
    assert BROKEN["mine"].startswith("datasets/mine.py line 1: SyntaxError")
    assert main([write_config(tmp_path), "--task", "summary"]) == 0       # mnist runs are unaffected
    message = run_error(capsys, [write_config(tmp_path, dataset="mine")])
    assert message.startswith("error: dataset: unknown 'mine'")
    assert "datasets/mine.py line 1: SyntaxError" in message


def test_a_dataset_file_that_registers_and_then_fails_leaves_no_dataset_behind(user_folder):
    (user_folder / "half_done.py").write_text("from datasets import Dataset, register_dataset\n\n\n"
                                              "@register_dataset\nclass HalfDone(Dataset):\n    name = 'half_done'\n"
                                              "\n\nraise ImportError('a missing package')\n")
    discover()
    assert "half_done" not in DATASETS and BROKEN["half_done"].startswith("datasets/half_done.py: ImportError")


# --- CSV files: header or not, and positions as an editor shows them --------------------------------

def test_csv_without_a_header_keeps_its_first_example(tmp_path, capsys):
    raw = arrays()
    with_header = write_csv(tmp_path / "with.csv", raw["x_train"], raw["y_train"])
    without = tmp_path / "without.csv"
    without.write_text("\n".join((tmp_path / "with.csv").read_text().splitlines()[1:]) + "\n")
    assert without.read_text().startswith("0,")
    for path in (with_header, str(without)):
        _, data = loaded(dataset="csv", dataset_args={"path": path, "test_size": 10})
        assert len(data["x_train"]) == 30 and len(data["x_test"]) == 10
        np.testing.assert_allclose(data["x_train"][0] * 255, raw["x_train"][0].reshape(64), atol=1e-4)
    config = write_config(tmp_path, dataset="csv", dataset_args={"path": str(without), "test_size": 10},
                          network=TINY_NET, valid_size=5, num_epochs=1, log_level=0)
    assert main([config]) == 0 and main([config, "--task", "test"]) == 0
    assert "Number of errors: " in capsys.readouterr().out.split("/10\n")[0]


@pytest.mark.parametrize("class_names,message", [
    (None, "network: the last layer gives (3,) per example, but csv has 13 classes: expected (13,); without "
           "class_names the classes are counted as the highest label + 1, and label 12 is at line 8 of "),
    (NAMES, "(train set): labels must be in [0, 2] (one per class name), found 12 at line 8 of "),
])
def test_a_stray_csv_label_is_pointed_at(tmp_path, capsys, class_names, message):
    raw = arrays()
    raw["y_train"][5] = 12                                  # the sixth example, line 8 after the header and a blank
    path = write_csv(tmp_path / "stray.csv", raw["x_train"], raw["y_train"], header="label,pixels\n")
    args = {"path": path, "test_size": 10, **({"class_names": class_names} if class_names else {})}
    config = write_config(tmp_path, dataset="csv", dataset_args=args, network=TINY_NET, valid_size=5)
    for task in ("train", "summary"):
        error = run_error(capsys, [config, "--task", task])
        assert message in error and error.endswith(("stray.csv (give dataset_args.class_names if it is a stray "
                                                    "label)", "stray.csv"))


def test_fashion_mnist_from_a_package_leaves_no_empty_cache_folder(tmp_path, capsys, monkeypatch):
    """A fake package folder with every file: training and testing write nothing under data_dir."""
    monkeypatch.setattr(mnist, "FASHION_SHA256", write_fake_mirror(tmp_path / "system"))
    monkeypatch.setattr(mnist, "FASHION_SYSTEM_DIR", str(tmp_path / "system"))
    monkeypatch.setenv("NNFS_FASHION_MIRROR", str(tmp_path / "no_mirror_here"))
    config = write_config(tmp_path, dataset="fashion_mnist", valid_size=1, num_epochs=1, log_level=0,
                          network=[{"class": "Linear", "n_in": 784, "n_out": 10}])
    assert main([config]) == 0 and main([config, "--task", "test"]) == 0
    assert "Number of errors: " in capsys.readouterr().out
    assert not (tmp_path / "data").exists()
