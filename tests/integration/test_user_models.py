"""The models users bring: sigmoid binary heads, regression, several outputs, changed policies.

Every figure is checked against an independent NumPy computation on the same
predictions (issue 14: these gave wrong numbers without an error).
"""

import json

import keras
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.datasets import load_diabetes

import keras_bidir as kb
from keras_bidir import trainer
from conftest import compile_classifier
from conftest import tiny_cnn
from keras_bidir import losses as losses_lib

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


def _scaled(x):
    x = x.astype("float32")
    return (x - x.min(0)) / (x.max(0) - x.min(0))


@pytest.fixture(scope="module")
def cancer():
    """scikit-learn's bundled breast-cancer data (569 × 30, real), scaled to [0, 1]; 1-D labels."""
    data = load_breast_cancer()
    order = np.random.default_rng(0).permutation(len(data.target))
    return _scaled(data.data)[order], data.target.astype("float32")[order]


@pytest.fixture(scope="module")
def diabetes():
    """scikit-learn's bundled diabetes regression data (442 × 10), standardised target."""
    data = load_diabetes()
    y = (data.target - data.target.mean()) / data.target.std()
    return _scaled(data.data), y.astype("float32")


class SigmoidInCall(keras.Model):
    """A subclassed binary classifier with BatchNorm and Dropout; the sigmoid is in call()."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.drop = keras.layers.Dropout(0.2)
        self.head = keras.layers.Dense(1)

    def call(self, x, training=None):
        h = self.drop(self.norm(self.hidden(x), training=training), training=training)
        return keras.ops.sigmoid(self.head(h))


@pytest.fixture(scope="module")
def binary_model(cancer):
    """FGSM training of the subclassed sigmoid model with loss='binary_crossentropy', 1-D labels."""
    x, y = cancer
    keras.utils.set_random_seed(0)
    model = kb.BidirectionalModel(SigmoidInCall(), kb.policies.FGSM(0.05, **CLIP))
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy",
                  metrics=["accuracy"])
    model.fit(x[:400], y[:400], epochs=8, batch_size=32, verbose=0)
    return model


def _numpy_binary_accuracy(model, x, y, threshold=0.5):
    scores = np.asarray(model.predict(x, verbose=0)).reshape(-1)
    return float(np.mean((scores > threshold) == (y > 0.5)))


def test_sigmoid_in_call_is_read_as_probability(binary_model, cancer):
    x, y = cancer[0][400:], cancer[1][400:]
    expected = _numpy_binary_accuracy(binary_model, x, y)
    assert expected > 0.85  # a real classifier, far from the positive-class rate
    report = kb.evaluate_robustness(binary_model, (x, y), [0.02, 0.05], verbose=0)
    assert report.clean_accuracy == pytest.approx(expected)
    assert all(report.robust_accuracy[e] <= expected for e in (0.02, 0.05))
    assert report.accuracy["APGD-DLR"][0.05] <= expected  # DLR runs the right way on one logit
    assert {c.name: c.passed for c in report.checks}["large_epsilon"]
    _, keras_accuracy = binary_model.evaluate(x, y, verbose=0)
    assert keras_accuracy == pytest.approx(expected, abs=1e-6)


def test_robust_accuracy_callback_reads_sigmoid_outputs(binary_model, cancer):
    x, y = cancer[0][400:], cancer[1][400:]
    callback = kb.callbacks.RobustAccuracy((x, y), kb.policies.PGD(1e-6, steps=1, **CLIP))
    callback.set_model(binary_model)
    callback.on_train_begin()
    logs = {}
    callback.on_epoch_end(0, logs)
    # At a vanishing radius robust accuracy is the clean accuracy, computed independently.
    assert logs["val_robust_accuracy"] == pytest.approx(_numpy_binary_accuracy(binary_model, x, y))


def test_undecidable_binary_outputs_are_refused_with_the_argument_to_pass(binary_model, cancer):
    x, y = cancer[0][400:], cancer[1][400:]
    plain = SigmoidInCall()
    plain(x[:2])
    plain.set_weights(binary_model.base_model.get_weights())  # uncompiled: no loss to ask
    with pytest.raises(ValueError, match="from_logits=False"):
        kb.evaluate_robustness(plain, (x, y), [0.05], verbose=0, checks=False)
    report = kb.evaluate_robustness(plain, (x, y), [0.05], verbose=0, checks=False,
                                    from_logits=False)
    assert report.clean_accuracy == pytest.approx(_numpy_binary_accuracy(binary_model, x, y))


def test_single_logit_head_is_thresholded_at_zero(cancer):
    x, y = cancer
    keras.utils.set_random_seed(1)
    base = keras.Sequential([keras.Input((30,)), keras.layers.Dense(8, activation="relu"),
                             keras.layers.Dense(1)])
    base.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True))
    base.fit(x, y, epochs=5, verbose=0)
    report = kb.evaluate_robustness(base, (x, y), [0.05], verbose=0, checks=False, **CLIP)
    assert report.clean_accuracy == pytest.approx(_numpy_binary_accuracy(base, x, y, threshold=0.0))


def test_dlr_of_one_logit_is_the_two_logit_margin():
    z = np.array([[2.0], [-1.0], [0.5]], "float32")
    y = np.array([1, 1, 0])
    expected = np.where(y == 1, -z[:, 0], z[:, 0])  # max_{i≠y} z_i − z_y with logits [0, z]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses_lib.dlr_loss(y, z)), expected)


@pytest.mark.parametrize("loss", ["binary_crossentropy", keras.losses.binary_crossentropy,
                                  keras.losses.BinaryCrossentropy()],
                         ids=["string", "function", "object"])
def test_every_binary_loss_spec_takes_1d_labels(loss, cancer):
    x, y = cancer[0][:64], cancer[1][:64]
    model = kb.BidirectionalModel(
        keras.Sequential([keras.Input((30,)), keras.layers.Dense(1, activation="sigmoid")]),
        kb.policies.FGSM(0.05, **CLIP))
    model.compile(loss=loss)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    outputs = model.predict(x, verbose=0)
    per_example = keras.ops.convert_to_numpy(model.step_state.attack_loss(y, outputs))
    expected = keras.ops.convert_to_numpy(keras.losses.BinaryCrossentropy()(y[:, None], outputs))
    assert per_example.shape == (64,) and per_example.mean() == pytest.approx(float(expected), rel=1e-5)


# -- regression ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def regression_model(diabetes):
    x, y = diabetes
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((10,)), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(1)])
    model = kb.BidirectionalModel(base, kb.policies.PGD(0.05, steps=3, **CLIP))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(x, y, epochs=10, batch_size=32, verbose=0)
    return model


def test_regression_reports_the_loss_under_attack(regression_model, diabetes):
    x, y = diabetes
    report = kb.evaluate_robustness(regression_model, (x, y), [0.05, 0.1], verbose=0)
    clean_mse = float(np.mean((regression_model.predict(x, verbose=0)[:, 0] - y) ** 2))
    assert report.measure == "mse"
    assert report.clean_loss == pytest.approx(clean_mse, rel=1e-5)
    for eps in (0.05, 0.1):
        attacked = [report.loss[name][eps] for name in report.loss]
        assert min(attacked) > clean_mse  # the attacks raise the loss
        assert report.worst_loss[eps] >= max(attacked) - 1e-9  # per-example max over attacks
    assert report.worst_loss[0.1] > report.worst_loss[0.05]
    assert "large_epsilon" not in {c.name for c in report.checks}  # no accuracy to drive to 0
    assert report.passed_checks
    assert "Clean mse (higher is worse)" in report.to_markdown()
    with pytest.raises(AttributeError, match="clean_loss"):
        report.clean_accuracy  # noqa: B018
    assert json.loads(json.dumps(report.to_dict()))["clean_loss"] == pytest.approx(clean_mse)


def test_regression_has_no_robust_accuracy(regression_model, diabetes):
    x, y = diabetes
    callback = kb.callbacks.RobustAccuracy((x, y), kb.policies.PGD(0.05, steps=2))
    with pytest.raises(ValueError, match="regression model"):
        regression_model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    with pytest.raises(ValueError, match="regression model"):
        kb.evaluation.robust_accuracy(regression_model, x, y, None)


# -- several outputs ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_heads(diabetes):
    x, y = diabetes
    labels = (y > 0).astype("int64") + (y > 1).astype("int64")  # three classes
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10,), name="features")
    hidden = keras.layers.Dense(16, activation="relu")(inputs)
    heads = {"a": keras.layers.Dense(3, name="a")(hidden), "b": keras.layers.Dense(1, name="b")(hidden)}
    model = kb.BidirectionalModel(keras.Model(inputs, heads), kb.policies.FGSM(0.05, **CLIP))
    model.compile(optimizer=keras.optimizers.SGD(0.0),  # fixed weights: train logs = evaluate
                  loss={"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "b": "mse"},
                  metrics={"a": ["accuracy"]})
    targets = {"a": labels, "b": y}
    history = model.fit(x[:416], {k: v[:416] for k, v in targets.items()}, batch_size=32,
                        epochs=1, verbose=0)
    return model, x, targets, history.history


def test_multi_output_logs_say_clean_or_adversarial(two_heads):
    model, x, targets, logs = two_heads
    assert {"a_loss", "b_loss", "a_accuracy", "adv_a_loss", "adv_b_loss", "adv_a_accuracy"} <= set(logs)
    clean = model.evaluate(x[:416], {k: v[:416] for k, v in targets.items()}, batch_size=32,
                           verbose=0, return_dict=True)
    for name in ("a_loss", "b_loss", "a_accuracy"):  # clean, as in evaluate (weights unchanged)
        assert logs[name][0] == pytest.approx(clean[name], rel=1e-5)
    assert logs["adv_a_loss"][0] > logs["a_loss"][0] and logs["adv_b_loss"][0] > logs["b_loss"][0]


def test_multi_output_evaluation_needs_a_head_and_reports_it(two_heads):
    model, x, targets, _ = two_heads
    with pytest.raises(ValueError, match=r"2 outputs \['a', 'b'\]: pass output="):
        kb.evaluate_robustness(model, (x, targets), [0.05], verbose=0)
    report = kb.evaluate_robustness(model, (x, targets), [0.05], verbose=0, checks=False, output="a")
    predicted = np.argmax(model.predict(x, verbose=0)["a"], axis=-1)
    assert report.clean_accuracy == pytest.approx(np.mean(predicted == targets["a"]))
    assert report.robust_accuracy[0.05] <= report.clean_accuracy
    regression_head = kb.evaluate_robustness(model, (x, targets), [0.05], verbose=0, checks=False,
                                             output="b")
    assert regression_head.measure == "mse"


# -- the objective can change between fits --------------------------------------------------

def test_changed_policy_and_weights_take_effect(digits, tmp_path):
    (x, y), _ = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), kb.policies.FGSM(0.05, **CLIP)))
    first = model.fit(x[:256], y[:256], epochs=1, verbose=0).history
    assert first["perturbation_norm"][0] == pytest.approx(0.05, abs=1e-4)
    model.policy = kb.policies.PGD(0.3, steps=1, **CLIP)
    model.clean_weight = 1.0
    second = model.fit(x[:256], y[:256], epochs=1, verbose=0).history
    assert second["perturbation_norm"][0] > 0.25 and "clean_loss" in second
    assert second["loss"][0] == pytest.approx(second["adv_loss"][0] + second["clean_loss"][0], rel=1e-4)
    model.adversarial_weight = 2.0
    third = model.train_on_batch(x[:64], y[:64], return_dict=True)
    assert third["loss"] == pytest.approx(2 * third["adv_loss"] + third["clean_loss"], rel=1e-4)
    model.save(tmp_path / "changed.keras")
    restored = keras.models.load_model(tmp_path / "changed.keras")
    assert restored.policy == model.policy and restored.adversarial_weight == 2.0
    model.clean_weight = 0.0
    with pytest.raises(ValueError, match="set model.clean_weight first"):
        model.policy = kb.policies.TRADES(0.1, steps=1, **CLIP)
    with pytest.raises(ValueError, match="adversarial_weight must be > 0"):
        model.adversarial_weight = 0


# -- data the policy cannot take ------------------------------------------------------------

def test_data_outside_the_clip_range_is_refused(digits):
    (x, y), _ = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), kb.policies.FGSM(0.1, **CLIP)))
    with pytest.raises(ValueError, match=r"inputs lie in \[0, 16\], outside .*clip_max=1.0.*x / 255"):
        model.fit(x[:64] * 16, y[:64], epochs=1, verbose=0)


def test_epsilon_beyond_the_data_range_warns_with_the_numbers(digits):
    (x, y), _ = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), kb.policies.FGSM(1e6)))
    with pytest.warns(UserWarning, match=r"epsilon=1e\+06 \(linf\) is larger than the whole data range \(1 "):
        model.fit(x[:64], y[:64], epochs=1, verbose=0)


def test_an_epoch_of_skipped_steps_shows_nan_not_zero(digits):
    (x, y), _ = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), kb.policies.FGSM(0.1)))
    with pytest.warns(UserWarning, match="skipped"):
        logs = model.fit(np.full_like(x[:64], np.nan), y[:64], epochs=1, verbose=0).history
    assert logs["nonfinite_batches"][0] == 2
    assert np.isnan(logs["loss"][0]) and np.isnan(logs["adv_loss"][0])
    assert np.isnan(logs["perturbation_norm"][0])


# -- Keras' own API, unchanged --------------------------------------------------------------

def test_evaluate_matches_the_plain_compiled_model(digits):
    (x, y), (x_test, y_test) = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), kb.policies.FGSM(0.1, **CLIP)))
    model.fit(x[:256], y[:256], epochs=1, verbose=0)
    plain = compile_classifier(tiny_cnn())
    plain.set_weights(model.base_model.get_weights())
    plain.evaluate(x_test, y_test, verbose=0)
    loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
    assert [loss, accuracy] == pytest.approx(plain.evaluate(x_test, y_test, verbose=0), rel=1e-6)
    assert model.metrics_names == plain.metrics_names
    assert set(model.evaluate(x_test, y_test, verbose=0, return_dict=True)) == {"loss", "accuracy"}


def test_clean_metrics_off_with_compiled_metrics(digits):
    (x, y), _ = digits
    model = compile_classifier(
        kb.BidirectionalModel(tiny_cnn(), kb.policies.FGSM(0.1, **CLIP), clean_metrics=False))
    logs = model.fit(x[:128], y[:128], epochs=1, verbose=0, validation_data=(x[:64], y[:64])).history
    assert "adv_accuracy" in logs and "val_accuracy" in logs and "accuracy" not in logs


def test_numpy_scalars_are_accepted_everywhere(digits):
    policy = kb.policies.PGD(np.float32(8 / 255), steps=np.int64(3), clip_min=np.float64(0.0),
                             clip_max=np.int32(1))
    config = json.loads(json.dumps(policy.get_config()))  # plain Python numbers
    assert config["steps"] == 3 and config["epsilon"] == pytest.approx(8 / 255)
    model = kb.BidirectionalModel(tiny_cnn(), policy, adversarial_weight=np.float32(1.0),
                                  clean_weight=np.int64(0))
    assert isinstance(model.adversarial_weight, float)
    kb.callbacks.EpsilonSchedule(ramp=np.int64(2), delay=np.int32(1))
    kb.callbacks.RobustAccuracy((None, None), kb.policies.FGSM(0.1), every=np.int64(2))


# -- perturbing inside a model you did not write ----------------------------------------------

@pytest.fixture(scope="module")
def bert_inputs():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 50, (64, 12)).astype("int32")
    mask = np.ones((64, 12), "int32")
    mask[:, 8:] = 0  # the last four positions are padding
    ids[:, 8:] = 0
    x = {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}
    return x, (ids[:, 0] % 2).astype("int64")


def test_point_inserted_into_a_keras_hub_backbone(bert_inputs, tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16,
                                             max_sequence_length=12)
    perturbable = kb.layers.insert_perturbation_point(backbone, after="embeddings_layer_norm")
    assert "embeddings_layer_norm_perturbation" in [layer.name for layer in perturbable.layers]
    assert perturbable.get_layer("token_embedding") is backbone.get_layer("token_embedding")
    inputs = perturbable.input
    logits = keras.layers.Dense(2)(perturbable(inputs)["pooled_output"])
    model = kb.BidirectionalModel(keras.Model(inputs, logits), kb.policies.FreeLB(0.1, steps=2))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = bert_inputs
    before = [w.copy() for w in backbone.get_weights()]
    logs = model.fit(x, y, epochs=1, batch_size=16, verbose=0).history
    assert logs["perturbation_norm"][0] > 0
    assert any(not np.allclose(a, b) for a, b in zip(before, backbone.get_weights()))
    # Padding positions are never perturbed: the point takes the backbone's padding_mask.
    batch = {k: keras.ops.convert_to_tensor(v[:4]) for k, v in x.items()}
    sites = kb.sites.Sites(model, batch, model.perturb_names)
    clean, masks, _ = sites.record(model, batch, training=False)
    context = trainer.training_context(model, batch, keras.ops.convert_to_tensor(y[:4]), sites, clean, masks)
    moved = kb.sites.apply_masks(clean, kb.policies.PGD(0.5, steps=2).attack(context, clean), masks)
    delta = np.abs(keras.ops.convert_to_numpy(moved[0] - clean[0]))
    assert delta[:, :8].max() == pytest.approx(0.5, abs=1e-5) and delta[:, 8:].max() == 0.0
    model.save(tmp_path / "bert.keras")
    restored = keras.models.load_model(tmp_path / "bert.keras", safe_mode=True)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_an_internal_layer_name_in_perturb_points_to_the_helper(bert_inputs):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.BertBackbone(vocabulary_size=50, num_layers=1, num_heads=2,
                                             hidden_dim=8, intermediate_dim=16,
                                             max_sequence_length=12)
    model = kb.BidirectionalModel(backbone, kb.policies.FGSM(0.1), perturb=["embeddings_layer_norm"])
    with pytest.raises(ValueError, match=r"layers inside the model.*insert_perturbation_point"):
        kb.sites.Sites(model, bert_inputs[0], model.perturb_names)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        kb.layers.insert_perturbation_point(backbone, after="nope")


# -- other backends ------------------------------------------------------------------------

def test_pytorch_backend_gets_a_clear_error(monkeypatch):
    # PyTorch is not installed here (Keras' torch backend cannot start without it):
    # the check reads the backend name Keras reported at import.
    from keras_bidir import backend

    monkeypatch.setattr(backend, "_BACKEND", "torch")
    with pytest.raises(RuntimeError) as error:
        kb.BidirectionalModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]),
                              kb.policies.FGSM(0.1))
    message = str(error.value)
    assert "TensorFlow and JAX backends; the active Keras backend is 'torch'" in message
    assert "KERAS_BACKEND=jax" in message and "PyTorch support is planned" in message


@pytest.fixture(scope="module")
def parity_twins(digits):
    """A digits-parity classifier ending in a sigmoid, and its twin with the same weights
    ending in the logit; 120 test digits."""
    (x_train, y_train), (x_test, y_test) = digits
    keras.utils.set_random_seed(0)

    def build(activation):
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                 keras.layers.Dense(16, activation="relu"),
                                 keras.layers.Dense(1, activation=activation)])

    sigmoid = build("sigmoid")
    sigmoid.compile(optimizer=keras.optimizers.Adam(3e-3), loss="binary_crossentropy")
    sigmoid.fit(x_train, (y_train % 2).astype("float32"), epochs=10, batch_size=64, verbose=0)
    logit = build(None)
    logit.set_weights(sigmoid.get_weights())
    logit.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    return sigmoid, logit, x_test[:120], (y_test[:120] % 2).astype("float32")


@pytest.mark.parametrize("name, attack", [
    ("Square", kb.policies.Square(0.1, queries=300, **CLIP)),
    ("APGD-DLR", kb.policies.APGD(0.1, steps=20, loss="dlr", **CLIP)),
])
def test_margin_attacks_read_a_sigmoid_probability_as_its_logit(parity_twins, name, attack):
    # Before: Square and DLR read the probability p as the logits [0, p], never below 0,
    # so every label-0 example counted as already broken and was never searched.
    sigmoid, logit, x, y = parity_twins
    args = dict(attacks={name: attack}, checks=False, verbose=0)
    on_probability = kb.evaluate_robustness(sigmoid, (x, y), [0.1], **args)
    on_logit = kb.evaluate_robustness(logit, (x, y), [0.1], **args)
    assert on_probability.clean_accuracy == on_logit.clean_accuracy > 0.8
    assert abs(on_probability.accuracy[name][0.1] - on_logit.accuracy[name][0.1]) <= 1 / len(y)
    assert on_logit.accuracy[name][0.1] < on_logit.clean_accuracy - 0.1  # it does search
    # Used alone through perturb(), the same: the compiled loss says "probabilities".
    moved = attack.perturb(sigmoid, x, y)
    after = float(np.mean((sigmoid.predict(moved, verbose=0)[:, 0] > 0.5) == (y > 0.5)))
    assert after <= on_logit.clean_accuracy - 0.1


def test_standard_suite_on_a_sigmoid_head_matches_its_logit_twin(parity_twins):
    sigmoid, logit, x, y = parity_twins
    x, y = x[:60], y[:60]
    args = dict(suite="standard", checks=False, verbose=0, **CLIP)
    on_probability = kb.evaluate_robustness(sigmoid, (x, y), [0.1], **args)
    on_logit = kb.evaluate_robustness(logit, (x, y), [0.1], **args)
    assert abs(on_probability.robust_accuracy[0.1] - on_logit.robust_accuracy[0.1]) <= 1 / len(y)


def test_an_undeclared_sigmoid_is_refused_by_margin_attacks_with_the_argument(parity_twins):
    sigmoid, _, x, y = parity_twins
    inputs = keras.Input((8, 8, 1))  # uncompiled, and the sigmoid is an op no layer names
    hidden = keras.layers.Dense(16, activation="relu")(keras.layers.Flatten()(inputs))
    undeclared = keras.Model(inputs, keras.ops.sigmoid(keras.layers.Dense(1)(hidden)))
    undeclared.set_weights(sigmoid.get_weights())
    with pytest.raises(ValueError, match="from_logits=False"):
        kb.policies.Square(0.1, queries=10, **CLIP).perturb(undeclared, x[:8], y[:8])
    moved = kb.policies.Square(0.1, queries=10, **CLIP).perturb(undeclared, x[:8], y[:8],
                                                                from_logits=False)
    assert np.max(np.abs(np.asarray(moved) - x[:8])) <= 0.1 + 1e-6
