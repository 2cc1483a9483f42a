"""APGD-T and Square against the exact robust accuracy of a linear classifier."""

import keras
import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import policies
from keras_bidir.evaluation import scores_under_attack


def _linear_classifier():
    (x, y), _ = kb.datasets.load_digits()
    x = x[:300].reshape(300, -1).astype("float32")
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y[:300], epochs=30, batch_size=64, verbose=0)
    return model, x, y[:300]


def exact_linf_robust(model, x, y, epsilon):
    """Per example: correct at every point of the ε-box within [0, 1] (closed form)."""
    w, b = (np.asarray(v, "float64") for v in model.layers[-1].get_weights())
    low, high = np.clip(x - epsilon, 0, 1), np.clip(x + epsilon, 0, 1)
    robust = np.ones(len(x), bool)
    for k in range(w.shape[1]):
        d = w[:, y] - w[:, [k]]  # (features, batch): z_y − z_k = d·x + (b_y − b_k)
        worst = np.minimum(d.T * low, d.T * high).sum(1) + b[y] - b[k]
        robust &= (k == y) | (worst > 0)
    return robust


@pytest.fixture(scope="module")
def linear():
    return _linear_classifier()


def test_apgd_targeted_reaches_the_exact_robust_accuracy(linear, epsilon=0.1):
    model, x, y = linear
    exact = exact_linf_robust(model, x, y, epsilon)
    attack = policies.APGDTargeted(epsilon, steps=50, targets=9, clip_min=0.0, clip_max=1.0)
    found = scores_under_attack(model, x, y, attack)
    assert 0.2 < exact.mean() < 0.9  # a radius where the question is open
    assert not np.any(exact & ~found)  # never breaks a provably robust example...
    assert np.sum(found != exact) <= 1  # ...and misses at most one breakable one


def test_square_gets_within_one_example_of_the_exact_robust_accuracy_without_gradients(linear):
    model, x, y = linear
    exact = exact_linf_robust(model, x, y, 0.05)
    found = scores_under_attack(model, x, y, policies.Square(0.05, queries=2000, clip_min=0.0,
                                                             clip_max=1.0))
    assert not np.any(exact & ~found)
    assert np.sum(found != exact) <= 1


def test_new_attacks_round_trip_and_refuse_what_they_cannot_do():
    for attack in (policies.Square(0.1, queries=100, p_init=0.5),
                   policies.APGDTargeted(0.1, steps=10, targets=3)):
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(attack))
        assert restored == attack
    with pytest.raises(ValueError, match="L∞ norm only"):
        policies.Square(0.1, norm="l2")
    with pytest.raises(ValueError, match="use `targets`"):
        policies.APGDTargeted(0.1, restarts=2)
