"""A resumable evaluation: per-example results kept in a file as each batch finishes.

`evaluate_robustness(..., state=path)` writes every batch's per-example scores
to `path` (atomically: a complete file or the previous one, never half of one).
Run again with the same arguments after a kill, it reads them back instead of
attacking those batches again, so at most the batch in flight is lost, and the
report is the one an uninterrupted run gives (each batch draws its random
starts from its own seed). A file from another evaluation (other weights, data,
radii, attacks or suite) is refused.
"""

import hashlib
import json
import os
import time
import zipfile

import keras
import numpy as np
from keras import ops

from keras_bidir.evaluation.spill import DiskArray

FORMAT = 1
_META = "__meta__"


def fingerprint(model, x, y, settings):
    """A digest of the weights, the examples and the evaluation's settings."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(np.ascontiguousarray(ops.convert_to_numpy(variable)).tobytes())
    for array in keras.tree.flatten(x) + keras.tree.flatten(y):
        pieces = array.chunks() if isinstance(array, DiskArray) else [array]
        digest.update(f"{tuple(array.shape)}{np.dtype(array.dtype)}".encode())
        for piece in pieces:
            digest.update(np.ascontiguousarray(piece).tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class EvaluationState:
    """The per-batch results of one evaluation, in the file `path`.

    Args:
        path: the state file (created if missing).
        fingerprint: the evaluation's `fingerprint`.
        description: what a mismatch message shows of the evaluation (JSON-able).
    """

    def __init__(self, path, fingerprint, description):
        self.path = os.fspath(path)
        self._meta = {"format": FORMAT, "fingerprint": fingerprint, "description": description}
        self.entries = {}
        self.reused = 0
        if os.path.exists(self.path):
            self.entries = self._read(description)

    def _read(self, description):
        meta, entries = read_state(self.path)
        if meta.get("format") != FORMAT or meta.get("fingerprint") != self._meta["fingerprint"]:
            raise ValueError(
                f"{self.path} holds the results of another evaluation (other weights, data, "
                "radii, attacks or settings): it was "
                f"{json.dumps(meta.get('description'), sort_keys=True)}, this one is "
                f"{json.dumps(description, sort_keys=True)}. Pass another state path, or delete "
                "the file to start afresh.")
        return entries

    def owns(self, batch):
        """Whether this process attacks `batch` (numbered across the evaluation): all of them."""
        return True

    def fetch(self, key, batch):
        """The scores of a batch another shard attacks (sharded states only)."""
        raise NotImplementedError("An unsharded evaluation attacks every batch itself.")

    def fail(self, message):
        """Records in the file that this process stopped with `message` (for the other shards)."""
        self._meta["failed"] = {"message": message, "at": time.time()}
        self._write()

    def get(self, key):
        """The stored scores of `key`, or None."""
        found = self.entries.get(key)
        if found is not None:
            self.reused += 1
        return found

    def put(self, key, scores):
        """Stores `scores` under `key` and writes the file (atomically)."""
        self.entries[key] = np.asarray(scores)
        self._write()

    def _write(self):
        temporary = f"{self.path}.tmp"
        with open(temporary, "wb") as handle:
            np.savez(handle, **{_META: np.asarray(json.dumps(self._meta))}, **self.entries)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def unit(self, number):
        """A view of one attack run (the `number`-th of the evaluation): its keys are prefixed
        with `unit<number>/` and its batches numbered from `number` on (shards take turns)."""
        return _Unit(self, f"unit{number}", number)


def read_state(path):
    """`(meta, entries)` of a state file; a file that is not a complete one is refused."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive[_META]))
            entries = {k: archive[k] for k in archive.files if k != _META}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} is not a complete evaluation state ({error}). Delete it to start "
            "the evaluation afresh, or pass another state path.") from None
    return meta, entries


class _Unit:
    def __init__(self, state, name, offset):
        self.state, self.name, self.offset = state, name, offset

    def get(self, key):
        return self.state.get(f"{self.name}/{key}")

    def put(self, key, scores):
        self.state.put(f"{self.name}/{key}", scores)

    def owns(self, batch):
        return self.state.owns(self.offset + batch)

    def fetch(self, key, batch):
        return self.state.fetch(f"{self.name}/{key}", self.offset + batch)


def batch_seed(seed, run, batch):
    """The seed of one batch's random starts: fixed by (seed, restart run, batch) alone."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{run}/{batch}".encode()).digest()[:4], "little") >> 1
