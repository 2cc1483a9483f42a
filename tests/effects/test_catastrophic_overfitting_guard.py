"""Catastrophic overfitting reproduced on real digits, caught by the guard."""

import keras

import keras_bidir as kb
from keras_bidir import callbacks, evaluation, policies
from keras_bidir.apps.demo import _compile, digits_cnn

CLIP = {"clip_min": 0.0, "clip_max": 1.0}
# The collapse is a property of one run, not of every seed. TensorFlow reproduces it with
# seed 0; JAX draws other initial weights and random numbers from the same seeds, and
# reproduces it with seeds 3 and 6 of 0-6 (measured; 6 drops furthest: 48 % → 32 % PGD).
SEED = 6 if keras.backend.backend() == "jax" else 0


def _train(digits, guard=None):
    (x_train, y_train), _ = digits
    # FGSM from a zero start at a large ε with a high learning rate: PGD accuracy
    # rises, then collapses while FGSM accuracy keeps climbing (Wong et al. 2020).
    # Reproduced with SEED; other seeds may diverge instead at this learning rate.
    model = kb.BidirectionalModel(digits_cnn(SEED), policies.FGSM(0.25, **CLIP), seed=SEED)
    _compile(model, 1e-2)
    model.fit(x_train, y_train, batch_size=64, epochs=25, verbose=0,
              callbacks=[guard] if guard else [])
    return model


def test_guard_catches_catastrophic_overfitting_and_ends_more_robust(digits):
    (x_train, y_train), (x_test, y_test) = digits
    attack = policies.PGD(0.25, steps=10, **CLIP)
    unguarded = _train(digits)
    guard = callbacks.CatastrophicOverfittingGuard(x_train[:256], y_train[:256], min_drop=0.1,
                                                   ratio=0.8, remedy="pgd", verbose=0)
    guarded = _train(digits, guard)

    assert guard.events, "the collapse was not reproduced / not detected"
    event = guard.events[0]
    assert event["best_pgd_accuracy"] - event["pgd_accuracy"] >= 0.1
    assert "switched policy FGSM" in event["action"]
    assert isinstance(guarded.policy, policies.PGD)

    robust_unguarded = evaluation.robust_accuracy(unguarded, x_test, y_test, attack)
    robust_guarded = evaluation.robust_accuracy(guarded, x_test, y_test, attack)
    assert robust_guarded > robust_unguarded + 0.2, (robust_guarded, robust_unguarded)


def test_guard_restores_weights_on_collapse_and_can_stop(digits):
    (x_train, y_train), _ = digits
    guard = callbacks.CatastrophicOverfittingGuard(x_train[:256], y_train[:256], min_drop=0.1,
                                                   ratio=0.8, remedy="stop", verbose=0)
    model = _train(digits, guard)
    assert len(guard.events) == 1 and guard.events[0]["action"].endswith("stopped training")
    # The restored weights are those of the last good check: PGD accuracy is back up.
    accuracy = evaluation.robust_accuracy(model, x_train[:256], y_train[:256], guard.attack)
    assert accuracy >= guard.events[0]["pgd_accuracy"] + 0.05
