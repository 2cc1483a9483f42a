"""Large evaluations: a killed run resumes to the same results; data beyond memory stays on disk."""

import os
import subprocess
import sys

import keras
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
    return state_lib.read_state(path)[1]


def test_a_killed_evaluation_resumes_to_the_same_per_example_results(saved, trained_plain, tmp_path):
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
    resumed = kb.evaluate_robustness(trained_plain, (x, y), state=tmp_path / "state.npz",
                                     **SETTINGS)
    assert resumed.resumed_batches == 20 and reference.resumed_batches == 0
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
    whole = path.read_bytes()  # its last record: FGSM's batch
    again = kb.evaluate_robustness(trained_plain, data, [0.1], state=path, **common)
    assert again.to_dict() == first.to_dict()
    with pytest.raises(ValueError, match=r'results of another evaluation.*"epsilons": \[0\.1\]'
                                         r'.*"epsilons": \[0\.2\].*another state path'):
        kb.evaluate_robustness(trained_plain, data, [0.2], state=path, **common)
    other_data = (x_test[64:128], y_test[64:128])
    with pytest.raises(ValueError, match="results of another evaluation"):
        kb.evaluate_robustness(trained_plain, other_data, [0.1], state=path, **common)
    # The last record cut short (a kill while it was written): that batch is attacked again.
    path.write_bytes(whole[:-10])
    again = kb.evaluate_robustness(trained_plain, data, [0.1], state=path, **common)
    assert again.to_dict() == first.to_dict() and again.resumed_batches == 1  # of 2
    assert len(_entries(path)) == 2
    # A damaged record is refused, never read; so is a header cut short (a full disk).
    middle = whole.index(b"unit0/0")
    path.write_bytes(whole[:middle] + b"X" + whole[middle + 1:])
    with pytest.raises(ValueError, match="not a complete evaluation state.*damaged record"):
        kb.evaluate_robustness(trained_plain, data, [0.1], state=path, **common)
    path.write_bytes(whole[:40])
    with pytest.raises(ValueError, match="not a complete evaluation state.*Delete it"):
        kb.evaluate_robustness(trained_plain, data, [0.1], state=path, **common)


def test_the_batch_seed_depends_on_seed_run_and_batch_only():
    seeds = {state_lib.batch_seed(s, r, b) for s in range(3) for r in range(2) for b in range(50)}
    assert len(seeds) == 300 and all(0 <= s < 2**31 for s in seeds)
    assert state_lib.batch_seed(0, 0, 7) == state_lib.batch_seed(0, 0, 7)


def test_progress_shows_each_attack_with_the_share_still_robust(trained_plain, digits, capsys):
    _, (x_test, y_test) = digits
    attacks = {"FGSM": kb.policies.FGSM(0.1), "PGD": kb.policies.PGD(0.1, steps=2, restarts=2)}
    report = kb.evaluate_robustness(trained_plain, (x_test[:64], y_test[:64]), [0.1, 0.2],
                                    attacks=attacks, clip_min=0.0, clip_max=1.0, checks=False,
                                    verbose=1, batch_size=32)
    out = capsys.readouterr().out
    assert "clean" in out and "FGSM at ε=0.1" in out and "FGSM at ε=0.2" in out
    assert "64/64" in out and "robust:" in out
    # Two restarts: one bar of 2 × 64 examples, never past its end; its last "robust" is the
    # worst case over both runs, the report's figure.
    pgd = out.split("PGD at ε=0.1")[1].split("at ε=")[0]
    assert "128/128" in pgd and "/64" not in pgd
    robust = report.accuracy["PGD"][0.1]
    assert 0.001 < robust and f"robust: {robust:.4f}" in pgd.split("128/128")[-1]


def _batches(x, y, size):
    """A one-pass generator of (x, y) batches, as a user's input pipeline yields them."""
    for start in range(0, len(x), size):
        yield x[start:start + size], y[start:start + size]


def test_a_generator_is_evaluated_from_disk_like_the_same_arrays(trained_plain, digits):
    _, (x_test, y_test) = digits
    x, y = x_test[:150], y_test[:150]
    attacks = {"FGSM": kb.policies.FGSM(0.1), "PGD-5": kb.policies.PGD(0.1, steps=5)}
    common = {"clip_min": 0.0, "clip_max": 1.0, "verbose": 0, "batch_size": 64,
              "attacks": attacks, "cascade": True, "checks": False}
    from_arrays = kb.evaluate_robustness(trained_plain, (x, y), [0.05, 0.1], **common)
    streamed = kb.evaluate_robustness(trained_plain, _batches(x, y, 37), [0.05, 0.1], **common)
    assert streamed.to_dict() == from_arrays.to_dict()  # the cascade's subsets read from disk
    assert len(streamed.flipped_examples(4)) == len(from_arrays.flipped_examples(4))

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return x[50 * index:50 * index + 50], y[50 * index:50 * index + 50]

    from_py_dataset = kb.evaluate_robustness(trained_plain, Batches(), [0.05, 0.1], **common)
    assert from_py_dataset.to_dict() == from_arrays.to_dict()


def test_disk_arrays_read_slices_and_rows_as_numpy_does(tmp_path):
    from keras_bidir.evaluation import spill

    rng = np.random.default_rng(0)
    images = rng.normal(size=(50, 4, 3)).astype("float32")
    tokens = rng.integers(0, 9, size=(50, 6)).astype("int32")
    x, y = spill.spill(({"image": images[i:i + 16], "tokens": tokens[i:i + 16]}, np.arange(i, min(i + 16, 50)))
                       for i in range(0, 50, 16))
    np.testing.assert_array_equal(y, np.arange(50))
    for name, array in (("image", images), ("tokens", tokens)):
        disk = x[name]
        assert disk.shape == array.shape and len(disk) == 50 and disk.dtype == array.dtype
        np.testing.assert_array_equal(disk[7:33], array[7:33])
        rows = np.array([41, 3, 3, 0, 49])
        np.testing.assert_array_equal(spill.take_rows(disk, rows), array[rows])
        np.testing.assert_array_equal(np.concatenate(list(disk.chunks(rows=7))), array)
    with pytest.raises(TypeError, match="read a batch at a time"):
        np.asarray(x["image"])
    with pytest.raises(ValueError, match="change their inputs' shapes"):
        spill.spill(iter([(images[:8], y[:8]), (images[:8, :2], y[:8])]))
    with pytest.raises(ValueError, match="labelled data"):
        spill.spill(iter([images[:8]]))


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_streamed_examples(tmp_path):
    """Peak memory of a streamed evaluation of 10,000 and 60,000 MNIST-sized examples."""
    peaks = {}
    for count in (10000, 60000):
        run = subprocess.run([sys.executable, MEMORY_SCRIPT, str(count)], capture_output=True,
                             text=True, timeout=900)
        assert run.returncode == 0, run.stderr[-2000:]
        peaks[count] = int(run.stdout.split()[-1])
    # The inputs alone are 31 MB and 188 MB; held in memory the difference would be ≥ 157 MB.
    assert peaks[60000] - peaks[10000] < 40 * 2**20, peaks


MEMORY_SCRIPT = os.path.join(os.path.dirname(__file__), "evaluation_memory_script.py")
