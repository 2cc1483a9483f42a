"""Catastrophic overfitting reproduced on real digits, caught by the guard."""

import keras
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


def test_guard_restores_weights_on_collapse_and_can_stop(digits, collapse):
    (x_train, y_train), _ = digits
    _, guard, model = collapse
    assert len(guard.events) == 1 and guard.events[0]["action"].endswith("stopped training")
    # The restored weights are those of the last good check: PGD accuracy is back up.
    accuracy = evaluation.robust_accuracy(model, x_train[:256], y_train[:256], guard.attack)
    assert accuracy >= guard.events[0]["pgd_accuracy"] + 0.05
