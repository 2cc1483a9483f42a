"""Catastrophic overfitting reproduced on real digits, caught by the guard.

Reproducing a real collapse takes two 25-epoch runs per seed (`make test-all`, marker
`slow`); `make test` checks the guard's mechanics on a collapse made by hand.
"""

import keras
import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import callbacks, evaluation, policies
from keras_bidir_cli.demo import _compile, digits_cnn

CLIP = {"clip_min": 0.0, "clip_max": 1.0}
# The collapse is a property of one run, not of every seed, and which seeds collapse moves
# with the library versions (their initialisers and random streams): with Keras 3.15.1,
# TensorFlow 2.21 it was seed 3 of 0-5 on TensorFlow (seed 0 with the versions before),
# seeds 3 and 6 of 0-6 on JAX. The fixture takes the first candidate whose run collapses.
CANDIDATE_SEEDS = (6, 3, 0, 1, 2) if keras.backend.backend() == "jax" else (3, 0, 4, 6, 7)


def _train(digits, guard=None, seed=0):
    (x_train, y_train), _ = digits
    # FGSM from a zero start at a large ε with a high learning rate: PGD accuracy
    # rises, then collapses while FGSM accuracy keeps climbing (Wong et al. 2020).
    # Reproduced with SEED; other seeds may diverge instead at this learning rate.
    model = kb.BidirectionalModel(digits_cnn(seed), policies.FGSM(0.25, **CLIP), seed=seed)
    _compile(model, 1e-2)
    model.fit(x_train, y_train, batch_size=64, epochs=25, verbose=0,
              callbacks=[guard] if guard else [])
    return model


def _guard(digits, remedy):
    (x_train, y_train), _ = digits
    return callbacks.CatastrophicOverfittingGuard(x_train[:256], y_train[:256], min_drop=0.1,
                                                  ratio=0.8, remedy=remedy, verbose=0)


@pytest.fixture(scope="module")
def collapse(digits):
    """The first candidate seed whose run collapses, with its guard (remedy "stop") and model.

    Until the guard acts, a guarded run is the unguarded run (the guard only
    evaluates), so a stopped run tells which seed collapses.
    """
    for seed in CANDIDATE_SEEDS:
        guard = _guard(digits, "stop")
        model = _train(digits, guard, seed)
        if guard.events:
            return seed, guard, model
    pytest.fail(f"No seed of {CANDIDATE_SEEDS} reproduced catastrophic overfitting with these "
                "library versions: add seeds to CANDIDATE_SEEDS.")


@pytest.mark.slow
def test_guard_catches_catastrophic_overfitting_and_ends_more_robust(digits, collapse):
    _, (x_test, y_test) = digits
    seed = collapse[0]
    attack = policies.PGD(0.25, steps=10, **CLIP)
    unguarded = _train(digits, seed=seed)
    guard = _guard(digits, "pgd")
    guarded = _train(digits, guard, seed)

    assert guard.events, "the collapse was not reproduced / not detected"
    event = guard.events[0]
    assert event["best_pgd_accuracy"] - event["pgd_accuracy"] >= 0.1
    assert "switched policy FGSM" in event["action"]
    assert isinstance(guarded.policy, policies.PGD)

    robust_unguarded = evaluation.robust_accuracy(unguarded, x_test, y_test, attack)
    robust_guarded = evaluation.robust_accuracy(guarded, x_test, y_test, attack)
    assert robust_guarded > robust_unguarded + 0.2, (robust_guarded, robust_unguarded)


@pytest.mark.slow
def test_guard_restores_weights_on_collapse_and_can_stop(digits, collapse):
    (x_train, y_train), _ = digits
    _, guard, model = collapse
    assert len(guard.events) == 1 and guard.events[0]["action"].endswith("stopped training")
    # The restored weights are those of the last good check: PGD accuracy is back up.
    accuracy = evaluation.robust_accuracy(model, x_train[:256], y_train[:256], guard.attack)
    assert accuracy >= guard.events[0]["pgd_accuracy"] + 0.05


class _Collapse(keras.callbacks.Callback):
    """Makes the model answer class 0 whatever the input at the end of epoch `epoch`."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel, bias = self.model.base_model.layers[-1].weights
            kernel.assign(np.zeros(kernel.shape, "float32"))
            bias.assign(np.eye(bias.shape[0], dtype="float32")[0] * 10.0)


class _Weights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.by_epoch = {}

    def on_epoch_end(self, epoch, logs=None):
        self.by_epoch[epoch] = [v.numpy().copy() for v in self.model.base_model.weights]


@pytest.mark.parametrize("remedy", ["stop", "pgd"])
def test_guard_detects_a_collapse_restores_the_last_good_weights_and_acts(digits, remedy):
    # The fast twin of the two slow tests above: the collapse is made by hand at epoch 3.
    from conftest import compile_classifier, tiny_cnn

    (x_train, y_train), _ = digits
    x, y = x_train[:256], y_train[:256]
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(0), policies.FGSM(0.05, **CLIP),
                                                     seed=0), optimizer=keras.optimizers.Adam(3e-3))
    guard = callbacks.CatastrophicOverfittingGuard(x[:128], y[:128], min_drop=0.1, ratio=0.8,
                                                   remedy=remedy, verbose=0)
    weights = _Weights()
    history = model.fit(x, y, batch_size=64, epochs=5, verbose=0,
                        callbacks=[_Collapse(epoch=2), guard, weights])
    assert len(guard.events) == 1, guard.events
    event = guard.events[0]
    assert event["epoch"] == 2 and event["best_pgd_accuracy"] - event["pgd_accuracy"] >= 0.1
    assert event["pgd_accuracy"] <= 0.2  # one class for every input
    restored = [v.numpy() for v in model.base_model.weights]
    if remedy == "stop":
        assert len(history.history["loss"]) == 3 and event["action"].endswith("stopped training")
        # The weights of the last good check (the end of epoch 2), not the collapsed ones.
        for good, now in zip(weights.by_epoch[1], restored):
            np.testing.assert_array_equal(good, now)
    else:
        assert "switched policy FGSM" in event["action"]
        assert isinstance(model.policy, policies.PGD) and len(history.history["loss"]) == 5
        accuracy = evaluation.robust_accuracy(model, x[:128], y[:128], guard.attack)
        assert accuracy >= event["best_pgd_accuracy"] - 0.1  # trained on from the good weights
