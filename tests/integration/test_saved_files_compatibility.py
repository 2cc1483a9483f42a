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


def _layout(path):
    """What a .keras file holds, names aside: the config without the names and object ids
    that change from one session to the next, and every stored variable's path, shape and
    dtype."""
    import io
    import json
    import zipfile

    import h5py

    def unnamed(value):
        if isinstance(value, dict):
            return {k: unnamed(v) for k, v in value.items() if k not in ("name", "shared_object_id")}
        if isinstance(value, list):
            return [unnamed(v) for v in value]
        return value

    with zipfile.ZipFile(path) as archive:
        config = unnamed(json.loads(archive.read("config.json")))
        # compile(jit_compile="auto") is saved as what it meant on the saving backend.
        config["compile_config"].pop("jit_compile")
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        variables = []
        weights.visititems(lambda name, item: variables.append(
            (name, item.shape, str(item.dtype))) if isinstance(item, h5py.Dataset) else None)
    return config, sorted(variables)


def test_a_file_saved_under_one_backend_loads_and_predicts_the_same_under_the_other(
        digits, tmp_path):
    from conftest import BACKEND, compile_classifier, tiny_cnn

    # tests/data/backend_<name>_free.keras were saved under each backend by
    # tests/data/make_backend_files.py. The other backend's file loads here, in this process.
    _, (x_test, _) = digits
    other = "jax" if BACKEND == "tensorflow" else "tensorflow"
    model = keras.models.load_model(os.path.join(DATA, f"backend_{other}_free.keras"),
                                    safe_mode=True)
    # The policy and its persistent perturbation came back too.
    assert isinstance(model.policy, kb.policies.FreeAdversarial)
    assert [list(v.shape) for v in model.step_state.policy_variables] == [[32, 8, 8, 1]]
    assert np.abs(np.asarray(model.step_state.policy_variables[0])).max() > 0
    expected = np.load(os.path.join(DATA, f"backend_{other}_free_predictions.npy"))
    np.testing.assert_allclose(model.predict(x_test[:32], verbose=0), expected, atol=1e-5)
    # What this backend saves today is laid out exactly as the file the other backend's pass
    # loads (same config, same variables): the check holds for today's code, not only for the
    # committed files.
    model = compile_classifier(kb.BidirectionalModel(
        tiny_cnn(5), kb.policies.FreeAdversarial(0.1, replays=2, clip_min=0.0, clip_max=1.0),
        seed=0))
    (x, y), _ = digits
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    fresh = _layout(tmp_path / "model.keras")
    assert fresh == _layout(os.path.join(DATA, f"backend_{BACKEND}_free.keras"))
    # Across backends only the integer counters' dtypes differ (the optimizer's iteration
    # count and the seed state: int64 on TensorFlow, int32 / uint32 on JAX; Keras converts
    # them on loading).
    config, variables = _layout(os.path.join(DATA, f"backend_{other}_free.keras"))
    assert config == fresh[0]
    assert [v[:2] for v in variables] == [v[:2] for v in fresh[1]]
