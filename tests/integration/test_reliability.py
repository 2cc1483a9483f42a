"""Bad batches, bad configuration and recovery."""

import warnings

import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import policies
from conftest import compile_classifier, tiny_cnn

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


@pytest.mark.parametrize("policy", [
    policies.PGD(0.1, steps=2, **CLIP),
    policies.FreeAdversarial(0.1, replays=2, **CLIP),
    policies.FGSM(0.1, **CLIP),
], ids=lambda p: type(p).__name__)
@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_batch_mid_epoch_is_skipped(policy, poison, digits):
    (x, y), _ = digits
    x, y = x[:256].copy(), y[:256]
    x[130] = poison  # the third batch of 64
    model = kb.BidirectionalModel(tiny_cnn(), policy, seed=0)
    compile_classifier(model)
    with pytest.warns(UserWarning, match="produced NaN or Inf .* skipped") as record:
        history = model.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0).history
    assert sum("produced NaN or Inf" in str(w.message) for w in record) == 1  # warned once
    assert history["nonfinite_batches"] == [1.0, 1.0]
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["adv_loss"]).all()
    # Every logged quantity is a mean over the finite steps (perturbation_norm was NaN).
    assert np.isfinite(history["perturbation_norm"]).all()
    if isinstance(policy, policies.FGSM):  # a full-size step: each example's L∞ norm is ε
        np.testing.assert_allclose(history["perturbation_norm"], 0.1, rtol=1e-5)
    assert np.isfinite(history["adv_accuracy"]).all() and np.isfinite(history["accuracy"]).all()
    assert all(np.isfinite(w.numpy()).all() for w in model.base_model.weights)
    assert all(np.isfinite(v.numpy()).all() for v in model.step_state.policy_variables)
    replays = policy.replays
    assert model.optimizer.iterations.numpy() == 2 * 3 * replays  # 3 good batches per epoch


def test_skipped_batch_leaves_weights_and_state_untouched(small_batch):
    x, y = small_batch
    model = kb.BidirectionalModel(tiny_cnn(), policies.FreeAdversarial(0.1, replays=2, **CLIP))
    compile_classifier(model)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    before = [v.numpy().copy() for v in model.variables]
    bad = x.copy()
    bad[3] = np.nan
    model.train_on_batch(bad, y)
    for b, v in zip(before, model.variables):
        if "nonfinite" not in v.path:
            np.testing.assert_array_equal(b, v.numpy(), err_msg=v.path)


def test_clean_run_does_not_warn(small_batch):
    x, y = small_batch
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1, **CLIP)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.fit(x, y, epochs=1, verbose=0)


@pytest.mark.parametrize("labels", [[0, 3, 10], [-1, 2, 3]])
def test_labels_out_of_range_are_a_clear_error(labels, small_batch):
    x, _ = small_batch
    y = np.resize(np.asarray(labels), len(x))
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1, **CLIP)))
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 10\).*final Dense layer"):
        model.fit(x, y, epochs=1, verbose=0)


def test_input_shape_mismatch_and_empty_data_are_clear_errors(small_batch):
    x, y = small_batch
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1, **CLIP)))
    with pytest.raises(ValueError, match=r"expects examples of shape \(8, 8, 1\).*\(8, 8\).*x\[\.\.\., None\]"):
        model.fit(x[..., 0], y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"expects examples of shape \(8, 8, 1\).*\(4, 4, 1\)"):
        model.fit(x[:, :4, :4], y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="training data is empty"):
        model.fit(x[:0], y[:0], epochs=1, verbose=0)
    import tensorflow as tf

    empty = tf.data.Dataset.from_tensor_slices((x, y)).batch(128, drop_remainder=True)
    with pytest.raises(ValueError, match=r"training dataset is empty \(cardinality 0\)"):
        model.fit(empty, epochs=1, verbose=0)


# -- errors that say what to do (each was a StopIteration, IndexError or graph error) --------

def test_evaluation_of_empty_data_or_labels_beyond_the_classes_is_refused(trained_plain, digits):
    _, (x, y) = digits
    with pytest.raises(ValueError, match="The evaluation data is empty"):
        kb.evaluate_robustness(trained_plain, (x[:0], y[:0]), [0.1], verbose=0)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 10\) .* ranges over \[5, 14\]"):
        kb.evaluate_robustness(trained_plain, (x[:20], y[:20] + 5), [0.1], verbose=0)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 10\)"):
        kb.evaluation.robust_accuracy(trained_plain, x[:20], y[:20] + 5, None)


@pytest.mark.backends
def test_a_dataset_label_beyond_the_classes_is_refused_in_fit(digits):
    import tensorflow as tf

    (x, y), _ = digits
    labels = y[:128].copy()
    labels[100] = 10  # the fourth batch: the first batch fit() peeks at is fine
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1, **CLIP)))
    dataset = tf.data.Dataset.from_tensor_slices((x[:128], labels)).batch(32)
    with pytest.raises(ValueError, match=r"Labels must lie in \[0, 10\) .* over \[\d, 10\]"):
        model.fit(dataset, epochs=1, verbose=0)


@pytest.mark.backends
def test_an_index_added_after_batching_is_refused_with_the_order_to_use(digits):
    import tensorflow as tf

    (x, y), _ = digits
    model = compile_classifier(kb.BidirectionalModel(
        tiny_cnn(), policies.ATAS(0.1, num_examples=128, **CLIP)))
    batched_first = kb.example_index.with_example_index(
        tf.data.Dataset.from_tensor_slices((x[:128], y[:128])).batch(32))
    with pytest.raises(ValueError, match=r"applied after batch\(\).*with_example_index\(dataset\)"
                                         r"\.shuffle\(\.\.\.\)\.batch\(\.\.\.\)"):
        model.fit(batched_first, epochs=1, verbose=0)


def test_batch_checks_keep_the_datasets_structure_and_translate_their_assertion():
    import tensorflow as tf

    from keras_bidir import data_utils

    inputs_only = tf.data.Dataset.from_tensor_slices({"x": np.zeros((4, 2), "float32")}).batch(2)
    assert data_utils.checked_labels(inputs_only, 3).element_spec == inputs_only.element_spec
    bad = tf.data.Dataset.from_tensor_slices((np.zeros((4, 2), "float32"),
                                              np.array([0, 1, 5, 2]))).batch(2)
    checked = data_utils.checked_labels(bad, 3)
    assert checked.element_spec == bad.element_spec
    with pytest.raises(Exception) as raised:
        list(checked)
    clear = data_utils.translate_label_error(raised.value, 3)
    assert "y ranges over [2, 5]" in str(clear)
    assert data_utils.translate_label_error(ValueError("something else"), 3) is None
