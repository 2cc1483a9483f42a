"""JAX: training under `keras.distribution.DataParallel` matches one device.

The script runs in a fresh process: XLA splits the CPU into 2 devices only
when told before JAX starts. Runs in the JAX pass of the suite; the
TensorFlow pass tests tf.distribute (test_distribute.py).
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import BACKEND

pytestmark = [pytest.mark.backends, pytest.mark.skipif(
    BACKEND != "jax", reason="JAX's DataParallel: the JAX pass of `make test` runs it")]

SCRIPT = os.path.join(os.path.dirname(__file__), "data_parallel_script.py")

# Measured on the 2-core CPU machine: weights differ by at most 2.6e-6 (the
# all-reduce sums the two devices' halves in another order), losses by 2.4e-7.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    output = tmp_path_factory.mktemp("data_parallel") / "report.json"
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    run = subprocess.run([sys.executable, SCRIPT, str(output)], env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(output.read_text())


def test_two_devices_are_used(report):
    assert report["devices"] == 2 and report["jax_devices"] == 2
    # The weights live on both devices' mesh (replicated), not on one device.
    assert all("Mesh('batch': 2" in report[name]["sharding"]
               for name in report if isinstance(report[name], dict))


@pytest.mark.parametrize("policy", ["free", "atas", "sam"])
def test_data_parallel_matches_one_device(report, policy):
    result = report[policy]
    assert result["moved"] > 0.05  # training really changed the weights
    assert result["weight_max_abs_diff"] < WEIGHT_TOLERANCE
    diffs = result["metric_max_abs_diff"]
    for key in ("loss", "adv_loss"):
        assert diffs[key] < LOSS_TOLERANCE, (key, diffs[key])
    for key in ("accuracy", "adv_accuracy", "val_robust_accuracy", "epsilon_scale",
                "nonfinite_batches"):
        assert diffs[key] == 0.0, (key, diffs[key])
    # Free's δ and ATAS' per-example memory: the step sees the global batch, so the state is
    # the single-device state (measured with PGD and batch-prior FGSM too: at most 1.3e-6,
    # prior-guided FGSM's carried momentum; test_distribute.py runs both on TensorFlow).
    assert result["state_max_abs_diff"] < 1e-4
