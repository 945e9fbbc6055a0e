"""The summary, plot and predict tasks, and the test report, through main.py."""
import json
import os

import numpy as np
import pytest

from main import main
from test_cli import SMALL_NET, run_error, write_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_data_dir):
    """A small MLP trained for 2 epochs on 10,000 real MNIST images; returns its config path."""
    folder = tmp_path_factory.mktemp("trained")
    config = write_config(folder, data_dir=str(mnist_data_dir), train_size=10000, valid_size=1000,
                          num_epochs=2, log_level=0, optimizer={"name": "momentum"}, lr=0.05)
    assert main([config]) == 0
    return config


def png_pixels(path):
    import matplotlib.image
    return matplotlib.image.imread(str(path))


def test_summary_counts_parameters_without_data(tmp_path, capsys):
    network = [{"class": "Linear", "n_in": 784, "n_out": 200}, {"class": "Tanh"},
               {"class": "Linear", "n_in": 200, "n_out": 10}]
    assert main([write_config(tmp_path, network=network), "--task", "summary"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 159,010" in out and "Total mult-adds per example: 158,800" in out
    assert "Linear(n_in=784, n_out=200)" in out and "157,000" in out
    assert not (tmp_path / "data").exists()


def test_test_report_adds_per_class_accuracy_and_confusion(trained, capsys):
    assert main([trained, "--task", "test"]) == 0
    out = capsys.readouterr().out.splitlines()
    errors = int(out[0].split()[-1].split("/")[0])
    assert "Per-class accuracy:" in out and any(line.startswith("Confusion matrix") for line in out)
    rows = [line.split() for line in out[out.index("Confusion matrix (rows: true class, columns: predicted class):")
                                          + 2:]]
    matrix = np.array([[int(v) for v in row[1:]] for row in rows])
    assert matrix.shape == (10, 10) and matrix.sum() == 10000
    assert matrix.sum() - np.trace(matrix) == errors
    assert matrix.sum(axis=1).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_plot_writes_pictures_that_are_not_blank(trained, tmp_path, capsys):
    plot_dir = tmp_path / "plots"
    assert main([trained, "--task", "plot", "--set", f"plot_dir={plot_dir}", "--set", "plot.count=20"]) == 0
    expected = {"samples.png": None, "confusion.png": (600, 700), "mistakes.png": None,
                "first_layer.png": None, "curves.png": (400, 1000)}
    out = capsys.readouterr().out
    for name, size in expected.items():
        path = plot_dir / name
        assert f"wrote {path}" in out
        pixels = png_pixels(path)
        if size:
            assert pixels.shape[:2] == size
        assert min(pixels.shape[:2]) >= 100
        assert pixels[..., :3].var() > 1e-3, name                    # not a blank picture
    assert not list(plot_dir.glob("watch_*.png"))                    # trained without "watch"


def test_plot_without_a_model_is_an_error_unless_asked_for_data_only(tmp_path, capsys, mnist_data_dir):
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), log_level=0)
    message = run_error(capsys, [config, "--task", "plot"])
    assert "cannot read model file" in message and "train first" in message
    assert main([config, "--task", "plot", "--set", "plot.model=false", "--set", "plot.split=test"]) == 0
    assert png_pixels(tmp_path / "model_plots" / "samples.png")[..., :3].var() > 1e-3


