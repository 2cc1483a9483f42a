import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_bidir import datasets  # noqa: E402


@pytest.fixture(scope="session")
def digits():
    """The bundled UCI digits, protocol split."""
    return datasets.load_digits()


@pytest.fixture
def small_batch(digits):
    (x_train, y_train), _ = digits
    return x_train[:64], y_train[:64]


def tiny_cnn(seed=0, softmax=False):
    """A small digits classifier (logits unless softmax=True)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(10, activation="softmax" if softmax else None),
        ]
    )


def compile_classifier(model, optimizer="adam", **kwargs):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


@pytest.fixture(scope="session")
def trained_plain(digits):
    """A plainly trained tiny CNN (shared by tests that only read it)."""
    (x_train, y_train), _ = digits
    model = compile_classifier(tiny_cnn(0))
    model.fit(x_train, y_train, batch_size=64, epochs=8, verbose=0)
    return model


def numpy_norm(delta, norm):
    flat = np.asarray(delta, dtype="float64").reshape(len(delta), -1)
    if norm == "linf":
        return np.abs(flat).max(axis=1)
    return np.sqrt((flat**2).sum(axis=1))
