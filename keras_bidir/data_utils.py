"""Looking at one batch of the user's data before Keras starts training."""

import inspect

import keras
import numpy as np


def _is_array_like(value):
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__")


def _looks_like_tf_dataset(value):
    return type(value).__module__.startswith("tensorflow") and hasattr(value, "element_spec")


def peek_inputs(x, batch_size=None):
    """One batch of inputs from `fit()`-style data, without losing any of it.

    Args:
        x: what the user passes to `fit(x=...)`: arrays (or a list / dict of
            them), a `tf.data.Dataset`, a `keras.utils.PyDataset`, or a Python
            generator / iterator yielding `(x, y[, sample_weight])`.
        batch_size: the `fit` batch size for array data (Keras' default 32).

    Returns:
        `(x_batch, x)`: the inputs of one batch, and the data to hand on to
        Keras (a generator is re-chained so that its first batch is not lost).
    """
    if x is None:
        raise ValueError("fit() got no training data (x is None).")
    if _looks_like_tf_dataset(x):
        first = next(iter(x), None)
        if first is None:
            raise ValueError("The training dataset is empty: it yields no batch.")
        return keras.utils.unpack_x_y_sample_weight(first)[0], x
    if isinstance(x, keras.utils.PyDataset):
        if len(x) == 0:
            raise ValueError("The training PyDataset is empty (len() == 0).")
        return keras.utils.unpack_x_y_sample_weight(x[0])[0], x
    leaves = keras.tree.flatten(x) if isinstance(x, (list, tuple, dict)) else [x]
    if leaves and all(_is_array_like(leaf) or isinstance(leaf, (list, np.ndarray)) for leaf in leaves):
        size = batch_size or 32

        def head(value):
            value = np.asarray(value) if isinstance(value, list) else value
            if len(value.shape) == 0 or value.shape[0] == 0:
                raise ValueError("The training data is empty: the input arrays have no rows.")
            return value[:size]

        return keras.tree.map_structure(head, x), x
    if inspect.isgenerator(x) or hasattr(x, "__next__"):
        try:
            first = next(x)
        except StopIteration:
            raise ValueError("The training generator is empty: it yields no batch.") from None

        def chained():
            yield first
            yield from x

        return keras.utils.unpack_x_y_sample_weight(first)[0], chained()
    if hasattr(x, "__iter__"):
        first = next(iter(x), None)
        if first is None:
            raise ValueError("The training data is empty: it yields no batch.")
        return keras.utils.unpack_x_y_sample_weight(first)[0], x
    raise TypeError(f"Unsupported training data of type {type(x).__name__}.")