def test_plot_dir_that_cannot_be_written(trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "plot_dir: cannot create folder" in run_error(capsys, [trained, "--task", "plot", "--set",
                                                                  f"plot_dir={blocker}/plots"])


@pytest.mark.parametrize("polarity", ["dark_on_light", "light_on_dark"])
def test_predict_a_real_test_digit_from_png(trained, tmp_path, capsys, mnist, polarity):
    import matplotlib.pyplot as plt
    paths, labels = [], []
    for i in range(8):
        digit = np.kron(mnist["x_test"][i].reshape(28, 28), np.ones((3, 3)))     # 84x84, as if drawn larger
        image = 1 - digit if polarity == "dark_on_light" else np.pad(digit, 10)
        path = tmp_path / f"digit{i}.png"
        plt.imsave(path, image, cmap="gray", vmin=0, vmax=1)
        paths.append(str(path))
        labels.append(str(mnist["y_test"][i]))
    assert main([trained, "--task", "predict", "--input", *paths, "--save-prepared",
                 "--set", f"plot_dir={tmp_path / 'prepared'}"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("wrote")]
    predicted = [line.split(": ")[1].split()[0] for line in lines]
    assert [line.split(": ")[0] for line in lines] == paths
    assert predicted == labels
    prepared = png_pixels(tmp_path / "prepared" / "digit0.prepared.png")
    assert prepared.shape[:2] == (28, 28)


def test_predict_npy(trained, tmp_path, capsys, mnist):
    np.save(tmp_path / "digit.npy", mnist["x_test"][0])                          # 784 values
    np.save(tmp_path / "digit2d.npy", (mnist["x_test"][1].reshape(28, 28) * 255).astype(np.uint8))
    assert main([trained, "--task", "predict", "--input", str(tmp_path / "digit.npy"),
                 str(tmp_path / "digit2d.npy")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path / 'digit.npy'}: {mnist['y_test'][0]} ")
    assert out[1].startswith(f"{tmp_path / 'digit2d.npy'}: {mnist['y_test'][1]} ")


def test_unusual_value_ranges_are_stretched_and_light_paper_inverted():
    from datasets.prepare import prepare
    from datasets.prepare import to_gray
    digit = np.zeros((40, 40))
    digit[10:30, 18:22] = 1                                           # a "1", light on dark
    for scaled in (digit * 300 - 100, (1 - digit) * 300 - 100):       # values in [-100, 200]
        gray = to_gray(scaled, "test")
        assert gray.min() == 0 and gray.max() == 1
        image = prepare(gray)
        assert image[14, 14] > 0.9 and image[0, 0] == 0               # the stroke is centred and light


def test_predict_bad_input(trained, tmp_path, capsys):
    (tmp_path / "text.png").write_text("not an image")
    np.save(tmp_path / "cube.npy", np.zeros((3, 5, 7)))
    np.save(tmp_path / "blank.npy", np.zeros((28, 28)))
    np.save(tmp_path / "nan.npy", np.full((28, 28), np.nan))
    cases = {str(tmp_path / "missing.png"): "no such file",
             str(tmp_path / "text.png"): "cannot read it as an image",
             str(tmp_path / "cube.npy"): "expected a 2-D grayscale image, an RGB(A) image or 784 values, got "
                                         "shape (3, 5, 7)",
             str(tmp_path / "blank.npy"): "no digit found",
             str(tmp_path / "nan.npy"): "NaN or infinite values"}
    for path, message in cases.items():
        assert message in run_error(capsys, [trained, "--task", "predict", "--input", path])
    assert "no images to predict" in run_error(capsys, [trained, "--task", "predict"])


def test_predict_goes_on_past_files_it_cannot_read(trained, tmp_path, capsys, mnist):
    np.save(tmp_path / "good.npy", mnist["x_test"][0])
    (tmp_path / "notes.npy").write_text("not an array")
    (tmp_path / "folder").mkdir()
    good, notes, folder = str(tmp_path / "good.npy"), str(tmp_path / "notes.npy"), str(tmp_path / "folder")
    assert main([trained, "--task", "predict", "--input", notes, good, folder]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}: {mnist['y_test'][0]} ")
    assert captured.err.splitlines() == [
        f"error: {notes}: not a .npy file (numpy.save writes them; this file is not one)",
        f"error: {folder}: is a folder, expected an image file (give the images in it: --input {folder}/*.png)",
        f"error: 2 of 3 images could not be classified: {notes}, {folder}"]
    assert "allow_pickle" not in captured.err


def test_predict_with_options_before_the_config(trained, tmp_path, capsys, mnist):
    np.save(tmp_path / "digit.npy", mnist["x_test"][0])
    assert main(["--task", "predict", "--input", str(tmp_path / "digit.npy"), trained]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'digit.npy'}: {mnist['y_test'][0]} ")


def test_prepared_images_of_the_same_name_do_not_overwrite_each_other(trained, tmp_path, capsys, mnist):
    paths = []
    for folder, i in (("a", 0), ("b", 1), ("c", 2)):
        (tmp_path / folder).mkdir()
        name = "x.npy" if folder != "c" else "x-2.npy"
        np.save(tmp_path / folder / name, mnist["x_test"][i])
        paths.append(str(tmp_path / folder / name))
    out_dir = tmp_path / "prepared"
    assert main([trained, "--task", "predict", "--save-prepared", "--set", f"plot_dir={out_dir}", "--input", *paths]) == 0
    written = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert written == [str(out_dir / n) for n in ("x.prepared.png", "x-2.prepared.png", "x-2-2.prepared.png")]
    for path, i in zip(written, range(3)):                              # each is the picture of its own digit
        from datasets.prepare import prepare
        expected = prepare(mnist["x_test"][i].reshape(28, 28).astype(np.float64))
        assert np.abs(png_pixels(path)[..., 0] - expected).max() < 0.01


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the peak memory from Linux's /proc")
def test_predict_reads_a_large_photo_in_little_memory(trained, tmp_path):
    """A 48-megapixel JPEG (8000x6000) of a dark 1 on white paper: read as floats at full size it
    would take over a gigabyte; shrunk while decoded it takes a few megabytes."""
    import subprocess
    import sys
    from PIL import Image, ImageDraw
    from conftest import ROOT
    photo = Image.new("L", (6000, 8000), 235)
    ImageDraw.Draw(photo).rectangle((2800, 1500, 3300, 6500), fill=20)
    photo.save(tmp_path / "photo.jpg", quality=85)
    del photo
    # The peak resident memory of this process since it started (VmHWM; ru_maxrss would include
    # the memory of the pytest process it was forked from).
    script = (f"import re, sys; sys.path.insert(0, {str(ROOT)!r}); from main import main; "
              f"status = main([{trained!r}, '--task', 'predict', '-q', '--input', {str(tmp_path / 'photo.jpg')!r}]); "
              f"print(int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1]) // 1024, status)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    prediction, usage = result.stdout.splitlines()
    assert prediction.startswith(f"{tmp_path / 'photo.jpg'}: 1 ")
    peak_mb, status = map(int, usage.split())
    assert status == 0 and peak_mb < 400, peak_mb


def test_a_failed_plot_or_training_leaves_no_empty_folder(tmp_path, capsys, monkeypatch):
    import datasets.mnist
    monkeypatch.setattr(datasets.mnist, "MIRRORS", [])
    monkeypatch.setenv("NNFS_MIRROR", str(tmp_path / "no_mirror_here"))
    config = write_config(tmp_path, model_file=str(tmp_path / "models" / "net.pkl"))
    assert "cannot read model file" in run_error(capsys, [config, "--task", "plot"])
    assert main([config]) == 2                                          # no data, no training
    assert capsys.readouterr().err.splitlines()[-1].startswith("error: could not get train-images-idx3-ubyte.gz")
    assert sorted(os.listdir(tmp_path)) == ["config.json"]              # no models/, no net_plots/, no data/


def data_dir_with(names, tmp_path, monkeypatch, mnist_data_dir):
    """A data_dir holding only the MNIST files `names`, with no mirror to fetch the others from."""
    import shutil
    import datasets.mnist
    monkeypatch.setattr(datasets.mnist, "MIRRORS", [])
    monkeypatch.setenv("NNFS_MIRROR", str(tmp_path / "no_mirror_here"))
    folder = tmp_path / "data"
    folder.mkdir()
    for name in names:
        shutil.copy(mnist_data_dir / name, folder / name)
    return folder


def test_test_reads_only_the_test_files(trained, tmp_path, capsys, monkeypatch, mnist_data_dir):
    only_test = data_dir_with(("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"), tmp_path, monkeypatch,
                              mnist_data_dir)
    assert main([trained, "--task", "test", "--set", f"data_dir={only_test}"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("/10000")
    assert sorted(os.listdir(only_test)) == ["t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz.sha256",
                                             "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz.sha256"]


def test_training_reads_only_the_training_files(tmp_path, monkeypatch, mnist_data_dir):
    only_train = data_dir_with(("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"), tmp_path, monkeypatch,
                               mnist_data_dir)
    config = write_config(tmp_path, data_dir=str(only_train), train_size=500, valid_size=100, num_epochs=1,
                          log_level=0)
    assert main([config]) == 0                                   # the test files are never asked for
    assert not any(name.startswith("t10k") for name in os.listdir(only_train))


def test_a_model_file_of_another_network_is_refused_and_the_loaded_file_named(trained, tmp_path, capsys, mnist):
    model_file = trained.replace("config.json", "model.pkl")
    message = run_error(capsys, [trained, "--task", "test", "--set", "network.0.n_out=48", "--set", "network.2.n_in=48"])
    assert message == (f"error: {model_file} holds another network than this config (file -> config: "
                       f"network[0].n_out: 32 -> 48; network[2].n_in: 32 -> 48); use the config it was trained "
                       f"with, or set model_file to a model trained with this one")
    cnn = [{"class": "Reshape", "shape": [1, 28, 28]}, {"class": "Flatten"}, *SMALL_NET]
    message = run_error(capsys, [trained, "--task", "plot", "--set", f"network={json.dumps(cnn)}"])
    assert "(file -> config: network: 3 layers -> 5; network[0].class: 'Linear' -> 'Reshape'; " in message
    np.save(tmp_path / "digit.npy", mnist["x_test"][0])
    assert main([trained, "--task", "predict", "--set", "log_level=1", "--set", "dtype=float64",
                 "--input", str(tmp_path / "digit.npy")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == f"loaded the model from {model_file}"
    assert captured.err == f"warning: {model_file} was saved in float32, the config says float64: the model runs " \
                           f"in float32\n"


def test_summary_names_the_layers_as_the_config_does(tmp_path, capsys):
    config = write_config(tmp_path, network={"hidden": SMALL_NET[0], "act": SMALL_NET[1], "out": SMALL_NET[2]})
    assert main([config, "--task", "summary"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[1].startswith("Name ")
    assert [row.split(" | ")[0].strip() for row in rows[3:6]] == ["network.hidden", "network.act", "network.out"]


def test_plot_epoch_ticks_are_whole_and_the_first_layer_shows_what_training_changed_most(tmp_path, capsys, monkeypatch,
                                                                                  mnist_data_dir):
    import plots
    network = [{"class": "Linear", "n_in": 784, "n_out": 80}, {"class": "ReLU"},
               {"class": "Linear", "n_in": 80, "n_out": 10}]
    config = write_config(tmp_path, data_dir=str(mnist_data_dir), train_size=1000, valid_size=200, num_epochs=3,
                          log_level=0, network=network)
    assert main([config]) == 0
    figures, save = {}, plots.save

    def recording_save(plt, fig, path, show):
        figures[os.path.basename(path)] = {
            "suptitle": fig.get_suptitle(), "titles": [ax.get_title() for ax in fig.axes if ax.get_images()],
            "xticks": [tick for ax in fig.axes for tick in ax.get_xticks()]}
        return save(plt, fig, path, show)
    monkeypatch.setattr(plots, "save", recording_save)
    assert main([config, "--task", "plot", "--set", "plot.count=10", "--set", "seed=9"]) == 0   # not the file's seed
    assert figures["curves.png"]["xticks"] and all(t == int(t) for t in figures["curves.png"]["xticks"])
    layer = figures["first_layer.png"]
    assert layer["suptitle"] == ("first layer, change of each unit's weights in training (final - initial): "
                                 "the 64 of 80 units that changed most (L2 norm)")
    from utils import load_model
    from model import build_model
    weight = load_model(str(tmp_path / "model.pkl"))[0].params["0.weight"]
    initial = build_model(network, np.float32, np.random.default_rng(0)).params["0.weight"]   # the file's seed
    strongest = np.argsort(-np.linalg.norm(weight - initial, axis=0))[:64]
    assert [int(t) for t in layer["titles"]] == strongest.tolist()
