"""Evaluation data that does not fit in memory: a dataset's inputs kept on disk, read a batch at a time.

`evaluate_robustness` runs many attacks over the same examples (and, in a
cascade, over changing subsets of them), so a dataset or generator is read
once and its inputs written to files; each attack batch then reads only its
rows back. Memory holds one batch of inputs and the per-example labels and
results, whatever the number of examples.
"""

import os
import shutil
import tempfile
import weakref

import keras
import numpy as np
from keras import ops


class DiskArray:
    """An array in a file, read a slice (or a set of rows) at a time.

    Args:
        path: the file of the raw rows (C order).
        shape: the array's shape, rows first.
        dtype: its dtype.
        keep: an object whose lifetime the file's folder follows (not copied).
    """

    def __init__(self, path, shape, dtype, keep=None):
        self.path, self.shape, self.dtype = path, tuple(shape), np.dtype(dtype)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._keep = keep

    ndim = property(lambda self: len(self.shape))

    def __len__(self):
        return self.shape[0]

    def _read(self, handle, start, count):
        handle.seek(start * self._row_bytes)
        data = np.fromfile(handle, self.dtype, count * self._row_bytes // self.dtype.itemsize)
        return data.reshape((count,) + self.shape[1:])

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            with open(self.path, "rb") as handle:
                return self._read(handle, start, max(0, stop - start))
        if np.isscalar(index):
            return self[int(index):int(index) + 1][0]
        rows = np.asarray(index, dtype=np.int64).reshape(-1)
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        with open(self.path, "rb") as handle:
            for position in order:  # sorted reads: the file is read forwards
                out[position] = self._read(handle, int(rows[position]), 1)[0]
        return out

    def chunks(self, rows=4096):
        """The array in consecutive pieces of at most `rows` rows."""
        for start in range(0, len(self), rows):
            yield self[start:start + rows]

    def __array__(self, dtype=None, copy=None):
        raise TypeError("A DiskArray is read a batch at a time: slice it (a[i:j]) or take rows "
                        "(a[[...]]); reading it whole would hold every example in memory.")


def take_rows(array, rows):
    """`array[rows]` for in-memory and on-disk arrays alike."""
    return array[rows] if isinstance(array, DiskArray) else np.asarray(array)[rows]


def spill(batches):
    """`(x, y)`: the batches' inputs on disk (`DiskArray` leaves), their labels in memory.

    Args:
        batches: an iterable of `(x, y)` or `(x, y, sample_weight)` batches
            (`tf.data.Dataset`, `keras.utils.PyDataset`, a generator).

    Raises:
        ValueError: for unlabelled batches, no batches, or batches whose
            inputs change shape or structure.
    """
    folder = tempfile.mkdtemp(prefix="keras_bidir_evaluation_")
    owner = _Folder(folder)
    files, shapes, dtypes, structure, ys = None, None, None, None, []
    try:
        for batch in batches:
            bx, by, _ = keras.utils.unpack_x_y_sample_weight(batch)
            if by is None:
                raise ValueError("evaluate_robustness needs labelled data: batches of (x, y).")
            leaves = [np.ascontiguousarray(ops.convert_to_numpy(v)) for v in keras.tree.flatten(bx)]
            if files is None:
                structure = bx
                shapes = [[0] + list(v.shape[1:]) for v in leaves]
                dtypes = [v.dtype for v in leaves]
                files = [open(os.path.join(folder, f"x{i}.bin"), "wb") for i in range(len(leaves))]
            _check_like(leaves, shapes, dtypes)
            for handle, shape, leaf in zip(files, shapes, leaves):
                handle.write(leaf.tobytes())
                shape[0] += len(leaf)
            ys.append(keras.tree.map_structure(ops.convert_to_numpy, by))
    finally:
        for handle in files or []:
            handle.close()
    if not ys:
        raise ValueError("The evaluation data is empty.")
    arrays = [DiskArray(os.path.join(folder, f"x{i}.bin"), shape, dtype, keep=owner)
              for i, (shape, dtype) in enumerate(zip(shapes, dtypes))]
    x = keras.tree.pack_sequence_as(structure, arrays)
    concat = lambda *parts: np.concatenate(parts)  # noqa: E731
    return x, keras.tree.map_structure(concat, *ys)


def _check_like(leaves, shapes, dtypes):
    if len(leaves) != len(shapes) or any(
            list(v.shape[1:]) != s[1:] or v.dtype != d for v, s, d in zip(leaves, shapes, dtypes)):
        raise ValueError("The evaluation batches change their inputs' shapes or dtypes: "
                         f"first {[tuple(s[1:]) for s in shapes]}, then "
                         f"{[tuple(v.shape[1:]) for v in leaves]}. Give every batch the same "
                         "example shape.")


class _Folder:
    """Deletes the spill folder when the last array reading from it is gone."""

    def __init__(self, path):
        self.path = path
        weakref.finalize(self, shutil.rmtree, path, True)
