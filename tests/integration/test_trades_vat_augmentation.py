"""TRADES, VAT, Augment, WorstOfK, Compose and RandomChoice: behaviour against
independent computations, errors, and save / load round trips."""

import json

import keras
import numpy as np
import pytest
from conftest import CLIP, compile_classifier, tiny_cnn

import keras_bidir as kb
from keras_bidir import policies

SPATIAL = [keras.layers.RandomTranslation(0.2, 0.2), keras.layers.RandomRotation(0.1)]


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _kl(p_logits, q_logits):
    p, q = _softmax(p_logits.astype("float64")), _softmax(q_logits.astype("float64"))
    return (p * (np.log(p) - np.log(q))).sum(axis=-1)


def _context(model, x, y, seed=1, policy=None, loss=None):
    """A PerturbationContext for `model` on one batch, with a fresh seed stream."""
    policy = policy or policies.FGSM(0.1)
    _, _, _, _, _, context = policy._prepare(model, x, y, loss, False, None,
                                             keras.random.SeedGenerator(seed), 1.0)
    return context


# -- TRADES ------------------------------------------------------------------------------

def test_trades_ascends_the_divergence_and_stays_in_the_ball(trained_plain, small_batch):
    x, y = small_batch
    policy = policies.TRADES(0.1, steps=5, **CLIP)
    adversarial = np.asarray(policy.perturb(trained_plain, x, y))
    assert np.abs(adversarial - x).max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
    clean = trained_plain.predict(x, verbose=0)
    kl_adv = _kl(clean, trained_plain.predict(adversarial, verbose=0))
    rng = np.random.default_rng(0)
    random = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1).astype("float32")
    kl_random = _kl(clean, trained_plain.predict(random, verbose=0))
    assert kl_adv.mean() > 5 * kl_random.mean()


def test_trades_training_loss_is_ce_plus_beta_kl(small_batch):
    x, y = small_batch
    base = tiny_cnn(0)
    model = kb.BidirectionalModel(base, policies.TRADES(0.1, beta=3.0, steps=1, **CLIP))
    assert model.clean_weight == 1.0  # TRADES' default: the CE term is part of its loss
    compile_classifier(model, optimizer=keras.optimizers.SGD(0.0))  # weights stay fixed
    x_adv = np.asarray(model.perturb(x, y))
    logs = model.train_on_batch(x, y, return_dict=True)
    logits, logits_adv = base.predict(x, verbose=0), base.predict(x_adv, verbose=0)
    ce = -np.log(_softmax(logits.astype("float64"))[np.arange(len(y)), y]).mean()
    np.testing.assert_allclose(logs["clean_loss"], ce, rtol=1e-4)
    # The step's own perturbation comes from the same seed stream as perturb()'s
    # first draw only approximately, so bound the KL term instead of matching it:
    assert logs["adv_loss"] > 0
    assert logs["loss"] == pytest.approx(logs["clean_loss"] + logs["adv_loss"], rel=1e-5)
    kl = _kl(logits, logits_adv).mean()
    assert 3.0 * kl == pytest.approx(logs["adv_loss"], rel=0.5)


def test_trades_needs_the_clean_term():
    with pytest.raises(ValueError, match="clean_weight must be > 0"):
        kb.BidirectionalModel(tiny_cnn(0), policies.TRADES(0.1), clean_weight=0.0)
    with pytest.raises(ValueError, match="direction"):
        policies.TRADES(0.1, direction=-1)


# -- VAT -----------------------------------------------------------------------------------

