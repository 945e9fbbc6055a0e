"""The batch split across threads (parallel.py): the numbers of one thread, up to rounding.

A layer the split treats by example (parallel.BY_EXAMPLE) must give every slice of a batch
what the whole batch gives it; SplitBatchNorm must give what BatchNorm gives; a model split across threads must compute what it computes in one, gradients included;
and a training run on threads must be as reproducible (and resumable) as one without.
"""
import inspect
import warnings

import numpy as np
import pytest

import engine
from gradcheck import away_from_kinks
from main import main
from model import build_model
import parallel
from nn_module import LAYERS, BatchNorm, NNModule, get_module
from parallel import BatchSplit, SplitBatchNorm, batch_slices, by_example, stages
from test_device import interrupted_run, saved_arrays, write_config
from test_gradients import LAYER_CASES, check_module

CONV_NET = [{"class": "Conv2D", "in_channels": 2, "out_channels": 3, "kernel_size": 3, "padding": 1},
            {"class": "BatchNorm", "num_features": 3}, {"class": "ReLU"}, {"class": "MaxPool2D", "kernel_size": 2},
            {"class": "Flatten"}, {"class": "Linear", "n_in": 27, "n_out": 5}, {"class": "Tanh"},
            {"class": "Dropout", "p": 0.3}, {"class": "Linear", "n_in": 5, "n_out": 4}]


def build_layer(name, arguments, training):
    extra = {"rng": np.random.default_rng(0)} if "rng" in inspect.signature(get_module(name)).parameters else {}
    return get_module(name)(**arguments, dtype=np.float64, **extra).train(training)


def sliced_differences(layer, x, g, slices):
    """How far the slices' outputs, and in training their dL/dx and summed dL/dparams, are from
    the whole batch's: the largest absolute difference of each (eval mode runs no backward)."""
    def run(x, g):
        y = layer.forward(x)
        if not layer.training:
            return y, np.zeros(0), {}
        return y, layer.backward(g), {k: v.copy() for k, v in layer.grads.items()}
    y, grad_x, whole = run(x, g)
    parts = [run(x[s], g[s]) for s in slices]
    summed = {k: sum(grads[k] for _, _, grads in parts) for k in whole}
    return (np.abs(np.concatenate([p[0] for p in parts]) - y).max(),
            np.abs(np.concatenate([p[1] for p in parts]) - grad_x).max(initial=0.0),
            max((np.abs(summed[k] - whole[k]).max() for k in whole), default=0.0))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,arguments,shape", [(n, a, s) for n, cases in LAYER_CASES.items() for a, s in cases])
def test_per_example_layers_treat_each_example_apart(name, arguments, shape, training):
    layer = build_layer(name, arguments, training)
    if not by_example(layer):
        pytest.skip(f"{name} in {'training' if training else 'eval'} mode needs the whole batch")
    rng = np.random.default_rng(1)
    x = away_from_kinks((5, *shape), rng)
    g = rng.normal(size=layer.forward(x).shape)
    assert max(sliced_differences(layer, x, g, batch_slices(5, 3))) < 1e-12


def test_the_slice_check_catches_a_layer_that_needs_the_whole_batch():
    layer = build_layer("BatchNorm", {"num_features": 3}, training=True)      # averages over the batch
    assert not by_example(layer)
    rng = np.random.default_rng(1)
    x, g = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    assert min(sliced_differences(layer, x, g, batch_slices(6, 2))[:2]) > 1e-3


def test_every_built_in_layer_is_placed_by_the_split():
    """A new built-in layer must be named in the split's table, or be one that needs the batch."""
    for name, cls in LAYERS.items():
        assert cls in parallel.BY_EXAMPLE or name in ("BatchNorm", "Dropout"), name
    assert parallel.WORTH_SPLITTING <= parallel.BY_EXAMPLE


