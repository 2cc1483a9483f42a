"""A sharded evaluation: shards split the batches and each ends with one process's results."""

import json
import threading

import keras
import numpy as np
import pytest

import keras_bidir as kb
from conftest import compile_classifier
from keras_bidir.evaluation import shards as shards_lib
from keras_bidir.evaluation import state as state_lib

# `make test` runs the tests marked `backends` on both backends (tests/README.md: which)

# A cascade (survivors re-batched), an attack with two runs (restarts), 2 radii; 100 examples
# in batches of 16: 7 batches, the last ragged, an odd number to split between 2 shards.
SETTINGS = {"clip_min": 0.0, "clip_max": 1.0, "batch_size": 16, "cascade": True,
            "checks": False, "verbose": 0,
            "attacks": {"FGSM": kb.policies.FGSM(0.1),
                        "PGD-3x2": kb.policies.PGD(0.1, steps=3, restarts=2)}}


def _copy(model):
    """A model of its own for each shard (as each process has): Keras' JAX predict is not
    meant to run in two threads on one model."""
    twin = compile_classifier(keras.models.clone_model(model))
    twin.set_weights(model.get_weights())
    return twin


def _entries(path):
    return state_lib.read_state(path)[1]


def _run_shards(model, data, epsilons, state, count=2):
    reports, errors = {}, []

    def shard(index, twin):
        try:
            reports[index] = kb.evaluate_robustness(twin, data, epsilons, state=state,
                                                    shard=(index, count), **SETTINGS)
        except Exception as error:  # noqa: BLE001 (handed to the test thread)
            errors.append(error)

    threads = [threading.Thread(target=shard, args=(i, _copy(model))) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    return reports


@pytest.mark.backends
def test_shards_split_the_batches_and_each_reports_what_one_process_does(
        trained_plain, digits, tmp_path):
    _, (x, y) = digits
    data, epsilons = (x[:100], y[:100]), [0.05, 0.1]
    one = kb.evaluate_robustness(trained_plain, data, epsilons, state=tmp_path / "one.npz",
                                 **SETTINGS)
    reports = _run_shards(trained_plain, data, epsilons, tmp_path / "state.npz")
    assert reports[0].to_dict() == reports[1].to_dict() == one.to_dict()
    # Per example: the batches of every attack run, each attacked by exactly one shard, with
    # the result one process got (the same seed per batch, whoever runs it).
    first, second = (_entries(tmp_path / f"state.npz.{i}-of-2") for i in range(2))
    assert first and second and not set(first) & set(second)
    expected = _entries(tmp_path / "one.npz")
    assert sorted(expected) == sorted({**first, **second})
    for key, scores in {**first, **second}.items():
        np.testing.assert_array_equal(scores, expected[key], err_msg=key)


def test_a_shard_that_stops_fails_the_others_loudly(trained_plain, digits, tmp_path):
    _, (x, y) = digits
    data = (x[:40], y[:40])
    # Shard 1 never starts: shard 0 attacks its own batches, then gives up with the fix.
    with pytest.raises(RuntimeError, match=r"Shard 1 of 2 wrote nothing.*Start it again.*"
                                           r"No partial figure"):
        kb.evaluate_robustness(trained_plain, data, [0.1], state=tmp_path / "a.npz",
                               shard=shards_lib.Shard(0, 2, timeout=1.0), **SETTINGS)
    # Shard 0 failed (its file says why): shard 1 stops at once, naming the error.
    stopped = state_lib.read_state(tmp_path / "a.npz.0-of-2")[0]["failed"]["message"]
    assert stopped.startswith("RuntimeError: Shard 1 of 2 wrote nothing")
    with pytest.raises(RuntimeError, match="Shard 0 stopped with an error"):
        _stale_failure_is_ignored_then_a_new_one_stops(trained_plain, data, tmp_path)


def _stale_failure_is_ignored_then_a_new_one_stops(model, data, tmp_path):
    """Shard 0's failure above predates this run: shard 1 waits; a fresh one stops it."""
    meta, _ = state_lib.read_state(tmp_path / "a.npz.0-of-2")

    def fail_soon():
        import time
        time.sleep(1.0)
        state = state_lib.EvaluationState.__new__(state_lib.EvaluationState)
        state.path, state._meta = str(tmp_path / "a.npz.0-of-2"), meta
        state.fail("ValueError: out of memory")

    threading.Thread(target=fail_soon).start()
    kb.evaluate_robustness(model, data, [0.1], state=tmp_path / "a.npz",
                           shard=shards_lib.Shard(1, 2, timeout=60.0), **SETTINGS)


def test_shard_arguments_are_checked(trained_plain, digits, tmp_path, monkeypatch):
    _, (x, y) = digits
    with pytest.raises(ValueError, match="pass state="):
        kb.evaluate_robustness(trained_plain, (x[:8], y[:8]), [0.1], shard=(0, 2), **SETTINGS)
    for bad in [(2, 2), (-1, 2), "1", "a/b", 3]:
        with pytest.raises(ValueError, match="shard"):
            shards_lib.resolve_shard(bad)
    assert shards_lib.resolve_shard("1/3") == shards_lib.Shard(1, 3)
    assert shards_lib.resolve_shard((0, 1)) is None  # one shard: an ordinary evaluation
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.warns(UserWarning, match="found no multi-process job"):
        assert shards_lib.resolve_shard("auto") is None  # one process: evaluates everything
    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": "worker", "index": 1}}))
    if keras.backend.backend() == "tensorflow":  # JAX reads jax.distributed instead
        assert shards_lib.resolve_shard("auto") == shards_lib.Shard(2, 3)
    # Another evaluation's shard file is refused, never mixed in.
    kb.evaluate_robustness(trained_plain, (x[:8], y[:8]), [0.1], state=tmp_path / "b.npz",
                           **SETTINGS)
    (tmp_path / "b.npz").rename(tmp_path / "c.npz.1-of-2")
    with pytest.raises(ValueError, match="holds the results of another evaluation"):
        kb.evaluate_robustness(trained_plain, (x[:16], y[:16]), [0.1], state=tmp_path / "c.npz",
                               shard=(0, 2), **SETTINGS)
