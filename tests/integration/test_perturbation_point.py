import importlib.util
import os

import keras
import keras_hub
import numpy as np
import pytest
from keras import ops

import keras_bidir as kb
from keras_bidir import losses
from keras_bidir import trainer
from keras_bidir.policies.base import PerturbationContext
from keras_bidir.policies.base import site_objective
from keras_bidir import policies
from keras_bidir.layers import PerturbationPoint
from conftest import RecordGradients as Recorder
from conftest import compile_classifier, independent_gradients

SEQ, VOCAB, WIDTH = 10, 30, 8


def token_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQ + 1, n)
    tokens = np.zeros((n, SEQ), "int32")
    for i, length in enumerate(lengths):
        tokens[i, :length] = rng.integers(1, VOCAB, length)
    labels = (tokens[:, 0] % 2).astype("int64")
    return tokens, labels


def functional_text_model(points=1, seed=0):
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True)(tokens)
    x = PerturbationPoint(name="embeddings")(x)
    if points == 2:
        x = keras.layers.Dense(WIDTH, activation="relu")(x)
        x = PerturbationPoint(name="hidden")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(2)(x))


def test_identity_outside_bidirectional_training():
    model = functional_text_model()
    tokens, labels = token_data()
    without = keras.Model(model.inputs, model.outputs)  # same layers
    np.testing.assert_array_equal(model.predict(tokens, verbose=0), without.predict(tokens, verbose=0))
    compile_classifier(model).fit(tokens, labels, epochs=1, verbose=0)  # plain fit works


def test_gradient_at_the_point_matches_independent_tape():
    model = functional_text_model(seed=2)
    tokens, labels = token_data()
    bidir = kb.BidirectionalModel(model, Recorder())
    bidir.compile(optimizer=keras.optimizers.SGD(0.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bidir.train_on_batch(tokens, labels)
    recorded = bidir.step_state.policy_variables[0].numpy()

    embedding = model.layers[1]
    mask = (tokens != 0).astype("float32")

    def loss_at(activation):
        pooled = ops.sum(activation * mask[..., None], 1) / ops.sum(mask, 1, keepdims=True)
        logits = model.layers[-1](pooled)
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)

    expected, _ = independent_gradients(loss_at, ops.convert_to_numpy(embedding(tokens)))
    np.testing.assert_allclose(recorded, expected, rtol=1e-4, atol=1e-8)
    assert np.all(recorded[tokens == 0] == 0)


@pytest.mark.parametrize("policy", [
    policies.FGSM(0.1, norm="l2"),
    policies.RandomFGSM(0.1),
    policies.PGD(0.1, steps=3, norm="l2", restarts=2),
    policies.FreeAdversarial(0.1, replays=2),
    policies.GaussianNoise(0.1),
    policies.APGD(0.1, steps=3),
    policies.FreeLB(0.1, steps=2),
], ids=lambda p: type(p).__name__)
def test_every_policy_works_at_a_point_and_never_perturbs_padding(policy):
    tokens, labels = token_data()
    model = kb.BidirectionalModel(functional_text_model(), policy, seed=0)
    compile_classifier(model)
    history = model.fit(tokens, labels, batch_size=32, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert history["perturbation_norm"][-1] > 0
    # Attacks at the point: padding positions stay exactly as they were.
    sites = kb.sites.Sites(model, ops.convert_to_tensor(tokens))
    clean, masks, _ = sites.record(model, ops.convert_to_tensor(tokens), training=False)
    context = trainer.training_context(model, ops.convert_to_tensor(tokens), ops.convert_to_tensor(labels), sites, clean, masks)
    adversarial = kb.sites.apply_masks(clean, policy.attack(context, clean), masks)
    delta = ops.convert_to_numpy(adversarial[0]) - ops.convert_to_numpy(clean[0])
    assert np.all(delta[tokens == 0] == 0)
    assert np.abs(delta[tokens != 0]).max() > 0


def test_several_points_sequential_and_subclassed_models():
    tokens, labels = token_data()
    two = kb.BidirectionalModel(functional_text_model(points=2), Recorder())
    compile_classifier(two).fit(tokens, labels, batch_size=64, epochs=1, verbose=0)
    assert [tuple(v.shape) for v in two.step_state.policy_variables] == [(64, SEQ, WIDTH), (64, SEQ, WIDTH)]
    only_hidden = kb.BidirectionalModel(functional_text_model(points=2), Recorder(), perturb=["hidden"])
    compile_classifier(only_hidden).fit(tokens, labels, batch_size=64, epochs=1, verbose=0)
    assert len(only_hidden.step_state.policy_variables) == 1

    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                                   PerturbationPoint(name="hidden"), keras.layers.Dense(2)])

    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = keras.layers.Embedding(VOCAB, WIDTH)
            self.point = PerturbationPoint(name="emb")
            self.pool = keras.layers.GlobalAveragePooling1D()
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.pool(self.point(self.embed(x))))

    x = np.random.default_rng(0).random((32, 4)).astype("float32")
    for base, data in ((sequential, x), (Net(), tokens[:32])):
        model = compile_classifier(kb.BidirectionalModel(base, policies.PGD(0.1, steps=2)))
        logs = model.fit(data, labels[:32], epochs=2, verbose=0).history
        assert logs["perturbation_norm"][-1] == pytest.approx(0.1, rel=1e-3)