def test_a_layer_of_your_own_keeps_the_batch_whole():
    class Centre(NNModule):                        # needs no flag: the split never cuts its batch
        def forward(self, x):
            return x - x.mean(axis=0)

    class MyLinear(get_module("Linear")):          # a subclass may change forward: whole too
        pass

    layers = [Centre(), MyLinear(3, 2), get_module("ReLU")()]
    assert stages(layers) == [("whole", 0, 1), ("whole", 1, 2), ("examples", 2, 3)]
    x = np.random.default_rng(0).normal(size=(6, 3))
    np.testing.assert_array_equal(BatchSplit(layers[:1], 2).forward(x), x - x.mean(axis=0))


def split_batch_norm(layer, x, g, parts):
    """SplitBatchNorm's y, dL/dx and dL/dparams on x cut into `parts` slices, run in threads."""
    runner = BatchSplit([layer], 2)
    slices = batch_slices(len(x), parts)
    replicas = [parallel.replica(layer) for _ in slices]
    split = SplitBatchNorm(layer, runner.run)
    y = np.concatenate(split.forward(replicas, [x[s] for s in slices]))
    grad_x = np.concatenate(split.backward(replicas, [g[s] for s in slices]))
    return y, grad_x, {k: v.copy() for k, v in layer.grads.items()}


@pytest.mark.parametrize("shape", [(8, 3), (8, 3, 4, 5)])
def test_split_batch_norm_computes_what_batch_norm_computes(shape):
    rng = np.random.default_rng(6)
    x, g = rng.normal(2.0, 3.0, size=shape), rng.normal(size=shape)
    textbook = build_layer("BatchNorm", {"num_features": 3}, training=True)
    textbook.params["gamma"][...], textbook.params["beta"][...] = rng.normal(size=3), rng.normal(size=3)
    y, grad_x = textbook.forward(x), textbook.backward(g)
    for parts in (1, 3):
        layer = build_layer("BatchNorm", {"num_features": 3}, training=True)
        layer.params["gamma"][...], layer.params["beta"][...] = textbook.params["gamma"], textbook.params["beta"]
        split_y, split_grad_x, grads = split_batch_norm(layer, x, g, parts)
        same = np.testing.assert_array_equal if parts == 1 else (
            lambda a, b, **kw: np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12, **kw))
        same(split_y, y)                                           # a whole batch: the same bits
        same(split_grad_x, grad_x)
        for key in textbook.grads:
            same(grads[key], textbook.grads[key], err_msg=key)
        for key in textbook.state:                                  # running averages moved once, alike
            same(layer.state[key], textbook.state[key], err_msg=key)


def test_split_batch_norm_agrees_with_central_differences():
    """dL/dx and dL/dparams of SplitBatchNorm on 3 slices, against float64 central differences."""
    rng = np.random.default_rng(7)
    x, g = rng.normal(size=(7, 2, 3, 3)), rng.normal(size=(7, 2, 3, 3))
    layer = build_layer("BatchNorm", {"num_features": 2}, training=True)
    loss = lambda: float(np.sum(split_batch_norm(layer, x, g, 3)[0] * g))
    _, grad_x, grads = split_batch_norm(layer, x, g, 3)
    for array, analytic in [(x, grad_x)] + [(layer.params[k], grads[k]) for k in grads]:
        numeric = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            keep = array[index]
            array[index] = keep + 1e-6
            up = loss()
            array[index] = keep - 1e-6
            numeric[index] = (up - loss()) / 2e-6
            array[index] = keep
        error = np.abs(analytic - numeric).max() / max(np.abs(analytic).max() + np.abs(numeric).max(), 1e-12)
        assert error < 1e-6


def test_batch_slices_cover_the_batch_in_order():
    assert batch_slices(5, 3) == [slice(0, 1), slice(1, 3), slice(3, 5)]
    assert batch_slices(2, 4) == [slice(0, 1), slice(1, 2)]        # never an empty slice
    assert batch_slices(100, 1) == [slice(0, 100)]


def test_stages_follow_the_mode():
    model = build_model(CONV_NET)
    kinds = lambda: [(kind, [type(layer).__name__ for layer in model.layers[first:stop]])
                     for kind, first, stop in stages(model.layers)]
    assert kinds() == [("examples", ["Conv2D"]), ("sums", ["BatchNorm"]),
                       ("examples", ["ReLU", "MaxPool2D", "Flatten", "Linear", "Tanh"]),
                       ("whole", ["Dropout"]), ("examples", ["Linear"])]
    model.eval()                                     # BatchNorm and Dropout now treat each example apart
    assert kinds() == [("examples", [type(layer).__name__ for layer in model.layers])]


