"""Safe loading and determinism."""

import json
import os
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import callbacks, policies
from conftest import compile_classifier, tiny_cnn

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


def test_every_object_loads_under_safe_mode(tmp_path, small_batch):
    x, y = small_batch
    for policy in [policies.FGSM(0.1), policies.RandomFGSM(0.1), policies.NFGSM(0.1),
                   policies.PGD(0.1, steps=2),
                   policies.FreeAdversarial(0.1, replays=2), policies.GaussianNoise(0.1),
                   policies.APGD(0.1, steps=3), policies.FreeLB(0.1, steps=2),
                   policies.PriorGuidedFGSM(0.1, momentum=0.3), policies.MART(0.1, steps=2)]:
        # Built with its policy state, untrained: what is saved is the same (the trained
        # round trip of every policy: test_bidirectional_model.py::test_save_and_load_round_trip).
        model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policy))
        model(x[:2])
        model.build_policy_state(x[:32])
        model.optimizer.build(model.trainable_variables)
        path = tmp_path / f"{type(policy).__name__}.keras"
        model.save(path)
        restored = keras.models.load_model(path, safe_mode=True)
        assert restored.policy == policy
    for callback in [callbacks.RobustAccuracy(None, policies.PGD(0.1)), callbacks.EpsilonSchedule(2),
                     callbacks.CatastrophicOverfittingGuard(), callbacks.PerturbationStats()]:
        config = json.loads(json.dumps(keras.saving.serialize_keras_object(callback)))
        with keras.saving.custom_object_scope({}):
            restored = keras.saving.deserialize_keras_object(config, safe_mode=True)
        assert restored.get_config() == callback.get_config()


def test_crafted_config_cannot_run_code(tmp_path, small_batch):
    """A .keras file whose config smuggles a lambda is refused under safe_mode."""
    x, y = small_batch
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(), policies.FGSM(0.1)))
    model.fit(x, y, epochs=1, verbose=0)
    good = tmp_path / "good.keras"
    model.save(good)
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(good) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(files["config.json"])
    lambda_layer = keras.saving.serialize_keras_object(
        keras.layers.Lambda(lambda t: t))
    # Replace the lambda's bytecode with code that would create the marker file.
    code = compile(f"open({str(marker)!r}, 'w').write('x')", "<crafted>", "exec")
    import marshal, codecs  # noqa: E401
    lambda_layer["config"]["function"]["config"]["code"] = codecs.encode(
        marshal.dumps(code), "base64").decode()
    layers = config["config"]["base_model"]["config"]["layers"]
    layers.insert(1, lambda_layer)
    files["config.json"] = json.dumps(config).encode()
    crafted = tmp_path / "crafted.keras"
    with zipfile.ZipFile(crafted, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="safe_mode"):
        keras.models.load_model(crafted, safe_mode=True)
    assert not marker.exists()
    # The CLI loads with safe_mode=True unless --unsafe is given.
    result = subprocess.run([sys.executable, "-m", "keras_bidir_cli", "evaluate", str(crafted),
                             "--limit", "10", "--output-dir", str(tmp_path / "out")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "safe_mode" in result.stderr
    assert not marker.exists()


@pytest.mark.slow  # make test: test_resume.py's seeded processes (PGD, Free) agree bit for bit
def test_two_seeded_runs_give_identical_weights(digits):
    (x, y), _ = digits
    script = (
        "import keras, numpy as np, tensorflow as tf, keras_bidir as kb, sys\n"
        "keras.utils.set_random_seed(1); tf.config.experimental.enable_op_determinism()\n"
        "(x, y), _ = kb.datasets.load_digits()\n"
        "from keras_bidir_cli.demo import digits_cnn\n"
        "m = kb.BidirectionalModel(digits_cnn(1), kb.policies.RandomFGSM(0.2, clip_min=0.0, clip_max=1.0), seed=3)\n"
        "m.compile('adam', keras.losses.SparseCategoricalCrossentropy(from_logits=True))\n"
        "m.fit(x[:512], y[:512], batch_size=64, epochs=2, verbose=0)\n"
        "np.save(sys.argv[1], np.concatenate([w.numpy().ravel() for w in m.weights]))\n"
    )
    paths = [f"/tmp/kb_determinism_{os.getpid()}_{run}.npy" for run in range(2)]
    runs = [subprocess.Popen([sys.executable, "-c", script, path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            for path in paths]  # two independent processes, side by side
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err.decode()[-2000:]
    outputs = [np.load(path) for path in paths]
    for path in paths:
        os.remove(path)
    np.testing.assert_array_equal(outputs[0], outputs[1])
