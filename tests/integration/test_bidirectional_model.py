import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bidir as kb
from keras_bidir import policies
from conftest import RecordGradients as RecordInputGradient
from conftest import compile_classifier, independent_gradients, tiny_cnn

# `make test` runs the tests marked `backends` on both backends (tests/README.md: which)

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


@pytest.mark.backends
def test_one_tape_gradients_match_independent_tape(small_batch):
    x, y = small_batch
    base = tiny_cnn(3)
    model = kb.BidirectionalModel(base, RecordInputGradient())
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    weights_before = [w.numpy().copy() for w in base.trainable_weights]

    # Independent computation on the same batch and weights.
    # (a tf.GradientTape on TensorFlow, jax.grad on JAX: tests/conftest.py)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    expected_input_grad, expected_weight_grads = independent_gradients(
        lambda xt: loss_fn(y, base(xt, training=True)), x, base.trainable_weights)

    model.train_on_batch(x, y)
    recorded = model.step_state.policy_variables[0].numpy()
    np.testing.assert_allclose(recorded, expected_input_grad, rtol=1e-4, atol=1e-7)
    assert np.abs(recorded).max() > 0
    # SGD with lr=1: w_new = w_old - grad.
    for before, after, grad in zip(weights_before, base.trainable_weights, expected_weight_grads):
        np.testing.assert_allclose(before - after.numpy(), grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("clean_weight,adversarial_weight", [
    (0.0, 1.0), (1.0, 0.5), pytest.param(0.3, 2.0, marks=pytest.mark.backends)])
def test_total_loss_is_weighted_sum(small_batch, clean_weight, adversarial_weight):
    x, y = small_batch
    base = tiny_cnn(4)
    policy = policies.FGSM(0.1, **CLIP)
    model = kb.BidirectionalModel(base, policy, clean_weight=clean_weight,
                                  adversarial_weight=adversarial_weight)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    x_adv = policy.perturb(base, x, y)
    clean = float(loss_fn(y, base(x, training=True)))
    adv = float(loss_fn(y, base(x_adv, training=True)))
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["loss"] == pytest.approx(clean_weight * clean + adversarial_weight * adv, rel=1e-5)
    assert logs["adv_loss"] == pytest.approx(adv, rel=1e-5)
    assert logs["perturbation_norm"] == pytest.approx(0.1, rel=1e-4)
    expected_adv_acc = float(np.mean(np.argmax(base.predict(x_adv, verbose=0), -1) == y))
    assert logs["adv_accuracy"] == pytest.approx(expected_adv_acc)
    assert ("clean_loss" in logs) == (clean_weight > 0)


def _fit_logs(model, *args, **kwargs):
    return model.fit(*args, verbose=0, **kwargs).history


@pytest.mark.backends
def test_fit_with_arrays_tf_data_generators_and_weights(digits):
    (x, y), (xv, yv) = digits
    x, y = x[:256], y[:256]
    model = kb.BidirectionalModel(tiny_cnn(), policies.PGD(0.1, steps=2, **CLIP))
    compile_classifier(model)
    history = _fit_logs(model, x, y, batch_size=64, epochs=1, validation_data=(xv[:64], yv[:64]))
    assert {"loss", "accuracy", "adv_loss", "adv_accuracy", "perturbation_norm",
            "val_loss", "val_accuracy"} <= set(history)
    assert not any(k.startswith("val_adv") for k in history)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    _fit_logs(model, ds, epochs=1)
    weights = np.linspace(0.5, 1.5, len(y)).astype("float32")
    ds_w = tf.data.Dataset.from_tensor_slices((x, y, weights)).batch(64)
    _fit_logs(model, ds_w, epochs=1)
    _fit_logs(model, x, y, sample_weight=weights, batch_size=64, epochs=1)
    _fit_logs(model, x, y, class_weight={c: 1.0 + c / 10 for c in range(10)}, batch_size=64, epochs=1)

    def generator():
        for start in range(0, len(x), 64):
            yield x[start:start + 64], y[start:start + 64]

    history = _fit_logs(model, generator(), epochs=1)
    assert np.isfinite(history["loss"][-1])
    model.evaluate(xv, yv, verbose=0)
    assert model.predict(xv[:5], verbose=0).shape == (5, 10)


def test_free_adversarial_with_generator_keeps_first_batch_and_state(digits):
    (x, y), _ = digits
    seen = []

    def generator():
        for start in range(0, 192, 64):
            seen.append(start)
            yield x[start:start + 64], y[start:start + 64]

    model = kb.BidirectionalModel(tiny_cnn(), policies.FreeAdversarial(0.1, replays=2, **CLIP))
    compile_classifier(model)
    history = model.fit(generator(), epochs=1, verbose=0).history
    assert seen == [0, 64, 128]
    # Each of the 3 batches is replayed twice. (Keras 3.15 runs one extra, empty step
    # when a generator runs out; plain Keras applies it, our non-finite guard skips it.)
    assert model.optimizer.iterations.numpy() == 3 * 2
    delta = model.step_state.policy_variables[0].numpy()
    assert 0 < np.abs(delta).max() <= 0.1 + 1e-6
    assert 0 < history["perturbation_norm"][-1] <= 0.1 + 1e-6


@pytest.mark.backends
def test_free_adversarial_handles_a_smaller_last_batch(digits):
    (x, y), _ = digits
    model = kb.BidirectionalModel(tiny_cnn(), policies.FreeAdversarial(0.1, replays=2, **CLIP))
    compile_classifier(model)
    model.fit(x[:150], y[:150], batch_size=64, epochs=2, verbose=0)  # 64, 64, 22
    assert model.step_state.policy_variables[0].shape[0] == 64


@pytest.mark.backends
def test_dict_inputs_with_integer_feature_and_perturb_selection():
    rng = np.random.default_rng(0)
    image = keras.Input((6,), name="image")
    extra = keras.Input((2,), name="extra")
    token = keras.Input((1,), name="token", dtype="int32")
    embedded = keras.layers.Flatten()(keras.layers.Embedding(5, 2)(token))
    out = keras.layers.Dense(3)(keras.layers.Concatenate()([image, extra, embedded]))
    base = keras.Model({"image": image, "extra": extra, "token": token}, out)
    x = {"image": rng.random((32, 6)).astype("float32"), "extra": rng.random((32, 2)).astype("float32"),
         "token": rng.integers(0, 5, (32, 1)).astype("int32")}
    y = rng.integers(0, 3, 32)

    model = kb.BidirectionalModel(base, RecordInputGradient(), perturb=["image"])
    compile_classifier(model)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    assert len(model.step_state.policy_variables) == 1 and model.step_state.policy_variables[0].shape == (32, 6)

    model = kb.BidirectionalModel(base, policies.FGSM(0.1))
    compile_classifier(model)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)

    with pytest.raises(ValueError, match="names inputs \\['nope'\\].*Available inputs"):
        bad = kb.BidirectionalModel(base, policies.FGSM(0.1), perturb=["nope"])
        compile_classifier(bad)
        bad.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="not floating-point.*PerturbationPoint"):
        bad = kb.BidirectionalModel(base, policies.FGSM(0.1), perturb="token")
        compile_classifier(bad)
        bad.fit(x, y, epochs=1, verbose=0)