@pytest.mark.parametrize("name,arguments,shape", [(n, a, s) for n, cases in LAYER_CASES.items() for a, s in cases])
def test_every_layer_runs_on_slices_in_threads(name, arguments, shape):
    """Each layer alone in a BatchSplit of 3 threads (7 examples: slices of 1 and 2, taken by
    whichever thread comes first) gives the whole batch's output, dL/dx and dL/dparams."""
    whole, split = build_layer(name, arguments, True), build_layer(name, arguments, True)
    if not by_example(whole) and type(whole) is not BatchNorm:
        whole.eval(), split.eval()                               # Dropout: per example once it draws no mask
    rng = np.random.default_rng(1)
    x = away_from_kinks((7, *shape), rng)
    y = whole.forward(x)
    g = rng.normal(size=y.shape)
    runner = BatchSplit([split], 3)
    np.testing.assert_allclose(runner.forward(x), y, rtol=1e-12, atol=1e-12)
    if whole.training:
        np.testing.assert_allclose(runner.backward(g), whole.backward(g), rtol=1e-10, atol=1e-12)
        for key in whole.grads:
            np.testing.assert_allclose(split.grads[key], whole.grads[key], rtol=1e-10, atol=1e-12, err_msg=key)
        for key in whole.state:                                  # BatchNorm's running averages, moved once
            np.testing.assert_allclose(split.state[key], whole.state[key], rtol=1e-12)


class FailsOnNegative(NNModule):
    def forward(self, x):
        if (x < 0).any():
            raise ValueError("a negative input")
        return x


def test_an_error_in_any_thread_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(parallel, "BY_EXAMPLE", {FailsOnNegative})
    x = np.ones((8, 3))
    x[-1, 0] = -1                                                # only the last slice fails
    runner = BatchSplit([FailsOnNegative()], 2)
    with pytest.raises(ValueError, match="a negative input"):
        runner.forward(x)
    np.testing.assert_array_equal(runner.forward(np.ones((8, 3))), np.ones((8, 3)))   # and it goes on working


def test_only_networks_worth_it_are_split():
    mlp = [{"class": "Linear", "n_in": 4, "n_out": 3}, {"class": "BatchNorm", "num_features": 3},
           {"class": "ReLU"}, {"class": "Linear", "n_in": 3, "n_out": 2}]
    assert build_model(mlp).use_threads(4).split is None           # matrix products: BLAS's work
    assert build_model(CONV_NET).use_threads(4).split is not None
    assert build_model(CONV_NET).use_threads(1).split is None


def pair(threads):
    """The same float64 conv net (weights and Dropout's generator) twice: on one thread and on `threads`."""
    return [build_model(CONV_NET, np.float64, np.random.default_rng(3)).use_threads(t) for t in (1, threads)]


