import math

import keras
import numpy as np
import pytest

from keras_bidir import constraints
from conftest import numpy_norm


@pytest.mark.parametrize("spelling,expected", [
    ("linf", "linf"), ("Linf", "linf"), ("inf", "linf"), (math.inf, "linf"), (np.inf, "linf"),
    ("l2", "l2"), ("L2", "l2"), (2, "l2"),
])
def test_standardize_norm(spelling, expected):
    assert constraints.standardize_norm(spelling) == expected


@pytest.mark.parametrize("bad", ["l1", 1, 0, "foo", None, True])
def test_unknown_norm_is_rejected(bad):
    with pytest.raises(ValueError, match="Unsupported norm"):
        constraints.standardize_norm(bad)


def test_per_example_norm_matches_numpy():
    x = np.random.default_rng(0).normal(size=(5, 3, 4)).astype("float32")
    for norm in constraints.NORMS:
        got = keras.ops.convert_to_numpy(constraints.per_example_norm(x, norm))
        np.testing.assert_allclose(got, numpy_norm(x, norm), rtol=1e-5)


@pytest.mark.parametrize("norm", constraints.NORMS)
def test_project_is_inside_ball_and_identity_inside(norm):
    rng = np.random.default_rng(1)
    big = rng.normal(size=(16, 8, 8, 1)).astype("float32")
    projected = keras.ops.convert_to_numpy(constraints.project(big, 0.3, norm))
    assert (numpy_norm(projected, norm) <= 0.3 + 1e-6).all()
    small = big / numpy_norm(big, norm).reshape(-1, 1, 1, 1) * 0.1
    kept = keras.ops.convert_to_numpy(constraints.project(small, 0.3, norm))
    np.testing.assert_allclose(kept, small, rtol=1e-5, atol=1e-7)


def test_l2_projection_keeps_direction():
    delta = np.array([[3.0, 4.0]], dtype="float32")
    projected = keras.ops.convert_to_numpy(constraints.project(delta, 1.0, "l2"))
    np.testing.assert_allclose(projected, [[0.6, 0.8]], rtol=1e-6)


@pytest.mark.parametrize("norm", constraints.NORMS)
def test_random_in_ball(norm):
    sample = keras.ops.convert_to_numpy(
        constraints.random_in_ball((256, 4, 4, 1), 0.5, norm, "float32", seed=3)
    )
    norms = numpy_norm(sample, norm)
    assert (norms <= 0.5 + 1e-5).all()
    assert norms.mean() > 0.25  # spread through the ball, not collapsed at 0


def test_ascent_direction():
    g = np.array([[3.0, -4.0], [0.0, 0.0]], dtype="float32")
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(constraints.ascent_direction(g, "linf")), [[1, -1], [0, 0]]
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(constraints.ascent_direction(g, "l2")),
        [[0.6, -0.8], [0.0, 0.0]],
        atol=1e-6,
    )


def test_clip_to_range_open_sides():
    x = np.array([-1.0, 0.5, 2.0], dtype="float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(constraints.clip_to_range(x, 0.0, 1.0)), [0, 0.5, 1])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(constraints.clip_to_range(x, None, 1.0)), [-1, 0.5, 1])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(constraints.clip_to_range(x)), x)
