"""GPU-style settings, tested on the CPU: mixed precision, XLA, tracing."""

import keras
import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import policies
from conftest import (ONE_OF_EACH_KIND, RecordGradients, compile_classifier, independent_gradients, tiny_cnn,
                      training_policies)

CLIP = {"clip_min": 0.0, "clip_max": 1.0}

ALL = training_policies()


@pytest.fixture
def mixed_precision(request):
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy("float32")


# The pass on the second backend takes float16 (loss scaling) with one policy of each
# kind: an attack loop, replays, accumulated gradients, carried state, clean outputs, a
# per-example memory.
SECOND_PASS = (policies.PGD, policies.FreeAdversarial, policies.FreeLB, policies.MART,
               policies.ATAS)


def _mixed_precision_cases():
    """Both precisions with one policy of each kind (conftest); `make test-all` runs every policy."""
    cases = []
    for precision in ("mixed_float16", "mixed_bfloat16"):
        for index, policy in enumerate(ALL):
            second = precision == "mixed_float16" and (
                isinstance(policy, SECOND_PASS) or index == 8)  # index 8: batch-prior FGSM
            slow = index not in ONE_OF_EACH_KIND
            marks = [pytest.mark.backends] if second else [pytest.mark.slow] if slow else []
            cases.append(pytest.param(precision, policy, marks=marks,
                                      id=f"{type(policy).__name__}{index}-{precision}"))
    return cases


@pytest.mark.parametrize("mixed_precision,policy", _mixed_precision_cases(), indirect=["mixed_precision"])
def test_mixed_precision_every_policy(mixed_precision, policy, small_batch):
    x, y = small_batch
    model = kb.BidirectionalModel(tiny_cnn(), policy, seed=0)
    compile_classifier(model)
    if mixed_precision == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, batch_size=32, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    norm = history["perturbation_norm"][-1]
    if isinstance(policy, (policies.FGSM, policies.RandomFGSM, policies.PGD, policies.APGD)):
        assert norm == pytest.approx(0.1, rel=0.02)  # these end on the ε-sphere (L∞)
    elif isinstance(policy, policies.NFGSM):
        assert 0.1 < norm <= 0.3 * 1.02  # noise up to 2ε plus an ε step, never projected
    else:
        assert 0 < norm <= 0.1 * 1.02 or isinstance(policy, policies.GaussianNoise)
    assert all(np.isfinite(w.numpy()).all() for w in model.base_model.weights)


@pytest.mark.backends
def test_float16_input_gradient_is_unscaled(small_batch):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = small_batch

        base = tiny_cnn(3)
        model = kb.BidirectionalModel(base, RecordGradients())
        model.compile(optimizer=keras.optimizers.SGD(0.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(x, y)
        expected, _ = independent_gradients(
            lambda xt: keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
                y, base(xt, training=True)), x)
        recorded = model.step_state.policy_variables[0].numpy()
        # Loss scale is 2**15 at the start; unscaled, the gradients agree to float16 precision.
        assert np.abs(recorded).max() < 10 * np.abs(expected).max()
        np.testing.assert_allclose(recorded, expected, rtol=0.05, atol=2e-4)
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.backends
def test_float16_overflow_skips_weights_and_perturbation_state(small_batch):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = small_batch
        model = kb.BidirectionalModel(tiny_cnn(), policies.FreeAdversarial(0.1, replays=1, **CLIP))
        compile_classifier(model)
        model.fit(x, y, batch_size=64, epochs=1, verbose=0)
        weights = [w.numpy().copy() for w in model.base_model.weights]
        state = model.step_state.policy_variables[0].numpy().copy()
        bad = x.copy()
        bad[0, 0, 0, 0] = np.inf
        model.train_on_batch(bad, y)
        for before, after in zip(weights, model.base_model.weights):
            np.testing.assert_array_equal(before, after.numpy())
        np.testing.assert_array_equal(state, model.step_state.policy_variables[0].numpy())
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.backends
def test_no_retracing_after_the_first_epoch(digits):
    (x, y), _ = digits
    traces = []

    class Counting(kb.BidirectionalModel):
        def train_step(self, *args):  # (data) on TensorFlow, (state, data) on JAX
            traces.append(1)  # Python runs only while tracing.
            return super().train_step(*args)

    model = Counting(tiny_cnn(), policies.PGD(0.1, steps=2, **CLIP))
    compile_classifier(model)
    counts = []
    model.fit(x[:300], y[:300], batch_size=64, epochs=4, verbose=0,  # 4 full batches + 44
              callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda e, l: counts.append(len(traces)))])
    assert counts[0] >= 1
    assert counts == [counts[0]] * 4