@pytest.mark.parametrize("threads", [2, 3])
def test_a_split_model_computes_what_one_thread_computes(threads):
    one, split = pair(threads)
    rng = np.random.default_rng(2)
    x, g = rng.normal(size=(7, 2, 6, 6)), rng.normal(size=(7, 4))      # 7 examples: unequal slices
    assert split.split is not None and one.split is None
    for step in range(2):                                               # replicas are made afresh each step
        np.testing.assert_allclose(split.forward(x), one.forward(x), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(split.backward(g), one.backward(g), rtol=1e-12, atol=1e-12)
        for name in one.grads:
            np.testing.assert_allclose(split.grads[name], one.grads[name], rtol=1e-12, atol=1e-12, err_msg=name)
    for name in one.state:                                              # running averages moved alike
        np.testing.assert_allclose(split.state[name], one.state[name], rtol=1e-12)
    one.eval(), split.eval()
    np.testing.assert_allclose(split.forward(x), one.forward(x), rtol=1e-12, atol=1e-12)


def test_a_split_model_agrees_with_central_differences():
    rng = np.random.default_rng(4)
    network = [{"class": "BatchNorm", "num_features": 2}] + CONV_NET[:1] + CONV_NET[2:7] + CONV_NET[8:]
    model = build_model(network, np.float64, rng).use_threads(2)          # (no Dropout, no BatchNorm after a bias)
    check_module(model, rng.normal(size=(5, 2, 6, 6)), rng, engine.get_backend("cpu"))


def test_a_split_model_skips_the_input_gradient_like_one_thread():
    one, split = pair(2)
    x = np.random.default_rng(5).normal(size=(4, 2, 6, 6))
    one.skip_input_grad(), split.skip_input_grad()
    one.forward(x), split.forward(x)
    g = np.ones((4, 4))
    assert one.backward(g) is None and split.backward(g) is None
    np.testing.assert_allclose(split.grads["0.weight"], one.grads["0.weight"], rtol=1e-12)


def conv_config(tmp_path, mnist_data_dir, name, **keys):
    return write_config(tmp_path, mnist_data_dir, name, **{"optimizer": {"name": "momentum"}, "lr": 0.05, **keys})


def test_training_on_threads_is_reproducible_and_close_to_one_thread(tmp_path, mnist_data_dir):
    for name, threads in (("a", 2), ("b", 2), ("one", 1)):
        assert main([conv_config(tmp_path, mnist_data_dir, name, threads=threads, num_epochs=1)]) == 0
    a, b, one = (saved_arrays(tmp_path / f"{name}.pkl") for name in ("a", "b", "one"))
    assert all(np.array_equal(a[k], b[k]) for k in a)                  # same threads: the same bits
    assert all(np.allclose(a[k], one[k], atol=1e-4) for k in a)        # other threads: rounding only
    assert any(not np.array_equal(a[k], one[k]) for k in a)            # (the split did run)


def test_resume_on_threads_gives_the_uninterrupted_weights(tmp_path, mnist_data_dir, monkeypatch):
    whole = conv_config(tmp_path, mnist_data_dir, "whole", threads=3)
    cut = conv_config(tmp_path, mnist_data_dir, "cut", threads=3)
    assert main([whole]) == 0
    assert interrupted_run(monkeypatch, [cut]) == 130
    assert main([cut, "--resume"]) == 0
    a, b = saved_arrays(tmp_path / "whole.pkl"), saved_arrays(tmp_path / "cut.pkl")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_threads_must_be_a_positive_integer(tmp_path, mnist_data_dir, capsys):
    assert main([conv_config(tmp_path, mnist_data_dir, "bad", threads=0)]) == 2
    assert capsys.readouterr().err == "error: threads: expected an integer >= 1, got 0\n"


class Overflows(NNModule):
    def forward(self, x):
        return x * np.float32(1e30)


def test_numpy_error_settings_hold_in_every_thread(monkeypatch):
    """The engine ignores overflow while it checks the loss itself (np.errstate); the pool's
    threads must too, or their warnings would come before the one error line."""
    monkeypatch.setattr(parallel, "BY_EXAMPLE", {Overflows})
    runner, x = BatchSplit([Overflows()], 2), np.full((8, 3), 1e30, np.float32)
    with np.errstate(over="ignore"), warnings.catch_warnings():
        warnings.simplefilter("error")                  # a warning in any thread raises
        assert np.isinf(runner.forward(x)).all()
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        runner.forward(x)


def test_a_diverging_split_network_ends_in_one_error_line(tmp_path, mnist_data_dir, capsys):
    config = conv_config(tmp_path, mnist_data_dir, "diverge", threads=2, num_epochs=1, clip_grad_norm=None,
                         optimizer={"name": "sgd"}, lr=1e30)
    assert main([config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training diverged") and err.count("\n") == 1, err


def test_resume_on_other_threads_says_so(tmp_path, mnist_data_dir, monkeypatch, capsys):
    cut = conv_config(tmp_path, mnist_data_dir, "cut", threads=3)
    assert interrupted_run(monkeypatch, [cut]) == 130
    capsys.readouterr()
    assert main([cut, "--resume", "--set", "threads=2"]) == 0
    assert "the run trained on 3 thread(s) and goes on with 2" in capsys.readouterr().err