@pytest.mark.backends
def test_integer_only_model_is_a_clear_error():
    tokens = keras.Input((5,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 4)(tokens))
    base = keras.Model(tokens, keras.layers.Dense(2)(x))
    model = kb.BidirectionalModel(base, policies.FGSM(0.1))
    compile_classifier(model)
    data = np.random.default_rng(0).integers(0, 20, (8, 5)).astype("int32")
    with pytest.raises(ValueError, match="none is floating-point.*embeddings.*PerturbationPoint"):
        model.fit(data, np.zeros(8, "int32"), epochs=1, verbose=0)


def test_softmax_with_logits_loss_warns():
    model = kb.BidirectionalModel(tiny_cnn(softmax=True), policies.FGSM(0.1))
    with pytest.warns(UserWarning, match="expects logits .* ends in a softmax"):
        compile_classifier(model)
    plain = kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compile_classifier(plain)


@pytest.mark.parametrize("kwargs,message", [
    ({"adversarial_weight": 0}, "adversarial_weight must be > 0"),
    ({"adversarial_weight": -1}, "adversarial_weight must be finite and >= 0"),
    ({"clean_weight": float("nan")}, "clean_weight must be finite and >= 0"),
    ({"attack_mode": "eval"}, "attack_mode must be one of"),
    ({"policy": "nope"}, "Unknown policy"),
])
def test_bad_wrapper_arguments(kwargs, message):
    kwargs = {"policy": policies.FGSM(0.1), **kwargs}
    with pytest.raises(ValueError, match=message):
        kb.BidirectionalModel(tiny_cnn(), **kwargs)


