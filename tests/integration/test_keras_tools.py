"""BidirectionalModel behaves like any keras.Model with Keras' own tools."""

import os

import keras
import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import policies
from conftest import compile_classifier, every_policy_cases, tiny_cnn

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


def test_standard_callbacks_work_unchanged(digits, tmp_path):
    (x, y), (xv, yv) = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.RandomFGSM(0.1, **CLIP)))
    history = model.fit(
        x[:256], y[:256], batch_size=64, epochs=3, verbose=0, validation_data=(xv[:64], yv[:64]),
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(tmp_path / "ckpt.keras", monitor="val_accuracy"),
            keras.callbacks.TensorBoard(log_dir=str(tmp_path / "tb")),
            keras.callbacks.CSVLogger(tmp_path / "log.csv"),
        ],
    )
    assert len(history.history["loss"]) == 3
    assert keras.models.load_model(tmp_path / "ckpt.keras").policy == model.policy
    assert any(name.startswith("events") for _, _, files in os.walk(tmp_path / "tb") for name in files)
    header = (tmp_path / "log.csv").read_text().splitlines()[0]
    assert "adv_accuracy" in header and "val_accuracy" in header


def test_summary_lists_the_base_model(capsys):
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1)))
    model.build((None, 8, 8, 1))
    model.summary()
    assert "sequential" in capsys.readouterr().out.lower()


def _train(policy, x, y, jit):
    model = kb.BidirectionalModel(tiny_cnn(1), policy, seed=7)
    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history
    return model, history


@pytest.mark.parametrize("policy", [
    policies.FGSM(0.1, **CLIP),
    policies.PGD(0.1, steps=2, random_start=False, **CLIP),
    policies.FreeAdversarial(0.1, replays=2, **CLIP),
], ids=lambda p: type(p).__name__)
def test_jit_compile_matches_graph_mode(policy, small_batch):
    x, y = small_batch
    graph, _ = _train(policy, x, y, jit=False)
    xla, _ = _train(policy, x, y, jit=True)
    for a, b in zip(graph.base_model.trainable_weights, xla.base_model.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("policy", [
    policies.RandomFGSM(0.1, **CLIP),
    policies.PGD(0.1, steps=2, restarts=2, **CLIP),
    pytest.param(policies.GaussianNoise(0.1, epsilon=0.1, **CLIP), marks=pytest.mark.slow),  # as RandomFGSM
    policies.APGD(0.1, steps=4, **CLIP),
], ids=lambda p: type(p).__name__)
def test_jit_compile_random_policies(policy, small_batch):
    # XLA draws different random numbers (another RNG algorithm): compare behaviour.
    x, y = small_batch
    _, graph = _train(policy, x, y, jit=False)
    _, xla = _train(policy, x, y, jit=True)
    assert np.isfinite(xla["loss"]).all()
    assert xla["perturbation_norm"][-1] == pytest.approx(graph["perturbation_norm"][-1], rel=0.05)
    assert xla["loss"][-1] == pytest.approx(graph["loss"][-1], rel=0.1)


@pytest.mark.parametrize("policy", every_policy_cases())
def test_steps_per_execution(policy, small_batch):
    x, y = small_batch
    model = kb.BidirectionalModel(tiny_cnn(), policy)
    compile_classifier(model, steps_per_execution=2)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    updates_per_batch = 1 if policy.kind == "accumulate" else policy.replays
    assert model.optimizer.iterations.numpy() == 4 * updates_per_batch
    assert np.isfinite(history["loss"][-1])


def test_eager_mode(small_batch):
    x, y = small_batch
    eager = kb.BidirectionalModel(tiny_cnn(), policies.FreeAdversarial(0.1, replays=2, **CLIP))
    compile_classifier(eager, run_eagerly=True)
    assert np.isfinite(eager.fit(x, y, batch_size=32, epochs=1, verbose=0).history["loss"][-1])