def test_point_works_under_jit_and_survives_save_load(tmp_path):
    tokens, labels = token_data()
    model = kb.BidirectionalModel(functional_text_model(), policies.FreeLB(0.1, steps=2), seed=1)
    compile_classifier(model, jit_compile=True)
    model.fit(tokens, labels, batch_size=32, epochs=2, verbose=0)
    path = tmp_path / "text.keras"
    model.save(path)
    restored = keras.models.load_model(path)  # safe_mode defaults to True
    assert isinstance(restored.base_model.layers[2], PerturbationPoint)
    np.testing.assert_allclose(restored.predict(tokens, verbose=0), model.predict(tokens, verbose=0), atol=1e-6)
    restored.fit(tokens, labels, batch_size=32, epochs=1, verbose=0)


def test_freelb_takes_one_optimizer_step_per_batch():
    tokens, labels = token_data()
    model = compile_classifier(kb.BidirectionalModel(functional_text_model(), policies.FreeLB(0.1, steps=3)))
    model.fit(tokens, labels, batch_size=32, epochs=1, verbose=0)
    assert model.optimizer.iterations.numpy() == 2


def test_point_errors():
    tokens = keras.Input((SEQ,), dtype="int32")
    with pytest.raises(ValueError, match="PerturbationPoint 'ids'.*int32.*after the embedding"):
        PerturbationPoint(name="ids")(tokens)
    with pytest.raises(ValueError, match="unique"):
        x = keras.layers.Embedding(VOCAB, WIDTH)(tokens)
        a = PerturbationPoint(name="same")(x)
        b = PerturbationPoint(name="same")(a)
        kb.layers.find_points(keras.Model(tokens, b))


def _load_example():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "text_freelb.py")
    spec = importlib.util.spec_from_file_location("text_freelb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_keras_hub_text_classifier_with_freelb_is_more_robust(tmp_path):
    example = _load_example()
    results, models, (x_test, y_test) = example.main(["--smoke", "--output-dir", str(tmp_path)])
    plain, freelb = results["plain"], results["freelb"]
    assert freelb["clean"] >= 0.9 and plain["clean"] >= 0.9
    assert freelb[0.1] > plain[0.1] + 0.1
    assert freelb[0.2] > plain[0.2] + 0.1
    restored = keras.models.load_model(tmp_path / "freelb_text.keras")
    assert isinstance(restored.policy, policies.FreeLB)
    np.testing.assert_allclose(restored.predict(x_test, verbose=0),
                               models["freelb"].predict(x_test, verbose=0), atol=1e-5)
    assert any(isinstance(layer, keras_hub.layers.TransformerEncoder) for layer in restored.base_model.layers)


def test_keras_hub_text_example_runs_end_to_end_in_one_epoch(tmp_path):
    """The fast twin of the FreeLB example's smoke run (its effect is `slow`)."""
    example = _load_example()
    results, models, (x_test, _) = example.main(
        ["--smoke", "--epochs", "1", "--output-dir", str(tmp_path)])
    for row in results.values():
        assert 0.0 <= row[0.2] <= row[0.05] <= row["clean"] <= 1.0
    restored = keras.models.load_model(tmp_path / "freelb_text.keras")
    assert isinstance(restored.policy, policies.FreeLB)
    np.testing.assert_allclose(restored.predict(x_test, verbose=0),
                               models["freelb"].predict(x_test, verbose=0), atol=1e-5)



def test_targeted_attacks_stack_their_targets_at_a_masked_point():
    """APGD-T and FAB-T run their targets in one pass over the batch stacked once per target:
    the padding mask is stacked along, so padding positions stay exactly as they were."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True)(tokens)
    x = PerturbationPoint(name="embeddings")(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(tokens, keras.layers.Dense(5)(x))
    ids, _ = token_data(24)
    x, y = ops.convert_to_tensor(ids), ops.convert_to_tensor(ids[:, 0] % 5)
    sites = kb.sites.Sites(model, x)
    clean, masks, _ = sites.record(model, x, training=False)
    loss = losses.per_example_loss_fn(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    for attack in (policies.APGDTargeted(0.5, steps=5, targets=3, norm="l2"),
                   policies.FABTargeted(0.5, steps=5, targets=3, norm="l2")):
        context = PerturbationContext(
            site_objective(model, x, y, sites, clean, masks, loss), keras.random.SeedGenerator(0),
            clip=sites.clip_flags(), masks=masks, clean=clean, labels=y, from_logits=True)
        moved = kb.sites.apply_masks(clean, attack.attack(context, clean), masks)
        delta = ops.convert_to_numpy(moved[0]) - ops.convert_to_numpy(clean[0])
        assert np.all(delta[ids == 0] == 0) and np.abs(delta[ids != 0]).max() > 0
        assert attack.attack_outputs(model, x, y).shape == (24, 5)
