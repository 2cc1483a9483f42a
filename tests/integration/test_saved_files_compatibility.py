"""Files saved by the previous version (0.1, commit 761365b) load, predict the same and train on."""

import os

import keras
import numpy as np
import pytest

import keras_bidir as kb

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
        assert model._policy_state and np.abs(model._policy_state[0].numpy()).max() > 0
    logs = model.fit(x[:128], y[:128], batch_size=64, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0]) and logs["perturbation_norm"][0] > 0
    loss, accuracy = model.evaluate(x_test[:64], np.zeros(64, "int64"), verbose=0)
    assert np.isfinite(loss) and 0.0 <= accuracy <= 1.0
