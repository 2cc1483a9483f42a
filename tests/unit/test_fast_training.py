"""Fast-training pieces against hand computations: one-cycle schedule, FGSM-PGI, MART, recipes."""

import keras
import numpy as np
import pytest

from keras_bidir import policies
from keras_bidir import recipes
from keras_bidir.policies.base import PerturbationContext
from keras_bidir.schedules import OneCycle


def test_one_cycle_rises_linearly_to_the_peak_then_falls_to_the_end():
    schedule = OneCycle(4e-3, total_steps=100, warmup_fraction=0.4, initial_learning_rate=1e-4)
    values = [float(schedule(step)) for step in (0, 20, 40, 70, 100, 150)]
    expected = [1e-4, 1e-4 + (4e-3 - 1e-4) * 0.5, 4e-3, 2e-3, 0.0, 0.0]
    np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-9)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(restored, OneCycle) and restored.get_config() == schedule.get_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"warmup_fraction": 1.0}, "warmup_fraction must lie in"),
    ({"final_learning_rate": 1.0}, "final_learning_rate must lie in"),
    ({"total_steps": 0}, "total_steps must be an integer"),
])
def test_one_cycle_refuses_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OneCycle(**{"peak_learning_rate": 1e-3, "total_steps": 10, **kwargs})


def _linear_context(w, mix):
    """Loss Σ x·w (gradient w everywhere) and logits x @ mix."""

    def objective(tensors, repeats=1):
        x = keras.ops.cast(tensors[0], "float32")
        return keras.ops.sum(x * w, axis=1), keras.ops.matmul(x, mix)

    return PerturbationContext(objective, keras.random.SeedGenerator(0))


def test_prior_guided_fgsm_steps_from_the_carried_perturbation_and_carries_the_new_one():
    rng = np.random.default_rng(0)
    x = rng.random((8, 6)).astype("float32")
    w = rng.normal(size=(6,)).astype("float32")
    mix = rng.normal(size=(6, 3)).astype("float32")
    previous = rng.uniform(-0.3, 0.3, (8, 6)).astype("float32")  # partly outside the ε-ball
    epsilon, step, lam = 0.1, 0.05, 10.0
    policy = policies.PriorGuidedFGSM(epsilon, step_size=step, regularization=lam,
                                      clip_min=0.0, clip_max=1.0)
    context = _linear_context(w, mix)
    adversarial, state = policy.generate(context, [keras.ops.convert_to_tensor(x)], [previous])
    start = np.clip(x + np.clip(previous, -epsilon, epsilon), 0, 1)
    expected = np.clip(x + np.clip(start + step * np.sign(w) - x, -epsilon, epsilon), 0, 1)
    got = keras.ops.convert_to_numpy(adversarial[0])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(state[0]), expected - x, atol=1e-6)
    # The regulariser: λ · mean over the logits of (f(x + δ) − f(x + δ_init))².
    outputs = keras.ops.matmul(adversarial[0], mix)
    regularizer = keras.ops.convert_to_numpy(policy.regularizer(context, outputs))
    np.testing.assert_allclose(regularizer, lam * np.mean((got @ mix - start @ mix) ** 2, axis=1),
                               rtol=1e-5)


def test_prior_guided_fgsm_momentum_carries_the_normalised_direction():
    rng = np.random.default_rng(1)
    x = rng.random((4, 5)).astype("float32")
    w = rng.normal(size=(5,)).astype("float32")
    carried = rng.normal(size=(4, 5)).astype("float32") * 3
    epsilon, mu = 0.1, 0.3
    policy = policies.PriorGuidedFGSM(epsilon, momentum=mu, clip_min=0.0, clip_max=1.0)
    assert policy.state_shapes([(4, 5)]) == [(4, 5), (4, 5)]
    zeros = np.zeros_like(x)
    adversarial, state = policy.generate(_linear_context(w, np.eye(5, 3, dtype="float32")),
                                         [keras.ops.convert_to_tensor(x)], [zeros, carried])
    direction = w / np.mean(np.abs(w)) + mu * carried
    np.testing.assert_allclose(keras.ops.convert_to_numpy(state[1]), direction, rtol=1e-5)
    expected = np.clip(x + epsilon * np.sign(direction), 0, 1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(adversarial[0]), expected, atol=1e-6)


def _mart_reference(y, clean_logits, adversarial_logits, beta):
    """MART's loss as the reference code writes it, in NumPy."""
    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = softmax(clean_logits), softmax(adversarial_logits)
    rows = np.arange(len(y))
    ranked = np.argsort(q, axis=1)
    other = np.where(ranked[:, -1] == y, ranked[:, -2], ranked[:, -1])
    bce = -np.log(q[rows, y]) - np.log(1.0001 - q[rows, other] + 1e-12)
    kl = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    return bce + beta * kl * (1.0000001 - p[rows, y])


def test_mart_loss_matches_the_reference_formula():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, 16)
    clean, adversarial = rng.normal(size=(16, 4)) * 2, rng.normal(size=(16, 4)) * 2
    policy = policies.MART(0.1, beta=5.0)
    got = policy.adversarial_loss(y, clean.astype("float32"), adversarial.astype("float32"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                               _mart_reference(y, clean, adversarial, 5.0), rtol=1e-4)


def test_mart_reads_a_single_binary_logit_as_two_classes():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 8)
    z_clean, z_adv = rng.normal(size=(8, 1)), rng.normal(size=(8, 1))
    policy = policies.MART(0.1, beta=6.0)
    got = policy.adversarial_loss(y.astype("float32"), z_clean.astype("float32"),
                                  z_adv.astype("float32"))
    two = lambda z: np.concatenate([np.zeros_like(z), z], axis=1)  # noqa: E731
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got),
                               _mart_reference(y, two(z_clean), two(z_adv), 6.0), rtol=1e-4)


def test_recipes_pick_the_best_measured_point_within_the_budget():
    fast = recipes.fast(0.3, clip_min=0.0, clip_max=1.0, epochs=20)
    strong = recipes.strong(0.3, clip_min=0.0, clip_max=1.0, epochs=20)
    assert fast.expected_cost <= 1.5 < strong.expected_cost <= 3.0
    for recipe in (fast, strong):
        point = next(p for p in recipes.FRONTIER if p.name == recipe.name)
        assert recipe.policy.epsilon == 0.3 and recipe.policy.clip_max == 1.0
        assert recipe.epochs == max(1, round(20 * point.epochs_factor))
    assert recipes.for_budget(0.3, 100.0).name == recipes.FRONTIER[-1].name
    with pytest.raises(ValueError, match="No measured recipe trains within 0.5"):
        recipes.for_budget(0.3, 0.5)


def test_a_recipe_warms_epsilon_up_over_its_fraction_of_the_steps():
    recipe = recipes.fast(0.3, clip_min=0.0, clip_max=1.0, epochs=30)
    (schedule,) = recipe.callbacks(steps_per_epoch=32)
    assert schedule.unit == "step"
    assert schedule.ramp == round(recipe.epsilon_ramp * 32 * recipe.epochs) > 0
    assert schedule.scale_at(0) < 0.2 and schedule.scale_at(schedule.ramp) == 1.0
    with pytest.raises(ValueError, match="steps_per_epoch"):
        recipe.callbacks(steps_per_epoch=0)
