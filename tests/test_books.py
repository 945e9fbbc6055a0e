"""The books' configs (configs/books/) validate and train one small batch, and the pieces they
added (QuadraticLoss, bias_std, the summary's Init column and training lines) do what their
docstrings say. The full trainings are in docs/books.md, not here."""
import pathlib

import numpy as np
import pytest

from main import main
from model import build_model
from nn_module import Conv2D, Linear, MSELoss, QuadraticLoss, SigmoidCrossEntropyLoss

BOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "configs" / "books").glob("*.json"))


def test_there_is_a_config_per_published_result():
    assert {p.stem for p in BOOKS} >= {"nndl_ch1_30", "nndl_ch1_100", "nndl_ch3_100", "nndl_ch6_conv",
                                       "dlfs_ch8_deepconvnet", "seed_mlp_full"}


@pytest.mark.parametrize("path", BOOKS, ids=lambda p: p.stem)
def test_book_config_trains_a_small_batch(path, tmp_path, mnist_data_dir):
    model_file = tmp_path / f"{path.stem}.pkl"
    args = [str(path), "--set", f"data_dir={mnist_data_dir}", "--set", "train_size=200", "--set", "num_epochs=1",
            "--set", "valid_size=100", "--set", "threads=1", "--set", f"model_file={model_file}", "-q"]
    assert main(args) == 0 and model_file.exists()


def test_quadratic_loss_is_summed_over_outputs_and_averaged_over_examples():
    pred, labels = np.array([[0.5, 0.0], [1.0, 1.0]]), np.array([0, 1])
    loss = QuadraticLoss(dtype=np.float64)
    assert loss.forward(pred, labels) == pytest.approx((0.25 + 0 + 1 + 0) / (2 * 2))
    np.testing.assert_allclose(loss.backward(), (pred - [[1, 0], [0, 1]]) / 2)


def test_mse_gradient_is_quadratic_gradient_times_two_over_k():
    rng = np.random.default_rng(0)
    pred, labels = rng.normal(size=(4, 10)), rng.integers(0, 10, 4)
    quadratic, mse = QuadraticLoss(np.float64), MSELoss(np.float64)
    quadratic.forward(pred, labels), mse.forward(pred, labels)
    np.testing.assert_allclose(mse.backward(), quadratic.backward() * 2 / 10)


@pytest.mark.parametrize("make", [lambda s, rng: Linear(400, 300, bias_std=s, rng=rng),
                                  lambda s, rng: Conv2D(1, 20000, 1, bias_std=s, rng=rng)])
def test_bias_std_draws_biases_from_a_normal_distribution(make):
    assert not make(0.0, np.random.default_rng(0)).params["bias"].any()
    bias = make(2.0, np.random.default_rng(0)).params["bias"]
    assert abs(bias.mean()) < 0.1 and bias.std() == pytest.approx(2.0, rel=0.05)


def test_bias_std_rejects_a_negative_value():
    with pytest.raises(ValueError, match="bias_std: expected"):
        Linear(3, 2, bias_std=-1.0)


def test_summary_shows_the_initialisation():
    model = build_model([{"class": "Linear", "n_in": 4, "n_out": 3, "init": "normal", "std": 1.0, "bias_std": 1.0},
                         {"class": "Sigmoid"}, {"class": "Linear", "n_in": 3, "n_out": 2}])
    text = model.summary((4,))
    assert "normal std=1, bias std=1" in text and "| he " in text


def test_summary_task_shows_loss_optimizer_and_lr(capsys):
    assert main([str(BOOKS[0].parent / "nndl_ch1_30.json"), "--task", "summary"]) == 0
    out = capsys.readouterr().out
    assert "Loss: QuadraticLoss" in out and "Optimizer: sgd(), lr 3," in out and "batch 10" in out


def test_sigmoid_cross_entropy_is_nndl_cross_entropy_and_stays_finite():
    logits, labels = np.array([[0.0, 2.0], [1000.0, -1000.0]]), np.array([1, 1])
    loss = SigmoidCrossEntropyLoss(dtype=np.float64)
    a = 1 / (1 + np.exp(-logits[0]))
    first = -(np.log(1 - a[0]) + np.log(a[1]))               # example 0: y = (0, 1)
    assert loss.forward(logits, labels) == pytest.approx((first + 1000 + 1000) / 2)
    np.testing.assert_allclose(loss.backward()[1], [0.5, -0.5])
