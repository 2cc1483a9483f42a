"""Training under tf.distribute matches single-device training.

Both tests run in fresh processes: logical devices and TF_CONFIG must be set
before TensorFlow starts.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import BACKEND

pytestmark = [pytest.mark.backends, pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="tf.distribute: the TensorFlow pass runs it (JAX: test_data_parallel.py)")]

SCRIPT = os.path.join(os.path.dirname(__file__), "distribute_script.py")

# Tolerances, measured on the 2-core CPU machine: weights differ by at most
# 1.2e-7 (float32 rounding of the cross-replica gradient sum), losses by 1.8e-7,
# accuracies and robust accuracies not at all.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def mirrored_report(tmp_path_factory):
    output = tmp_path_factory.mktemp("mirrored") / "report.json"
    run = subprocess.run([sys.executable, SCRIPT, "mirrored", str(output)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(output.read_text())


@pytest.mark.parametrize("policy", ["pgd", "free", "prior", "mart"])
def test_mirrored_strategy_matches_single_device(mirrored_report, policy):
    assert mirrored_report["replicas"] == 2
    report = mirrored_report[policy]
    assert report["moved"] > 0.05  # training really changed the weights
    assert report["weight_max_abs_diff"] < WEIGHT_TOLERANCE
    diffs = report["metric_max_abs_diff"]
    for key in ("loss", "adv_loss"):
        assert diffs[key] < LOSS_TOLERANCE, (key, diffs[key])
    # Per-replica metrics are aggregated over the global batch: accuracies, the
    # perturbation norm and the callbacks' robust accuracy (every epoch) are identical.
    for key in ("accuracy", "adv_accuracy", "val_robust_accuracy", "epsilon_scale",
                "nonfinite_batches"):
        assert diffs[key] == 0.0, (key, diffs[key])
    # PGD, free training and prior-guided FGSM end on the ε-box's corners, so their mean
    # perturbation norm is exactly ε on both; MART's is not, and the replicas' means are summed
    # in another order than one device's (measured: 3.7e-9).
    assert diffs["perturbation_norm"] <= 1e-7, diffs["perturbation_norm"]


def test_free_adversarial_state_is_kept_per_replica(mirrored_report):
    report = mirrored_report["free"]
    # One block per replica (2 × 16 rows for the global batch of 32), gathered
    # after each step: exactly the perturbation single-device training keeps.
    assert report["state_shapes"] == [[32, 64]]
    assert report["state_max_abs_diff"] == 0.0


def test_prior_guided_fgsm_state_is_kept_per_replica(mirrored_report):
    report = mirrored_report["prior"]
    # The carried perturbation and the carried momentum direction, one block per replica.
    assert report["state_shapes"] == [[32, 64], [32, 64]]
    assert report["state_max_abs_diff"] < WEIGHT_TOLERANCE


def test_per_example_memory_refuses_to_run_under_a_strategy(mirrored_report):
    message = mirrored_report["per_example_memory_error"]
    assert message and "memory per training example" in message and "one device" in message


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_mirrored_strategy_workers_agree(tmp_path):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    for index in range(2):
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen(
            [sys.executable, SCRIPT, "worker", str(tmp_path / f"worker{index}.npy")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        # Bounded: a worker that waits for a lost peer must not hang the suite.
        outputs = [p.communicate(timeout=300) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs):
        assert p.returncode == 0, err[-3000:]
    first, second = (np.load(tmp_path / f"worker{i}.npy") for i in range(2))
    assert np.all(np.isfinite(first))
    # Both workers hold bit-identical weights after Free training.
    np.testing.assert_array_equal(first, second)
    reports = [json.loads((tmp_path / f"worker{i}.npy.json").read_text()) for i in range(2)]
    assert reports[0]["replicas"] == 2
    logs = reports[0]["logs"]["free"]
    # Metrics are aggregated over both workers: each reports the same values.
    assert logs == reports[1]["logs"]["free"]
    assert {"loss", "adv_loss", "accuracy", "val_loss", "val_accuracy"} <= set(logs)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["val_accuracy"] <= 1.0
