"""Saved files: those of the previous version (0.1, commit 761365b) load, predict the same and train on; a file saved under one backend loads under the other."""

import os

import keras
import numpy as np
import pytest

import keras_bidir as kb

pytestmark = pytest.mark.backends  # `make test` runs these on both backends

DATA = os.path.join(os.path.dirname(__file__), "..", "data")


@pytest.mark.parametrize("name,policy_class", [("pgd", kb.policies.PGD),
                                               ("free", kb.policies.FreeAdversarial)])
def test_files_saved_by_version_0_1_load_predict_and_train(name, policy_class, digits):
    (x, y), (x_test, _) = digits
    model = keras.models.load_model(os.path.join(DATA, f"v0_1_{name}.keras"), safe_mode=True)
    assert isinstance(model, kb.BidirectionalModel) and isinstance(model.policy, policy_class)
    assert model.weight_policy is None and model.clean_weight == 0.0
    expected = np.load(os.path.join(DATA, f"v0_1_{name}_predictions.npy"))
    np.testing.assert_allclose(model.predict(x_test[:16], verbose=0), expected, atol=1e-6)
    if name == "free":  # the persistent perturbation δ came back too
        assert model.step_state.policy_variables and np.abs(model.step_state.policy_variables[0].numpy()).max() > 0
    logs = model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and logs["perturbation_norm"][0] > 0
    loss, accuracy = model.evaluate(x_test[:64], np.zeros(64, "int64"), verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0


_LOAD_IN_OTHER_BACKEND = """
import sys, numpy as np, keras, keras_bidir as kb
model = keras.models.load_model(sys.argv[1], safe_mode=True)
assert keras.backend.backend() == sys.argv[3], keras.backend.backend()
np.save(sys.argv[2], model.predict(np.load(sys.argv[2] + ".x.npy"), verbose=0))
print(type(model.policy).__name__, [list(v.shape) for v in model.step_state.policy_variables])
"""


def test_a_file_saved_under_one_backend_loads_and_predicts_the_same_under_the_other(
        digits, tmp_path):
    import subprocess
    import sys

    from conftest import BACKEND, compile_classifier, tiny_cnn

    (x, y), (x_test, _) = digits
    model = compile_classifier(kb.BidirectionalModel(
        tiny_cnn(5), kb.policies.FreeAdversarial(0.1, replays=2, clip_min=0.0, clip_max=1.0)))
    model.fit(x[:128], y[:128], batch_size=32, epochs=1, verbose=0)
    path, out = str(tmp_path / "model.keras"), str(tmp_path / "predictions.npy")
    model.save(path)
    np.save(out + ".x.npy", x_test[:32])
    other = "jax" if BACKEND == "tensorflow" else "tensorflow"
    run = subprocess.run([sys.executable, "-c", _LOAD_IN_OTHER_BACKEND, path, out, other],
                         env={**os.environ, "KERAS_BACKEND": other}, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    # The policy and its persistent perturbation came back too.
    assert run.stdout.split()[0] == "FreeAdversarial" and "[[32, 8, 8, 1]]" in run.stdout
    np.testing.assert_allclose(np.load(out), model.predict(x_test[:32], verbose=0), atol=1e-5)
