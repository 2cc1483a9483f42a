"""One evaluation shared by several processes (on one machine or several): the shards.

Every attack run is split into batches, and shard `i` of `n` attacks the batches whose
number (counted across the evaluation) is `i` modulo `n`. Each shard writes its batches'
per-example results to its own state file (`<state>.<i>-of-<n>`) and reads the others'
from theirs, so every shard ends with all the results and the same report. A batch draws
its random starts from its own seed (`state.batch_seed`), whoever attacks it: the
per-example results are those of one process. The state files must lie on storage every
shard sees (a local disk for processes on one machine, a shared file system across hosts);
a shard that is killed resumes from its file when started again with the same arguments.
"""

import dataclasses
import json
import os
import time
import warnings

from keras_bidir.evaluation.state import EvaluationState
from keras_bidir.evaluation.state import StateReader


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's part of a sharded evaluation.

    Args:
        index: this shard's number, `0 <= index < count`.
        count: how many shards (processes) share the evaluation.
        timeout: seconds to wait for another shard's batch while its file does not
            change before giving up (it died, or was never started).

    Example:

    >>> # process i of n, e.g. one per GPU (CUDA_VISIBLE_DEVICES=i):
    >>> report = keras_bidir.evaluate_robustness(
    ...     model, (x_test, y_test), [8 / 255], suite="standard",
    ...     state="/shared/run1/state.npz", shard=keras_bidir.evaluation.Shard(i, n))
    """

    index: int
    count: int
    timeout: float = 1800.0

    def __post_init__(self):
        if (not isinstance(self.index, int) or not isinstance(self.count, int)
                or isinstance(self.index, bool) or not 0 <= self.index < self.count):
            raise ValueError(f"A shard is (index, count) with 0 <= index < count, got "
                             f"({self.index!r}, {self.count!r}).")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout!r}.")


def resolve_shard(shard):
    """`Shard` from `shard`: None, a `Shard`, `(index, count)`, `"i/n"` or `"auto"`.

    `"auto"` reads the running job: `jax.distributed`'s process index and count on JAX,
    TF_CONFIG's task among its chief and workers on TensorFlow (as
    `MultiWorkerMirroredStrategy` reads it); one process when neither says more.
    Returns None for a single shard.
    """
    if shard is None:
        return None
    if shard == "auto":
        shard = _from_runtime()
        if shard.count == 1:
            warnings.warn("shard='auto' found no multi-process job (jax.distributed on JAX, "
                          "TF_CONFIG on TensorFlow): this process evaluates every batch. "
                          "Pass shard='i/n' to each process to share the evaluation.",
                          stacklevel=3)
    elif isinstance(shard, str):
        shard = _parse(shard)
    if not isinstance(shard, Shard):
        try:
            index, count = shard
        except (TypeError, ValueError):
            raise ValueError(f"shard must be a Shard, (index, count), 'i/n' or 'auto', got "
                             f"{shard!r}.") from None
        shard = Shard(index, count)
    return None if shard.count == 1 else shard


def _parse(text):
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must read 'i/n' (e.g. '0/2') or 'auto', got {text!r}.") from None
    return Shard(index, count)


def _from_runtime():
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return Shard(jax.process_index(), jax.process_count())
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster, task = config.get("cluster", {}), config.get("task", {})
    members = [(kind, i) for kind in ("chief", "worker") for i in range(len(cluster.get(kind, [])))]
    if (task.get("type"), task.get("index")) not in members:
        return Shard(0, 1)
    return Shard(members.index((task["type"], task["index"])), len(members))


def shard_path(path, index, count):
    """The state file of shard `index` of `count`."""
    return f"{os.fspath(path)}.{index}-of-{count}"


class ShardedState(EvaluationState):
    """The state of one shard: its own batches in its file, the others' read from theirs.

    Args:
        path: the evaluation's state path (each shard adds `.<i>-of-<n>`).
        fingerprint: the evaluation's `fingerprint` (every shard's file must carry it).
        description: what a mismatch message shows of the evaluation.
        shard: this process's `Shard`.
    """

    def __init__(self, path, fingerprint, description, shard):
        super().__init__(shard_path(path, shard.index, shard.count), fingerprint, description)
        self.shard = shard
        self.started = time.time()
        self.others = {}
        for i in range(shard.count):
            if i != shard.index:
                other = shard_path(path, i, shard.count)
                self.others[i] = {"index": i, "path": other, "reader": StateReader(other),
                                  "entries": {}, "stamp": None, "changed": time.monotonic()}

    def owns(self, batch):
        return batch % self.shard.count == self.shard.index

    def fetch(self, key, batch):
        """Waits for shard `batch % count` to write `key`, and returns its scores."""
        other, delay = self.others[batch % self.shard.count], 0.01
        while key not in other["entries"]:
            self._refresh(other)
            if key in other["entries"]:
                break
            silent = time.monotonic() - other["changed"]
            if silent > self.shard.timeout:
                raise RuntimeError(
                    f"Shard {batch % self.shard.count} of {self.shard.count} wrote nothing to "
                    f"{other['path']} for {silent:.0f} s, and this shard needs its results: it "
                    "stopped (or never started). Start it again with the same arguments (it "
                    "resumes from its file); this shard's results are kept in "
                    f"{self.path}. No partial figure is reported.")
            time.sleep(delay)
            delay = min(2 * delay, 0.5)
        return other["entries"][key]

    def _refresh(self, other):
        try:
            stat = os.stat(other["path"])
        except FileNotFoundError:
            return
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if stamp == other["stamp"]:
            return
        other["stamp"] = stamp
        meta = other["reader"].read(starting=True)
        if meta is None:  # its header is being written
            return
        self.check_same(meta, other["path"])  # every shard runs the same evaluation
        failed = meta.get("failed")
        if failed and failed["at"] >= self.started:  # an older failure: it may be restarting
            raise RuntimeError(f"Shard {other['index']} stopped with an error ({other['path']}): "
                               f"{failed['message']}. No partial figure is reported.")
        other.update(entries=other["reader"].entries, changed=time.monotonic())
