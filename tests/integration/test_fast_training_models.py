"""The fast-training policies and recipes on real models (one training step each)."""

import keras
import numpy as np
import pytest

import keras_bidir as kb
from conftest import compile_classifier, independent_gradients, tiny_cnn
from keras_bidir import policies
from keras_bidir import recipes
from keras_bidir.schedules import OneCycle

# `make test` runs the tests marked `backends` on both backends (tests/README.md: which)


@pytest.mark.backends
def test_mart_trains_without_a_clean_loss_term_but_with_clean_outputs(small_batch):
    x, y = small_batch
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.MART(0.1, steps=2)))
    logs = model.train_on_batch(x, y, return_dict=True)
    assert model.clean_weight == 0.0 and "clean_loss" not in logs
    assert np.isfinite(logs["adv_loss"]) and logs["adv_loss"] > 0


def test_a_recipe_builds_the_model_and_its_one_cycle_optimizer(small_batch):
    recipe = recipes.fast(0.1, clip_min=0.0, clip_max=1.0)
    model = recipe.wrap(tiny_cnn(), seed=1)
    assert isinstance(model, kb.BidirectionalModel) and model.policy == recipe.policy
    schedule = recipe.learning_rate(steps_per_epoch=11)
    assert isinstance(schedule, OneCycle)
    assert schedule.total_steps == 11 * recipe.epochs * recipe.policy.replays
    assert schedule.peak_learning_rate == recipe.peak_learning_rate
    assert isinstance(recipe.optimizer(steps_per_epoch=11), keras.optimizers.Adam)
    x, y = small_batch
    model.compile(optimizer=recipe.optimizer(11),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert np.isfinite(model.train_on_batch(x, y, return_dict=True)["adv_loss"])


def _frozen_model(policy):
    """A dense digits model with learning rate 0, so that the input gradients are reproducible."""
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(10)])
    model = kb.BidirectionalModel(base, policy, seed=3)
    model.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _per_example_gradients(base, x, y):
    """∇ₓ of each example's own cross-entropy, computed independently of keras_bidir."""
    gradient, _ = independent_gradients(lambda xt: keras.ops.sum(
        keras.losses.sparse_categorical_crossentropy(y, base(xt), from_logits=True)), x)
    return gradient


def _digits_64():
    (x, y), _ = kb.datasets.load_digits()
    return x[:64].reshape(64, -1), y[:64]


def _next_prior_perturbation(base, x, y, delta, epsilon, step):
    start = np.clip(x + delta, 0, 1)
    g = _per_example_gradients(base, start, y)
    return np.clip(x + np.clip(start + step * np.sign(g) - x, -epsilon, epsilon), 0, 1) - x


@pytest.mark.parametrize("data", ["arrays", pytest.param("dataset", marks=pytest.mark.backends)])
def test_example_prior_follows_each_example_through_shuffled_epochs(data):
    import tensorflow as tf

    x, y = _digits_64()
    policy = policies.PriorGuidedFGSM(0.1, step_size=0.05, prior="example", num_examples=64,
                                      clip_min=0.0, clip_max=1.0)
    model = _frozen_model(policy)

    def one_epoch():
        if data == "arrays":
            model.fit(x, y, batch_size=16, epochs=1, shuffle=True, verbose=0)
        else:
            dataset = kb.example_index.with_example_index(tf.data.Dataset.from_tensor_slices((x, y)))
            model.fit(dataset.shuffle(64).batch(16), epochs=1, verbose=0)
        return [np.array(v) for v in model.step_state.example_variables]

    delta, seen = one_epoch()
    assert delta.shape == (64, 64) and np.all(seen == 1)  # every example visited once
    assert np.abs(delta).max() <= 0.1 + 1e-6 and np.abs(delta).max() > 0.05
    # Epoch 2, in another order: each example steps on from ITS OWN remembered perturbation.
    expected = _next_prior_perturbation(model.base_model, x, y, delta, 0.1, 0.05)
    np.testing.assert_allclose(one_epoch()[0], expected, atol=1e-5)


@pytest.mark.backends
def test_atas_steps_each_example_by_its_running_gradient_norm():
    x, y = _digits_64()
    policy = policies.ATAS(0.1, c=1.0, beta=0.5, clip_min=0.0, clip_max=1.0)
    model = _frozen_model(policy)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=True, verbose=0)
    delta, mean, seen = [np.array(v) for v in model.step_state.example_variables]
    assert np.all(seen == 1) and np.all(mean > 0)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=True, verbose=0)
    start = np.clip(x + delta, 0, 1)
    g = _per_example_gradients(model.base_model, start, y)
    expected_mean = 0.5 * mean + 0.5 * np.sum(g ** 2, axis=1)
    steps = np.clip(0.2 / (1 + np.sqrt(expected_mean) / 1.0), 0.05, 0.175)[:, None]
    expected = np.clip(x + np.clip(start + steps * np.sign(g) - x, -0.1, 0.1), 0, 1) - x
    delta2, mean2, _ = [np.array(v) for v in model.step_state.example_variables]
    np.testing.assert_allclose(mean2, expected_mean, rtol=1e-4)
    np.testing.assert_allclose(delta2, expected, atol=1e-5)


@pytest.mark.backends
def test_per_example_memory_is_saved_and_needs_indexed_datasets(tmp_path):
    import tensorflow as tf

    x, y = _digits_64()
    model = _frozen_model(policies.ATAS(0.1, clip_min=0.0, clip_max=1.0))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "atas.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    for a, b in zip(model.step_state.example_variables, loaded.step_state.example_variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))
    fresh = _frozen_model(policies.ATAS(0.1, clip_min=0.0, clip_max=1.0))
    plain = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    with pytest.raises(ValueError, match="with_example_index"):
        fresh.fit(plain, epochs=1, verbose=0)
    indexed = kb.example_index.with_example_index(tf.data.Dataset.from_tensor_slices((x, y)))
    with pytest.raises(ValueError, match="needs num_examples"):
        fresh.fit(indexed.batch(16), epochs=1, verbose=0)


@pytest.mark.parametrize("shuffled", [pytest.param(True, marks=pytest.mark.backends), False],
                         ids=["shuffled", "in_order"])
def test_a_per_example_memory_smaller_than_the_data_is_refused_with_both_numbers(digits,
                                                                                shuffled):
    # Before: JAX trained on silently (500 examples never got a memory row); TensorFlow
    # failed with a graph error from inside the step.
    import tensorflow as tf

    (x, y), _ = digits
    dataset = kb.example_index.with_example_index(tf.data.Dataset.from_tensor_slices(
        (x[:600].reshape(600, 64), y[:600])))
    dataset = dataset.shuffle(600, seed=0) if shuffled else dataset
    model = _frozen_model(policies.PriorGuidedFGSM(0.1, prior="example", num_examples=100,
                                                   clip_min=0.0, clip_max=1.0))
    with pytest.raises(ValueError, match=r"memory of 100 examples \(num_examples=100\), but "
                                         r"the data holds example index \d+, so at least"):
        model.fit(dataset.batch(32), epochs=1, verbose=0)
    # The memory is sized by the data: with the right count it trains.
    right = _frozen_model(policies.PriorGuidedFGSM(0.1, prior="example", num_examples=600,
                                                   clip_min=0.0, clip_max=1.0))
    right.fit(dataset.batch(32), epochs=1, verbose=0)
    assert np.all(np.asarray(right.step_state.example_variables[1]) == 1)  # every example got its row
