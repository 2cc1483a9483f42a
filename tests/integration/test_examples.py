"""Every example's --smoke mode runs and its result means what the example says.

The full smoke runs, whose figures show the example's effect, are `slow` (`make test-all`);
`make test` runs each example end to end for one epoch (its fast twin).
"""

import importlib.util
import os

import keras
import numpy as np
import pytest

import keras_bidir as kb

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_mnist_pgd_smoke(tmp_path):
    report = _load("mnist_pgd").main(["--smoke", "--output-dir", str(tmp_path)])
    assert report.clean_accuracy > 0.85
    assert report.robust_accuracy[0.2] > 0.3  # worst case over FGSM, PGD-20x2, APGD-CE/DLR
    assert report.passed_checks
    base = keras.models.load_model(tmp_path / "mnist_pgd_base.keras")
    assert not isinstance(base, kb.BidirectionalModel)  # the deployable plain model


def test_mnist_pgd_runs_end_to_end_in_one_epoch(tmp_path):
    report = _load("mnist_pgd").main(["--smoke", "--epochs", "1", "--output-dir", str(tmp_path)])
    assert report.epsilons == [0.2]
    assert 0.0 <= report.robust_accuracy[0.2] <= report.clean_accuracy
    assert report.clean_accuracy > 0.3  # one epoch of PGD training on digits already learns
    base = keras.models.load_model(tmp_path / "mnist_pgd_base.keras")
    assert not isinstance(base, kb.BidirectionalModel)


@pytest.mark.slow
def test_cifar10_fast_at_smoke(tmp_path):
    report, guard = _load("cifar10_fast_at").main(["--smoke", "--output-dir", str(tmp_path)])
    epsilon = 8 / 255
    assert report.clean_accuracy > 0.7
    assert report.robust_accuracy[epsilon] > 0.5
    assert report.passed_checks
    assert guard.events == []  # no catastrophic overfitting in this short run
    restored = keras.models.load_model(tmp_path / "cifar10_fast_at_base.keras")
    assert restored.name == "preact_resnet"


def test_cifar10_fast_at_runs_end_to_end_in_one_epoch(tmp_path):
    report, guard = _load("cifar10_fast_at").main(
        ["--smoke", "--epochs", "1", "--output-dir", str(tmp_path)])
    epsilon = 8 / 255
    assert 0.0 <= report.robust_accuracy[epsilon] <= report.clean_accuracy <= 1.0
    assert guard.events == []
    restored = keras.models.load_model(tmp_path / "cifar10_fast_at_base.keras")
    assert restored.name == "preact_resnet"


def test_cyclic_learning_rate_is_triangular_and_serializable():
    module = _load("cifar10_fast_at")
    schedule = module.CyclicLearningRate(0.2, total_steps=100, rise_fraction=0.4)
    values = [float(schedule(step)) for step in (0, 20, 40, 70, 100)]
    np.testing.assert_allclose(values, [0.0, 0.1, 0.2, 0.1, 0.0], atol=1e-6)
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert float(clone(20)) == float(schedule(20))


@pytest.mark.slow
def test_add_to_existing_model_smoke(tmp_path):
    plain, robust, ((_, _), (x_test, y_test)) = _load("add_to_existing_model").main(
        ["--smoke", "--output-dir", str(tmp_path)])
    attack = kb.policies.PGD(0.2, steps=20, clip_min=0.0, clip_max=1.0)
    plain_robust = kb.evaluation.robust_accuracy(plain, x_test, y_test, attack)
    robust_robust = kb.evaluation.robust_accuracy(robust, x_test, y_test, attack)
    assert robust_robust > plain_robust + 0.1
    # Both saved files are plain Keras models with the same architecture.
    a = keras.models.load_model(tmp_path / "plain.keras")
    b = keras.models.load_model(tmp_path / "robust.keras")
    assert [w.shape for w in a.get_weights()] == [w.shape for w in b.get_weights()]


def test_add_to_existing_model_runs_end_to_end_in_one_epoch(tmp_path):
    plain, robust, _ = _load("add_to_existing_model").main(
        ["--smoke", "--epochs", "1", "--output-dir", str(tmp_path)])
    assert isinstance(robust, kb.BidirectionalModel) and not isinstance(plain, kb.BidirectionalModel)
    assert any(not np.allclose(a, b) for a, b in zip(plain.get_weights(),
                                                      robust.base_model.get_weights()))
    a = keras.models.load_model(tmp_path / "plain.keras")
    b = keras.models.load_model(tmp_path / "robust.keras")
    assert [w.shape for w in a.get_weights()] == [w.shape for w in b.get_weights()]
