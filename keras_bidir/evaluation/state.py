"""A resumable evaluation: per-example results kept in a file as each batch finishes.

`evaluate_robustness(..., state=path)` appends every batch's per-example scores
to `path` as one record (length, key, the array, a SHA-256 of both), flushed to
disk before the next batch starts. Run again with the same arguments after a
kill, it reads them back instead of attacking those batches again, so at most
the batch in flight is lost (a record cut short by the kill is dropped), and
the report is the one an uninterrupted run gives (each batch draws its random
starts from its own seed). A file from another evaluation (other weights,
data, radii, attacks or suite), one whose header is cut short and one with a
damaged record are refused. Writing a batch costs one record, not the file.
"""

import hashlib
import io
import json
import os
import struct
import time

import keras
import numpy as np
from keras import ops

from keras_bidir.evaluation.spill import DiskArray

FORMAT = 2
MAGIC = b"keras-bidir evaluation state\n"
_LENGTH = struct.Struct("<Q")
_DIGEST = 32
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
            self._resume()
        else:
            with open(self.path, "wb") as handle:
                _append(handle, MAGIC + _record(_META, json.dumps(self._meta).encode()))

    def _resume(self):
        reader = StateReader(self.path)
        self.check_same(reader.read(), self.path)
        self.entries = dict(reader.entries)
        with open(self.path, "r+b") as handle:  # drop a record a kill cut short
            handle.truncate(reader.offset)
        self._append(_record(_META, json.dumps(self._meta).encode()))  # clears a failure

    def check_same(self, meta, path):
        """Refuses `meta`, read from `path`, unless it is this evaluation's."""
        if meta.get("format") != FORMAT or meta.get("fingerprint") != self._meta["fingerprint"]:
            raise ValueError(
                f"{path} holds the results of another evaluation (other weights, data, "
                "radii, attacks or settings): it was "
                f"{json.dumps(meta.get('description'), sort_keys=True)}, this one is "
                f"{json.dumps(self._meta['description'], sort_keys=True)}. Pass another state "
                "path, or delete the file to start afresh.")

    def owns(self, batch):
        """Whether this process attacks `batch` (numbered across the evaluation): all of them."""
        return True

    def fetch(self, key, batch):
        """The scores of a batch another shard attacks (sharded states only)."""
        raise NotImplementedError("An unsharded evaluation attacks every batch itself.")

    def fail(self, message):
        """Records in the file that this process stopped with `message` (for the other shards)."""
        failed = {**self._meta, "failed": {"message": message, "at": time.time()}}
        self._append(_record(_META, json.dumps(failed).encode()))

    def get(self, key):
        """The stored scores of `key`, or None."""
        found = self.entries.get(key)
        if found is not None:
            self.reused += 1
        return found

    def put(self, key, scores):
        """Stores `scores` under `key`: one record appended and flushed to disk."""
        self.entries[key] = np.asarray(scores)
        buffer = io.BytesIO()
        np.save(buffer, self.entries[key], allow_pickle=False)
        self._append(_record(key, buffer.getvalue()))

    def _append(self, data):
        with open(self.path, "ab") as handle:
            _append(handle, data)

    def unit(self, number):
        """A view of one attack run (the `number`-th of the evaluation): its keys are prefixed
        with `unit<number>/` and its batches numbered from `number` on (shards take turns)."""
        return _Unit(self, f"unit{number}", number)


def _record(key, payload):
    body = key.encode() + b"\0" + payload
    return _LENGTH.pack(len(body)) + body + hashlib.sha256(body).digest()


def _append(handle, data):
    handle.write(data)
    handle.flush()
    os.fsync(handle.fileno())


class StateReader:
    """Reads a state file, and what was appended to it since the last `read`.

    A record cut short at the end (the writer was killed, or is writing it now) is left for
    the next read; a file without the header, or with a damaged record, is refused.
    """

    def __init__(self, path):
        self.path, self.offset, self.meta, self.entries = os.fspath(path), 0, None, {}

    def read(self, starting=False):
        """Reads the new records; returns the latest meta (format, fingerprint, failure).

        Args:
            starting: the writer may be starting: a header not yet complete gives None
                instead of a refusal.
        """
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError as error:
            self._refuse(error)
        position = 0
        if self.offset == 0:
            if starting and len(data) < len(MAGIC) and MAGIC.startswith(data):
                return None
            if not data.startswith(MAGIC):
                self._refuse("no state header; an earlier version's file, or another file")
            position = len(MAGIC)
        while position + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, position)
            end = position + _LENGTH.size + length + _DIGEST
            if end > len(data):
                break
            body = data[position + _LENGTH.size:end - _DIGEST]
            if hashlib.sha256(body).digest() != data[end - _DIGEST:end]:
                self._refuse(f"a damaged record at byte {self.offset + position}")
            key, _, payload = body.partition(b"\0")
            self._take(key.decode(), payload)
            position = end
        self.offset += position
        if self.meta is None:
            if starting:
                self.offset = 0
                return None
            self._refuse("its header is cut short")
        return self.meta

    def _take(self, key, payload):
        if key == _META:
            self.meta = json.loads(payload)
        else:
            self.entries[key] = np.load(io.BytesIO(payload), allow_pickle=False)

    def _refuse(self, reason):
        raise ValueError(
            f"{self.path} is not a complete evaluation state ({reason}). Delete it to start "
            "the evaluation afresh, or pass another state path.") from None


def read_state(path):
    """`(meta, entries)` of a state file; a file that is not a complete one is refused."""
    reader = StateReader(path)
    return reader.read(), reader.entries


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
