"""A resumable evaluation: killed with SIGKILL, started again, the same per-example results."""

import os
import subprocess
import sys

import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir.evaluation import state as state_lib

SCRIPT = os.path.join(os.path.dirname(__file__), "evaluation_resume_script.py")
sys.path.insert(0, os.path.dirname(__file__))
from evaluation_resume_script import SETTINGS  # noqa: E402


@pytest.fixture(scope="module")
def saved(trained_plain, digits, tmp_path_factory):
    """The shared trained model as a file, and 200 test digits as an .npz."""
    folder = tmp_path_factory.mktemp("evaluation_state")
    _, (x_test, y_test) = digits
    trained_plain.save(folder / "model.keras")
    np.savez(folder / "data.npz", x=x_test[:200], y=y_test[:200])
    return folder


def _script(saved, state, report, kill_after=None):
    args = [sys.executable, SCRIPT, str(saved / "model.keras"), str(saved / "data.npz"),
            str(state), str(report)] + ([] if kill_after is None else [str(kill_after)])
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def _entries(path):
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k != "__meta__"}


def test_a_killed_evaluation_resumes_to_the_same_per_example_results(saved, trained_plain, tmp_path,
                                                                    capsys):
    with np.load(saved / "data.npz") as data:
        x, y = data["x"], data["y"]
    reference = kb.evaluate_robustness(trained_plain, (x, y), state=tmp_path / "reference.npz",
                                       **SETTINGS)
    killed = _script(saved, tmp_path / "state.npz", tmp_path / "killed.json", kill_after=20)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, mid-evaluation
    assert not (tmp_path / "killed.json").exists()
    assert len(_entries(tmp_path / "state.npz")) == 20  # every finished batch was kept
    # Resumed here, from the same weights (the file the killed process loaded): the 20 batches
    # are read back, the others attacked, and the report is the uninterrupted run's.
    capsys.readouterr()
    resumed = kb.evaluate_robustness(trained_plain, (x, y), state=tmp_path / "state.npz",
                                     **SETTINGS)
    assert "20 batch(es) read back" in capsys.readouterr().out
    assert resumed.to_dict() == reference.to_dict()
    # Per example, every batch of every attack run (clean, then the 4 attacks at 2 radii).
    expected, got = _entries(tmp_path / "reference.npz"), _entries(tmp_path / "state.npz")
    assert sorted(expected) == sorted(got)
    assert len(expected) == 7 + 2 * 7 * 5  # PGD-20x2: two runs of 7 batches
    for key in expected:
        np.testing.assert_array_equal(expected[key], got[key], err_msg=key)


def test_a_state_from_another_evaluation_is_refused(trained_plain, digits, tmp_path):
    _, (x_test, y_test) = digits
    data = (x_test[:64], y_test[:64])
    common = {"clip_min": 0.0, "clip_max": 1.0, "checks": False, "verbose": 0,
              "attacks": {"FGSM": kb.policies.FGSM(0.1)}}
    path = tmp_path / "state.npz"
    first = kb.evaluate_robustness(trained_plain, data, [0.1], state=path, **common)
    again = kb.evaluate_robustness(trained_plain, data, [0.1], state=path, **common)
    assert again.to_dict() == first.to_dict()
    with pytest.raises(ValueError, match=r'results of another evaluation.*"epsilons": \[0\.1\]'
                                         r'.*"epsilons": \[0\.2\].*another state path'):
        kb.evaluate_robustness(trained_plain, data, [0.2], state=path, **common)
    other_data = (x_test[64:128], y_test[64:128])
    with pytest.raises(ValueError, match="results of another evaluation"):
        kb.evaluate_robustness(trained_plain, other_data, [0.1], state=path, **common)
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    with pytest.raises(ValueError, match="not a complete evaluation state.*Delete it"):
        kb.evaluate_robustness(trained_plain, data, [0.1], state=path, **common)


def test_the_batch_seed_depends_on_seed_run_and_batch_only():
    seeds = {state_lib.batch_seed(s, r, b) for s in range(3) for r in range(2) for b in range(50)}
    assert len(seeds) == 300 and all(0 <= s < 2**31 for s in seeds)
    assert state_lib.batch_seed(0, 0, 7) == state_lib.batch_seed(0, 0, 7)


def test_progress_shows_each_attack_with_the_share_still_robust(trained_plain, digits, capsys):
    _, (x_test, y_test) = digits
    kb.evaluate_robustness(trained_plain, (x_test[:64], y_test[:64]), [0.1, 0.2],
                           attacks={"FGSM": kb.policies.FGSM(0.1)}, clip_min=0.0, clip_max=1.0,
                           checks=False, verbose=1, batch_size=32)
    out = capsys.readouterr().out
    assert "clean" in out and "FGSM at ε=0.1" in out and "FGSM at ε=0.2" in out
    assert "64/64" in out and "robust:" in out
