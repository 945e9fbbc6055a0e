"""Recurrent networks end to end: MNIST read as 28 rows of 28 pixels trains, tests, plots and predicts."""
import numpy as np
import pytest

from main import main
from test_cli import write_config


def rows_network(name, hidden=32):
    return [{"class": "Reshape", "shape": [28, 28]}, {"class": name, "n_in": 28, "n_hidden": hidden},
            {"class": "Linear", "n_in": hidden, "n_out": 10}]


@pytest.fixture(scope="module")
def trained_lstm(tmp_path_factory, mnist_data_dir):
    folder = tmp_path_factory.mktemp("lstm")
    config = write_config(folder, network=rows_network("LSTM"), data_dir=str(mnist_data_dir), train_size=5000,
                          valid_size=500, num_epochs=3, lr=0.01, optimizer={"name": "adam"}, clip_grad_norm=5,
                          log_level=0)
    assert main([config]) == 0
    return config


def test_lstm_learns_mnist_rows(trained_lstm, capsys):
    assert main([trained_lstm, "--task", "test"]) == 0
    assert float(capsys.readouterr().out.split("Test accuracy: ")[1].split("%")[0]) > 85


def test_plot_skips_the_first_layer_picture_in_a_line(trained_lstm, tmp_path, capsys):
    plot_dir = tmp_path / "plots"
    assert main([trained_lstm, "--task", "plot", "--set", f"plot_dir={plot_dir}", "--set", "plot.count=10",
                 "--set", "log_level=1"]) == 0
    out = capsys.readouterr().out
    assert "first_layer.png skipped" in out and not (plot_dir / "first_layer.png").exists()
    for name in ("samples.png", "confusion.png", "mistakes.png", "curves.png"):
        assert f"wrote {plot_dir / name}" in out


def test_predict_with_an_lstm(trained_lstm, tmp_path, capsys, mnist):
    np.save(tmp_path / "digit.npy", mnist["x_test"][0])
    assert main([trained_lstm, "--task", "predict", "--input", str(tmp_path / "digit.npy")]) == 0
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'digit.npy'}: ")


@pytest.mark.parametrize("name,params", [("RNN", 128 * (28 + 128 + 1)), ("LSTM", 4 * 128 * (28 + 128 + 1)),
                                         ("GRU", 3 * 128 * (28 + 128 + 2))])
def test_summary_of_a_recurrent_network(name, params, tmp_path, capsys):
    assert main([write_config(tmp_path, network=rows_network(name, 128)), "--task", "summary"]) == 0
    out = capsys.readouterr().out
    blocks = {"RNN": 1, "LSTM": 4, "GRU": 3}[name]
    assert f"{params:,}" in out and f"{28 * (28 + 128) * blocks * 128:,}" in out
    assert f"Total params: {params + 1290:,}" in out