def test_wrapping_twice_and_non_models_are_rejected():
    inner = kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1))
    with pytest.raises(TypeError, match="already a BidirectionalModel"):
        kb.BidirectionalModel(inner, policies.FGSM(0.1))
    with pytest.raises(TypeError, match="must be a Keras model"):
        kb.BidirectionalModel(lambda x: x, policies.FGSM(0.1))


def test_compile_without_loss_is_a_clear_error():
    model = kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1))
    with pytest.raises(ValueError, match="needs a loss"):
        model.compile(optimizer="adam")


def test_unlabeled_batches_are_rejected_for_gradient_policies(small_batch):
    x, _ = small_batch
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1)))
    with pytest.raises(ValueError, match="needs labels"):
        model.fit(x, epochs=1, verbose=0)


@pytest.mark.parametrize("policy", [
    policies.PGD(0.1, steps=2, **CLIP),
    pytest.param(policies.FreeAdversarial(0.1, replays=2, **CLIP), marks=pytest.mark.backends),
    policies.GaussianNoise(0.1),
], ids=lambda p: type(p).__name__)
def test_save_and_load_round_trip(tmp_path, small_batch, policy):
    x, y = small_batch
    model = kb.BidirectionalModel(tiny_cnn(), policy, clean_weight=0.5, perturb=None, seed=3)
    compile_classifier(model)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored, kb.BidirectionalModel)
    assert restored.policy == policy
    assert restored.clean_weight == 0.5 and restored.seed == 3
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)
    for a, b in zip(restored.step_state.policy_variables, model.step_state.policy_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Training continues with the restored optimizer and metrics.
    restored.fit(x, y, batch_size=32, epochs=1, verbose=0)
    # The deployable base model round-trips on its own, without keras_bidir objects.
    deploy = tmp_path / "deploy.keras"
    model.base_model.save(deploy)
    np.testing.assert_allclose(keras.models.load_model(deploy).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)


@pytest.mark.backends
def test_subclassed_base_model(small_batch):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.flat = keras.layers.Flatten()
            self.out = keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.flat(x))

    x, y = small_batch
    model = compile_classifier(kb.BidirectionalModel(Net(), policies.PGD(0.1, steps=2, **CLIP)))
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0).history
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.backends
def test_attack_mode_controls_batchnorm_statistics(small_batch):
    x, y = small_batch

    def bn_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                 keras.layers.BatchNormalization(momentum=0.0), keras.layers.Dense(10)])

    # One step: the weight step always updates the moving mean with the adversarial
    # batch; in "training" mode the attack passes update it too (last pass wins).
    for mode in ("inference", "training"):
        base = bn_model()
        model = kb.BidirectionalModel(base, policies.PGD(0.3, steps=3, **CLIP), attack_mode=mode)
        compile_classifier(model, optimizer=keras.optimizers.SGD(0.0))
        model.train_on_batch(x, y)
        moving_mean = base.layers[1].moving_mean.numpy()
        assert np.isfinite(moving_mean).all()
        assert np.abs(moving_mean).max() > 0


def test_inspect_reports_what_the_policy_does_without_training(digits):
    (x, y), _ = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1, **CLIP)))
    model.fit(x[:128], y[:128], epochs=1, verbose=0)
    before = model.get_weights()
    seen = model.inspect(x[:32], y[:32])
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert seen["perturbation_norm"] == pytest.approx(0.1, abs=1e-6)
    gradient, _ = independent_gradients(  # the summed per-example loss at x
        lambda x_t: keras.ops.sum(keras.losses.sparse_categorical_crossentropy(
            y[:32], model.base_model(x_t, training=False), from_logits=True)), x[:32])
    norms = np.sqrt((gradient.reshape(32, -1) ** 2).sum(1))
    assert seen["input_gradient_norm"] == pytest.approx(norms.mean(), rel=1e-4)
    np.testing.assert_allclose(seen["outputs"], model.predict(x[:32], verbose=0), atol=1e-5)
