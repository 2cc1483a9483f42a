"""The weight direction: SAM and AWP against hand-written steps, composed with input policies."""

import keras
import numpy as np
import pytest

import keras_bidir as kb
from conftest import compile_classifier
from conftest import independent_gradients
from conftest import tiny_cnn
from keras_bidir import policies
from keras_bidir import weight_policies

# `make test` runs the tests marked `backends` on both backends (tests/README.md: which)

CLIP = {"clip_min": 0.0, "clip_max": 1.0}
EPSILON, LEARNING_RATE = 0.1, 0.1


def _problem(weight_policy, learning_rate=LEARNING_RATE):
    rng = np.random.default_rng(0)
    x = rng.random((32, 8)).astype("float32")
    y = rng.integers(0, 3, 32)
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(3)])
    model = kb.BidirectionalModel(base, policies.FGSM(EPSILON, **CLIP), weight_policy=weight_policy)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, base, x, y


def _hand_step(base, x, y, perturbation):
    """FGSM input, ascent v at it, descent gradient at θ + v, SGD step from θ (the backend's own autodiff)."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    weights = base.trainable_weights
    theta = [w.numpy() for w in weights]
    gx, _ = independent_gradients(lambda xt: loss_fn(y, base(xt)), x)
    x_adv = np.clip(x + EPSILON * np.sign(gx), 0.0, 1.0)
    _, g = independent_gradients(lambda xt: loss_fn(y, base(xt)), x_adv, weights)
    for w, t, v in zip(weights, theta, perturbation(theta, g)):
        w.assign(t + v)
    _, g_at_moved = independent_gradients(lambda xt: loss_fn(y, base(xt)), x_adv, weights)
    for w, t in zip(weights, theta):
        w.assign(t)
    return [t - LEARNING_RATE * d for t, d in zip(theta, g_at_moved)]


def _sam(rho):
    def perturbation(theta, g):
        norm = np.sqrt(sum(float((d.astype("float64") ** 2).sum()) for d in g))
        return [rho * d / norm for d in g]
    return perturbation


def _awp(gamma):
    def perturbation(theta, g):
        return [gamma * np.linalg.norm(t) * d / np.linalg.norm(d) if t.ndim >= 2 else 0 * t
                for t, d in zip(theta, g)]
    return perturbation


@pytest.mark.backends
@pytest.mark.parametrize("policy,hand", [(weight_policies.SAM(0.05), _sam(0.05)),
                                         (weight_policies.AWP(5e-3), _awp(5e-3)),
                                         (weight_policies.AWP(0.5), _awp(0.5))],
                         ids=["SAM", "AWP", "AWP-large"])
def test_one_step_equals_the_hand_written_step(policy, hand):
    model, base, x, y = _problem(policy)
    base(x[:1])
    expected = _hand_step(base, x, y, hand)
    model.train_on_batch(x, y)
    for got, want in zip(base.get_weights(), expected):
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.backends
@pytest.mark.parametrize("policy", [weight_policies.SAM(0.5), weight_policies.AWP(0.5)],
                         ids=["SAM", "AWP"])
def test_the_weight_perturbation_is_removed_exactly(policy):
    model, base, x, y = _problem(policy, learning_rate=0.0)
    base(x[:1])
    before = base.get_weights()
    model.train_on_batch(x, y)
    for got, want in zip(base.get_weights(), before):
        np.testing.assert_array_equal(got, want)  # bit for bit


@pytest.mark.parametrize("policy", [
    policies.PGD(0.1, steps=2, **CLIP),
    pytest.param(policies.TRADES(0.1, steps=2, **CLIP), marks=pytest.mark.backends),  # clean outputs
    policies.NFGSM(0.1, **CLIP),
    pytest.param(policies.FreeAdversarial(0.1, replays=2, **CLIP), marks=pytest.mark.backends)],  # replays
    ids=lambda p: type(p).__name__)
def test_weight_policies_compose_with_input_policies(policy, small_batch, tmp_path):
    x, y = small_batch
    weight_policy = weight_policies.SAM(0.05) if policy.replays > 1 else weight_policies.AWP(5e-3)
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policy, weight_policy=weight_policy))
    logs = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and logs["nonfinite_batches"][0] == 0
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert restored.weight_policy == weight_policy and restored.policy == policy


def test_freelb_gradient_accumulation_is_refused():
    with pytest.raises(ValueError, match="cannot be combined with FreeLB"):
        kb.BidirectionalModel(tiny_cnn(), policies.FreeLB(0.1, steps=2), weight_policy="sam")


def test_awp_warm_up_epochs_train_without_weight_perturbation(small_batch):
    x, y = small_batch
    model = compile_classifier(kb.BidirectionalModel(
        tiny_cnn(), policies.FGSM(0.1, **CLIP), weight_policy=weight_policies.AWP(warmup_epochs=1)))
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(float(model.weight_perturbation_scale.numpy())))
    model.fit(x, y, batch_size=32, epochs=2, verbose=0, callbacks=[record])
    assert seen == [0.0, 1.0]
    with pytest.raises(ValueError, match="Unknown weight policy"):
        kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1), weight_policy="sharpness")
