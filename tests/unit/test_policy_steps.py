import keras
import numpy as np
import pytest

from keras_bidir import policies
from conftest import independent_gradients, numpy_norm, tiny_cnn

pytestmark = pytest.mark.backends  # `make test` runs these on both backends

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


def all_policies(norm, epsilon=0.2):
    return [
        policies.FGSM(epsilon, norm=norm, **CLIP),
        policies.RandomFGSM(epsilon, norm=norm, **CLIP),
        policies.PGD(epsilon, steps=3, restarts=2, norm=norm, **CLIP),
        policies.PGD(epsilon, steps=2, random_start=False, norm=norm, **CLIP),
        policies.FreeAdversarial(epsilon, replays=3, norm=norm, **CLIP),
        policies.GaussianNoise(0.3, epsilon=epsilon, **CLIP),
    ]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_policy_stays_in_ball_and_range(norm, small_batch):
    x, y = small_batch
    model = tiny_cnn()
    for policy in all_policies(norm):
        x_adv = keras.ops.convert_to_numpy(policy.perturb(model, x, y, seed=1))
        delta = x_adv - x
        ball = "linf" if isinstance(policy, policies.GaussianNoise) else norm
        assert (numpy_norm(delta, ball) <= 0.2 + 1e-5).all(), policy
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0, policy
        assert np.isfinite(x_adv).all()
        assert np.abs(delta).max() > 0, f"{policy} did not perturb"


def test_fgsm_matches_independent_gradient(small_batch):
    x, y = small_batch
    model = tiny_cnn()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    gradient, _ = independent_gradients(lambda xt: loss_fn(y, model(xt, training=False)), x)
    expected = np.clip(x + 0.1 * np.sign(gradient), 0, 1)
    got = keras.ops.convert_to_numpy(policies.FGSM(0.1, **CLIP).perturb(model, x, y))
    np.testing.assert_allclose(got, expected, atol=1e-6)


def _loss(model, x, y):
    fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return float(fn(y, model(x, training=False)))


def test_direction_minus_one_descends_the_loss(small_batch):
    x, y = small_batch
    model = tiny_cnn()
    clean = _loss(model, x, y)
    up = policies.PGD(0.1, steps=5, **CLIP).perturb(model, x, y)
    down = policies.PGD(0.1, steps=5, direction=-1, **CLIP).perturb(model, x, y)
    assert _loss(model, up, y) > clean > _loss(model, down, y)


def test_pgd_restarts_never_worse_than_one_run(small_batch):
    x, y = small_batch
    model = tiny_cnn()
    one = policies.PGD(0.1, steps=3, restarts=1, seed=5, **CLIP)
    three = policies.PGD(0.1, steps=3, restarts=3, seed=5, **CLIP)
    per_example = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    loss_one = np.asarray(per_example(y, model(one.perturb(model, x, y), training=False)))
    loss_three = np.asarray(per_example(y, model(three.perturb(model, x, y), training=False)))
    # Same seed: the first restart of `three` is `one`; the best of three can only be higher.
    assert (loss_three >= loss_one - 1e-5).all()


def test_perturb_leaves_integer_inputs_untouched():
    image = keras.Input((4,), name="image")
    flag = keras.Input((1,), name="flag", dtype="int32")
    merged = keras.layers.Concatenate()([image, keras.ops.cast(flag, "float32")])
    model = keras.Model({"image": image, "flag": flag}, keras.layers.Dense(3)(merged))
    x = {"image": np.random.rand(8, 4).astype("float32"), "flag": np.arange(8).reshape(8, 1).astype("int32")}
    y = np.arange(8) % 3
    adv = policies.FGSM(0.1).perturb(model, x, y)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(adv["flag"]), x["flag"])
    assert np.abs(keras.ops.convert_to_numpy(adv["image"]) - x["image"]).max() == pytest.approx(0.1, rel=1e-5)


@pytest.mark.parametrize("policy", all_policies("linf") + all_policies("l2"), ids=repr)
def test_policy_serialization_round_trip(policy):
    config = keras.saving.serialize_keras_object(policy)
    restored = keras.saving.deserialize_keras_object(config)
    assert restored == policy and restored is not policy
    assert policies.get(config) == policy


@pytest.mark.parametrize("make,message", [
    (lambda: policies.FGSM(0.0), "epsilon must be finite and > 0"),
    (lambda: policies.FGSM(-0.1), "epsilon must be finite and > 0"),
    (lambda: policies.PGD(float("nan")), "epsilon must be finite and > 0"),
    (lambda: policies.PGD(float("inf")), "epsilon must be finite and > 0"),
    (lambda: policies.PGD("0.1"), "epsilon must be a positive number"),
    (lambda: policies.PGD(0.1, step_size=0), "step_size must be finite and > 0"),
    (lambda: policies.PGD(0.1, steps=0), "steps must be an integer >= 1"),
    (lambda: policies.PGD(0.1, restarts=0), "restarts must be an integer >= 1"),
    (lambda: policies.FreeAdversarial(0.1, replays=0), "replays must be an integer >= 1"),
    (lambda: policies.RandomFGSM(0.1, step_size=-1), "step_size must be finite and > 0"),
    (lambda: policies.GaussianNoise(0), "stddev must be finite and > 0"),
    (lambda: policies.FGSM(0.1, clip_min=1.0, clip_max=0.0), "clip_min .* must be smaller than clip_max"),
    (lambda: policies.FGSM(0.1, clip_min=0.5, clip_max=0.5), "must be smaller than clip_max"),
    (lambda: policies.FGSM(0.1, norm="l1"), "Unsupported norm"),
    (lambda: policies.FGSM(0.1, direction=0), "direction must be"),
    (lambda: policies.get("pgdd"), "Unknown policy 'pgdd'. Known policies: apgd, atas, fgsm"),
])
def test_bad_configuration_is_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_gradient_policy_without_labels_is_a_clear_error(small_batch):
    x, _ = small_batch
    with pytest.raises(ValueError, match="needs the labels"):
        policies.PGD(0.1).perturb(tiny_cnn(), x)


def test_defaults_follow_the_papers():
    assert policies.RandomFGSM(0.2).step_size == pytest.approx(0.25)  # 1.25·ε
    assert policies.PGD(0.2, steps=20).step_size == pytest.approx(0.025)  # 2.5·ε/steps
    assert policies.FreeAdversarial(0.2).step_size == pytest.approx(0.2)  # ε


def test_row_helpers_of_the_old_memory_protocol_say_what_changed():
    from keras_bidir import example_index

    with pytest.raises(TypeError, match="reaches generate\\(\\) as the batch's rows"):
        example_index.gather_rows(np.zeros((4, 2)), [0])
    with pytest.raises(TypeError, match="without gather_rows / scatter_rows"):
        example_index.scatter_rows(np.zeros((4, 2)), [0], np.ones((1, 2)))