def test_vat_direction_is_the_dominant_eigenvector_of_the_kl_hessian():
    """On a linear softmax model the power iteration must find the direction in
    which the prediction changes fastest: compare with the numerical Hessian."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3)])
    rng = np.random.default_rng(0)
    model.set_weights([rng.normal(size=(3, 3)).astype("float32") * np.array([3.0, 0.3, 0.1],
                       dtype="float32")[:, None], np.zeros(3, "float32")])
    x = rng.normal(size=(1, 3)).astype("float32")
    policy = policies.VAT(1.0, xi=1e-2, iterations=5)
    adversarial = np.asarray(policy.perturb(model, x))
    r = (adversarial - x)[0]
    assert np.linalg.norm(r) == pytest.approx(1.0, rel=1e-4)
    # Hessian of KL(p(x) || p(x + r)) at r = 0 for a linear model: Wᵀ (diag(p) - p pᵀ) W.
    weights = model.get_weights()[0].astype("float64")
    p = _softmax(x.astype("float64") @ weights)[0]
    hessian = weights @ (np.diag(p) - np.outer(p, p)) @ weights.T
    top = np.linalg.eigh(hessian)[1][:, -1]
    assert abs(np.dot(r, top)) > 0.99


def test_vat_takes_unlabeled_examples_and_freezes_batchnorm_statistics(digits):
    (x_train, y_train), _ = digits
    x, y = x_train[:64], y_train[:64].copy()
    y[16:] = -1  # unlabeled

    def bn_model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                 keras.layers.BatchNormalization(momentum=0.5),
                                 keras.layers.Dense(10)])

    base = bn_model()
    model = compile_classifier(kb.BidirectionalModel(base, policies.VAT(2.0), seed=0),
                               optimizer=keras.optimizers.SGD(0.0))
    logs = model.train_on_batch(x, y, return_dict=True)
    # Only the clean training pass moved BatchNorm's statistics: compare with a plain
    # training-mode call of an identical model on the clean batch.
    reference = bn_model()
    reference(x, training=True)
    bn, bn_ref = base.layers[1], reference.layers[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), bn_ref.moving_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), bn_ref.moving_variance.numpy(),
                               atol=1e-6)
    # The clean loss and accuracy are over the 16 labeled examples only.
    logits = keras.ops.convert_to_numpy(reference(x, training=True))
    ce = -np.log(_softmax(logits.astype("float64"))[np.arange(16), y[:16]]).mean()
    np.testing.assert_allclose(logs["clean_loss"], ce, rtol=1e-4)
    accuracy = np.mean(np.argmax(logits[:16], -1) == y[:16])
    assert logs["accuracy"] == pytest.approx(accuracy)


def test_vat_rejects_labels_below_minus_one(digits):
    (x_train, y_train), _ = digits
    y = y_train[:64].copy()
    y[0] = -2
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(0), policies.VAT(1.0)))
    with pytest.raises(ValueError, match="-1 for unlabeled"):
        model.fit(x_train[:64], y, epochs=1, verbose=0)
    plain = compile_classifier(kb.BidirectionalModel(tiny_cnn(0), policies.PGD(0.1, steps=1)))
    y[0] = -1
    with pytest.raises(ValueError, match="Labels must lie in"):
        plain.fit(x_train[:64], y, epochs=1, verbose=0)


# -- augmentation -------------------------------------------------------------------------

def test_augment_runs_the_layers_reproducibly_without_gradients(trained_plain, small_batch):
    x, y = small_batch
    policy = policies.Augment(keras.layers.RandomFlip("horizontal"), **CLIP)
    context = _context(trained_plain, x, y, seed=3)
    calls = []
    context.loss_and_gradients = lambda *a, **k: calls.append(1)  # must not be used
    out = np.asarray(policy.generate(context, [keras.ops.convert_to_tensor(x)], [])[0][0])
    flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
    same = np.all(out == x, axis=(1, 2, 3))
    assert np.all(flipped | same) and flipped.sum() > 10 and same.sum() > 10
    assert not calls
    again = policy.generate(_context(trained_plain, x, y, seed=3), [keras.ops.convert_to_tensor(x)], [])
    np.testing.assert_array_equal(out, np.asarray(again[0][0]))


def test_worst_of_k_never_picks_a_lower_loss_than_a_random_candidate(trained_plain, small_batch):
    x, y = small_batch
    policy = policies.WorstOfK(SPATIAL, k=6, **CLIP)
    xt = [keras.ops.convert_to_tensor(x)]
    # Two contexts with the same seed draw the same candidates.
    candidates, losses = policy.candidates(_context(trained_plain, x, y, seed=5), xt)
    chosen = policy.generate(_context(trained_plain, x, y, seed=5), xt, [])[0][0]
    losses = np.asarray(losses)
    chosen_loss = np.asarray(_context(trained_plain, x, y).loss([chosen]))
    # The chosen candidate's loss is the per-example maximum over the k draws...
    np.testing.assert_allclose(chosen_loss, losses.max(axis=0), rtol=1e-5, atol=1e-6)
    # ...so it is never below a randomly picked candidate of the same draw.
    pick = np.random.default_rng(0).integers(0, 6, size=len(x))
    assert np.all(chosen_loss >= losses[pick, np.arange(len(x))] - 1e-6)
    # And the candidates really are k different augmentations of each example.
    stacked = np.asarray(candidates[0]).reshape(6, len(x), -1)
    assert np.mean(np.abs(stacked[0] - stacked[1]).max(axis=1) > 0) > 0.5


def test_augmentation_policies_refuse_perturbation_points():
    tokens = keras.Input((4,), dtype="int32")
    h = kb.layers.PerturbationPoint(name="emb")(keras.layers.Embedding(10, 4)(tokens))
    model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    wrapped = compile_classifier(kb.BidirectionalModel(model, policies.Augment(SPATIAL)))
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ValueError, match="cannot act on PerturbationPoint"):
        wrapped.fit(np.zeros((8, 4), "int32"), np.zeros(8, "int32"), epochs=1, verbose=0)
    # The refused fit leaves the model as it was (JAX's fit empties the variables while
    # it runs: keras_bidir.backend.jax.fit_guard gives them back).
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    assert np.isfinite(wrapped.predict(np.zeros((2, 4), "int32"), verbose=0)).all()


# -- composition -------------------------------------------------------------------------

def test_compose_applies_policies_in_order(trained_plain, small_batch):
    x, y = small_batch
    first, second = policies.FGSM(0.05, **CLIP), policies.FGSM(0.05, **CLIP)
    composed = policies.Compose([first, second])
    out = np.asarray(composed.perturb(trained_plain, x, y))
    expected = np.asarray(second.perturb(trained_plain, np.asarray(first.perturb(trained_plain, x, y)), y))
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert np.abs(out - x).max() <= 0.1 + 1e-6 and np.abs(out - x).max() > 0.05 + 1e-6


def test_compose_and_random_choice_refuse_replaying_or_stateful_members():
    with pytest.raises(ValueError, match="Use it on its own"):
        policies.Compose([policies.Augment(SPATIAL), policies.FreeAdversarial(0.1)])
    with pytest.raises(ValueError, match="Use it on its own"):
        policies.RandomChoice([policies.FreeLB(0.1)])
    with pytest.raises(ValueError, match="own loss"):
        policies.RandomChoice([policies.TRADES(0.1), policies.PGD(0.1)])
    with pytest.raises(ValueError, match="non-negative"):
        policies.RandomChoice([policies.PGD(0.1), policies.FGSM(0.1)], weights=[1.0])


@pytest.mark.parametrize("weights, index", [([1.0, 0.0], 0), ([0.0, 1.0], 1)])
def test_random_choice_follows_its_weights(trained_plain, small_batch, weights, index):
    x, y = small_batch
    members = [policies.FGSM(0.1, **CLIP), policies.FGSM(0.1, direction=-1, **CLIP)]
    chooser = policies.RandomChoice(members, weights=weights)
    out = np.asarray(chooser.perturb(trained_plain, x, y))
    np.testing.assert_allclose(out, np.asarray(members[index].perturb(trained_plain, x, y)),
                               atol=1e-6)


def test_random_choice_mixes_over_batches(trained_plain, small_batch):
    x, y = small_batch
    members = [policies.FGSM(0.1, **CLIP), policies.FGSM(0.1, direction=-1, **CLIP)]
    chooser = policies.RandomChoice(members, weights=[0.5, 0.5])
    up = np.asarray(members[0].perturb(trained_plain, x, y))
    seeds = keras.random.SeedGenerator(0)
    picks = [np.allclose(np.asarray(chooser.perturb(trained_plain, x, y, seed=seeds)), up)
             for _ in range(12)]
    assert 0 < sum(picks) < 12


# -- serialization and training ---------------------------------------------------------

NEW_POLICIES = {
    "trades": lambda: policies.TRADES(0.1, beta=2.0, steps=2, **CLIP),
    "vat": lambda: policies.VAT(1.0, xi=1e-3),
    "augment": lambda: policies.Augment(SPATIAL, **CLIP),
    "randaugment": lambda: policies.Augment(keras.layers.RandAugment(value_range=(0, 1))),
    "worst_of_k": lambda: policies.WorstOfK(SPATIAL, k=3, **CLIP),
    "compose": lambda: policies.Compose([policies.Augment(SPATIAL),
                                         policies.PGD(0.1, steps=2, **CLIP)]),
    "random_choice": lambda: policies.RandomChoice([policies.Augment(SPATIAL),
                                                    policies.FGSM(0.1, **CLIP)], [0.3, 0.7]),
}


@pytest.mark.parametrize("name", sorted(NEW_POLICIES))
def test_new_policies_train_save_and_load(name, digits, tmp_path):
    (x_train, y_train), _ = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(0), NEW_POLICIES[name](), seed=0))
    history = model.fit(x_train[:256], y_train[:256], batch_size=64, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    model.save(tmp_path / "m.keras")
    restored = keras.models.load_model(tmp_path / "m.keras")
    assert type(restored.policy) is type(model.policy)
    # (JSON turns tuples into lists; compare the stored form.)
    assert (json.loads(json.dumps(restored.policy.get_config()))
            == json.loads(json.dumps(model.policy.get_config())))
    assert restored.clean_weight == model.clean_weight
    np.testing.assert_allclose(restored.predict(x_train[:8], verbose=0),
                               model.predict(x_train[:8], verbose=0), atol=1e-6)


@pytest.mark.parametrize("policy", [policies.TRADES(0.5, steps=2, norm="l2"), policies.VAT(0.5)],
                         ids=["trades", "vat"])
def test_divergence_policies_work_at_a_perturbation_point(policy):
    """Token embeddings of a text model: the divergence policies perturb the activation."""
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    h = kb.layers.PerturbationPoint(name="embeddings")(h)
    logits = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h))
    model = compile_classifier(kb.BidirectionalModel(keras.Model(tokens, logits), policy, seed=0))
    rng = np.random.default_rng(0)
    x = rng.integers(1, 20, (64, 6)).astype("int32")
    x[:, 4:] = 0  # padding, never perturbed
    y = (x[:, 0] > 10).astype("int32")
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["perturbation_norm"][-1] > 0
    assert history.history["loss"][-1] < history.history["loss"][0]
