"""Augmentation: known transforms move pixels where they should, random ones keep shapes, range
and labels, repeat with a seed, and the engine applies them to training batches only."""
import pickle

import numpy as np
import pytest

import engine
from datasets.augment import affine, expand_by_shifts, random_affine
from main import main
from test_cli import run_error, write_config
from test_datasets import TINY_NET, write_npz


def batch(n=50, h=8, w=6, seed=0):
    return np.random.default_rng(seed).random((n, h * w), dtype=np.float32)


def moved(image, dy, dx):
    """image (H, W) moved dy rows down and dx columns right, zeros coming in."""
    h, w = image.shape
    out = np.zeros_like(image)
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0),
                                                                      max(-dx, 0):w - max(dx, 0)]
    return out


def test_a_whole_pixel_shift_moves_the_image_exactly():
    x = batch(3)
    out = affine(x, (8, 6), angle=np.zeros(3), factor=np.ones(3), dy=[3, 0, -1], dx=[-2, 1, 0])
    for image, result, (dy, dx) in zip(x, out, [(3, -2), (0, 1), (-1, 0)]):
        np.testing.assert_array_equal(result.reshape(8, 6), moved(image.reshape(8, 6), dy, dx))


def test_a_quarter_turn_is_np_rot90_and_a_zoom_spreads_from_the_centre():
    x = batch(2, 7, 7)
    turned = affine(x, (7, 7), angle=np.full(2, np.pi / 2), factor=np.ones(2), dy=[0, 0], dx=[0, 0])
    np.testing.assert_allclose(turned.reshape(2, 7, 7), np.rot90(x.reshape(2, 7, 7), axes=(1, 2)), atol=1e-6)
    dot = np.zeros((1, 81), np.float32)
    dot[0, 4 * 9 + 5] = 1                               # one pixel right of the centre (4, 4)
    zoomed = affine(dot, (9, 9), angle=np.zeros(1), factor=np.full(1, 2.0), dy=[0], dx=[0]).reshape(9, 9)
    expected = np.zeros((9, 9))                         # twice as far out, and twice as wide each way
    expected[3:6, 5:8] = np.outer([0.5, 1, 0.5], [0.5, 1, 0.5])
    np.testing.assert_array_equal(zoomed, expected)


def test_random_shifts_only_stay_whole_pixels_within_range():
    x = batch(60)
    out = random_affine(x, (8, 6), np.random.default_rng(1), shift=1)
    seen = set()
    for image, result in zip(x.reshape(-1, 8, 6), out.reshape(-1, 8, 6)):
        matches = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if np.array_equal(result, moved(image, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 9                               # every shift in [-1, 1]^2 was drawn


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_maps_keep_shape_type_and_range_and_repeat_with_a_seed(dtype):
    x = batch().astype(dtype)
    x[:, :10] = 1                                       # extremes, where interpolation could overshoot
    before = x.copy()
    args = dict(image_shape=(8, 6), shift=2, rotate=15, scale=0.2)
    a = random_affine(x, rng=np.random.default_rng(7), **args)
    b = random_affine(x, rng=np.random.default_rng(7), **args)
    c = random_affine(x, rng=np.random.default_rng(8), **args)
    assert a.shape == x.shape and a.dtype == dtype
    assert a.min() >= 0 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, x)
    np.testing.assert_array_equal(x, before)            # the input is left alone


def test_the_engine_augments_training_batches_only(tmp_path, capsys, monkeypatch):
    """Every augmented row is a training row (never a validation one), each training row is
    augmented once per epoch, `test` augments nothing, and the same seed gives the same weights."""
    calls = []

    def recording(x, *args, **kwargs):
        calls.append(x.copy())
        return random_affine(x, *args, **kwargs)

    monkeypatch.setattr(engine, "random_affine", recording)
    keys = dict(dataset="npz", dataset_args={"path": write_npz(tmp_path / "d.npz")}, network=TINY_NET,
                valid_size=10, batch_size=8, num_epochs=2, log_level=0, augment={"shift": 1, "rotate": 20})
    config = write_config(tmp_path, **keys)
    assert main([config]) == 0
    data = np.load(tmp_path / "d.npz")
    train = {row.tobytes() for row in (data["x_train"][:30].reshape(30, 64) / np.float32(255)).astype(np.float32)}
    rows = [row.tobytes() for x in calls for row in x]
    assert len(rows) == 2 * 30 and set(rows) == train
    first = pickle.loads((tmp_path / "model.pkl").read_bytes())["params"]
    calls.clear()
    assert main([config, "--task", "test"]) == 0 and calls == []
    assert main([config]) == 0
    again = pickle.loads((tmp_path / "model.pkl").read_bytes())["params"]
    assert all(np.array_equal(first[k], again[k]) for k in first)


def test_expanding_follows_each_image_by_its_four_one_pixel_shifts():
    """NNDL's expand_mnist.py: the image, then moved down, up, right and left, same label."""
    x, y = batch(4), np.array([2, 0, 1, 2])
    big_x, big_y = expand_by_shifts(x, y, (8, 6), 1)
    assert big_x.shape == (20, 48) and big_x.dtype == x.dtype
    np.testing.assert_array_equal(big_y, [2] * 5 + [0] * 5 + [1] * 5 + [2] * 5)
    for i, image in enumerate(x.reshape(4, 8, 6)):
        expected = [image] + [moved(image, dy, dx) for dy, dx in [(1, 0), (-1, 0), (0, 1), (0, -1)]]
        np.testing.assert_array_equal(big_x[5 * i:5 * i + 5].reshape(5, 8, 6), np.stack(expected))


def test_the_engine_expands_the_training_images_only(tmp_path, capsys):
    """30 training images become 150; the 10 validation images stay 10, and so do the test's."""
    keys = dict(dataset="npz", dataset_args={"path": write_npz(tmp_path / "d.npz")}, network=TINY_NET,
                valid_size=10, batch_size=8, num_epochs=1, expand=1)
    config = write_config(tmp_path, **keys)
    assert main([config]) == 0
    assert "training on 150 examples, validating on 10" in capsys.readouterr().out
    assert main([config, "--task", "test"]) == 0
    assert "/12" in capsys.readouterr().out                        # arrays() holds 12 test images


@pytest.mark.parametrize("augment,message", [
    ({"shift": -1}, "error: augment.shift: expected an integer >= 0, got -1"),
    ({"rotate": 200}, "error: augment.rotate: expected a number in [0, 180], got 200"),
    ({"scale": 0.8}, "error: augment.scale: expected a number in [0, 0.5], got 0.8"),
    ({"shfit": 2}, "error: augment.shfit: unknown key; did you mean 'shift'?"),
    (2, "error: augment: expected an object, got 2"),
])
def test_bad_augment_values_are_named(tmp_path, capsys, augment, message):
    assert run_error(capsys, [write_config(tmp_path, augment=augment)]).startswith(message)


def test_a_bad_expand_is_named(tmp_path, capsys):
    assert run_error(capsys, [write_config(tmp_path, expand=-1)]).startswith(
        "error: expand: expected an integer >= 0, got -1")
