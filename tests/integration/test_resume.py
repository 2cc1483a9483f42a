"""A training process killed mid-epoch resumes with BackupAndRestore."""

import os
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_script.py")


def _start(mode, backup, output, policy):
    return subprocess.Popen([sys.executable, SCRIPT, mode, str(backup), str(output), policy],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process):
    _, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, "", stderr)


def _run(mode, backup, output, policy):
    return _finish(_start(mode, backup, output, policy))


def test_killed_runs_resume_to_the_same_weights(tmp_path):
    # The uninterrupted references (both policies in one process) and the two runs that are
    # killed are independent processes: they run side by side.
    reference = _start("plain-run", tmp_path / "backup_a", tmp_path / "a", "free,pgd")
    crashes = [_start("crash", tmp_path / "backup_b", tmp_path / "b", policy)
               for policy in ("free", "pgd")]
    for crashed in map(_finish, crashes):
        assert crashed.returncode == 17, crashed.stderr[-2000:]
    reference = _finish(reference)
    assert reference.returncode == 0, reference.stderr[-2000:]
    assert not [tmp_path / f"b.{policy}.npy" for policy in ("free", "pgd")
                if (tmp_path / f"b.{policy}.npy").exists()]  # neither crashed run finished
    resumed = _run("resume", tmp_path / "backup_b", tmp_path / "b", "free,pgd")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for policy in ("free", "pgd"):
        # Two processes seeded alike train alike: the crashed run's weights after epoch 2 are
        # the uninterrupted run's, bit for bit (PGD draws its random start from the policy's
        # seeded stream).
        np.testing.assert_array_equal(np.load(tmp_path / f"a.{policy}.npy.epoch2.npy"),
                                      np.load(tmp_path / f"b.{policy}.npy.epoch2.npy"), err_msg=policy)
        # Weights, optimizer state, Free-AT's persistent perturbation, the ε-schedule
        # position and the policy's random stream (PGD's random start; max |Δw| was 0.024
        # without it) all come back: the resumed run ends exactly where the uninterrupted one
        # does. The model is not built by hand first: BackupAndRestore works as docs/saving.md
        # shows it.
        a, b = tmp_path / f"a.{policy}.npy", tmp_path / f"b.{policy}.npy"
        np.testing.assert_array_equal(np.load(a), np.load(b), err_msg=policy)
        # ...and it really resumed: 4 epochs × 8 batches uninterrupted; after the crash in
        # epoch 3, the resumed process trains epochs 3 and 4 only (the partial epoch is redone).
        assert (tmp_path / f"a.{policy}.npy.batches").read_text() == "32", policy
        assert (tmp_path / f"b.{policy}.npy.batches").read_text() == "16", policy
