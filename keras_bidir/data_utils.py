"""Looking at one batch of the user's data before Keras starts training."""

import inspect
import warnings

import keras
import numpy as np

from keras_bidir import batch_checks


def _is_array_like(value):
    return hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__getitem__")


def is_array_data(x):
    """True for arrays or tensors, or a list / tuple / dict of them (what Keras slices itself)."""
    leaves = keras.tree.flatten(x) if isinstance(x, (list, tuple, dict)) else [x]
    return bool(leaves) and all(_is_array_like(leaf) or isinstance(leaf, list) for leaf in leaves)


def _looks_like_tf_dataset(value):
    return type(value).__module__.startswith("tensorflow") and hasattr(value, "element_spec")


def peek_inputs(x, batch_size=None, y=None):
    """One batch of inputs from `fit()`-style data, without losing any of it.

    Args:
        x: what the user passes to `fit(x=...)`: arrays (or a list / dict of
            them), a `tf.data.Dataset`, a `keras.utils.PyDataset`, or a Python
            generator / iterator yielding `(x, y[, sample_weight])`.
        batch_size: the `fit` batch size for array data (Keras' default 32).
        y: the `fit(y=...)` labels of array data.

    Returns:
        `(x_batch, y_batch, x)`: the inputs and labels (None when the data
        has none) of one batch, and the data to hand on to Keras (a generator
        is re-chained so that its first batch is not lost).
    """
    if x is None:
        raise ValueError("fit() got no training data (x is None).")
    if _looks_like_tf_dataset(x):
        first = next(iter(x), None)
        if first is None:
            raise ValueError("The training dataset is empty: it yields no batch.")
        return _inputs_and_labeled(first) + (x,)
    if isinstance(x, keras.utils.PyDataset):
        if len(x) == 0:
            raise ValueError("The training PyDataset is empty (len() == 0).")
        return _inputs_and_labeled(x[0]) + (x,)
    leaves = keras.tree.flatten(x) if isinstance(x, (list, tuple, dict)) else [x]
    if leaves and all(_is_array_like(leaf) or isinstance(leaf, (list, np.ndarray)) for leaf in leaves):
        size = batch_size or 32

        def head(value):
            value = np.asarray(value) if isinstance(value, list) else value
            if len(value.shape) == 0 or value.shape[0] == 0:
                raise ValueError("The training data is empty: the input arrays have no rows.")
            return value[:size]

        y_batch = None if y is None else keras.tree.map_structure(
            lambda v: np.asarray(v)[:size], y)
        return keras.tree.map_structure(head, x), y_batch, x
    if inspect.isgenerator(x) or hasattr(x, "__next__"):
        try:
            first = next(x)
        except StopIteration:
            raise ValueError("The training generator is empty: it yields no batch.") from None

        def chained():
            yield first
            yield from x

        return _inputs_and_labeled(first) + (chained(),)
    if hasattr(x, "__iter__"):
        first = next(iter(x), None)
        if first is None:
            raise ValueError("The training data is empty: it yields no batch.")
        return _inputs_and_labeled(first) + (x,)
    raise TypeError(f"Unsupported training data of type {type(x).__name__}.")


def _inputs_and_labeled(batch):
    x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
    return x, y


_LABEL_MARK = "keras_bidir: labels outside the classes"


def label_range_error(classes, low, high, unlabeled=False):
    """The error for sparse labels outside `[0, classes)` (or -1: unlabeled)."""
    allowed = f"[0, {classes})" + (" or -1 for unlabeled examples" if unlabeled else "")
    return ValueError(
        f"Labels must lie in {allowed} for the model's {classes} outputs, but y ranges over "
        f"[{low}, {high}]. Check the label encoding, or the size of the final Dense layer.")


def check_label_range(labels, classes, unlabeled=False):
    """Raises `label_range_error` when integer `labels` leave `[0, classes)` (-1 allowed when
    `unlabeled`)."""
    labels = np.asarray(labels)
    if labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        return
    low, high = int(labels.min()), int(labels.max())
    if high >= classes or low < (-1 if unlabeled else 0):
        raise label_range_error(classes, low, high, unlabeled)


def _label_check(classes, unlabeled):
    """Every batch's integer labels lie in `[0, classes)` (or are -1 when `unlabeled`)."""
    low_bound = -1 if unlabeled else 0

    def host(batch):
        _, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
        if y is not None and not isinstance(y, (dict, list, tuple)):
            check_label_range(keras.ops.convert_to_numpy(y), classes, unlabeled)

    def graph(*batch):
        import tensorflow as tf

        if len(batch) < 2 or not isinstance(batch[1], tf.Tensor) or not batch[1].dtype.is_integer:
            return None
        labels = tf.cast(batch[1], tf.int64)
        low, high = tf.reduce_min(labels), tf.reduce_max(labels)
        ok = tf.logical_or(tf.size(labels) == 0, tf.logical_and(low >= low_bound, high < classes))
        return ok, [low, high]

    return batch_checks.BatchCheck(
        _LABEL_MARK, host, graph, lambda values: label_range_error(classes, *values, unlabeled))


def checked_labels(data, classes, unlabeled=False):
    """`fit` data whose every batch's integer labels are checked against `[0, classes)`
    (see `keras_bidir.batch_checks.checked`; `translate_label_error` gives the clear error)."""
    return batch_checks.checked(data, _label_check(classes, unlabeled))


def translate_label_error(error, classes, unlabeled=False):
    """`label_range_error` for an error raised by `checked_labels`' assertion, else None."""
    return batch_checks.translate(error, _label_check(classes, unlabeled))


def validate_arrays(x, model):
    """Clear errors for array data that cannot fit `model`'s declared inputs.

    Checks only NumPy-like data against Functional / Sequential models with
    known input shapes; other data is left to Keras.
    """
    if _looks_like_tf_dataset(x) and hasattr(x, "cardinality"):
        if int(x.cardinality()) == 0:
            raise ValueError(
                "The training dataset is empty (cardinality 0): it yields no batch. Check "
                "the filtering / take() / batch(drop_remainder=True) steps that built it."
            )
        return
    leaves = keras.tree.flatten(x) if isinstance(x, (list, tuple, dict)) else [x]
    if not leaves or not all(_is_array_like(leaf) for leaf in leaves):
        return
    for leaf in leaves:
        if len(leaf.shape) == 0 or leaf.shape[0] == 0:
            raise ValueError(
                "The training data is empty: the input arrays have no rows. Check the "
                "loading / filtering step that produced them."
            )
    specs = getattr(model, "inputs", None)
    if not specs:
        return
    specs = keras.tree.flatten(specs)
    if isinstance(x, dict):
        names = [s.name for s in specs]
        if set(x) != set(names):
            return  # Keras reports missing / extra keys itself.
        pairs = [(x[s.name], s) for s in specs]
    elif len(leaves) == len(specs):
        pairs = list(zip(leaves, specs))
    else:
        return
    for value, spec in pairs:
        expected = tuple(spec.shape[1:])
        got = tuple(value.shape[1:])
        compatible = len(expected) == len(got) and all(
            e is None or e == g for e, g in zip(expected, got)
        )
        if not compatible:
            hint = ""
            if len(got) + 1 == len(expected) and expected[-1] == 1:
                hint = " Add the channel axis, e.g. x[..., None]."
            raise ValueError(
                f"Input '{spec.name}' expects examples of shape {expected}, but the data has "
                f"examples of shape {got} (array shape {tuple(value.shape)}).{hint}"
            )


def check_data_range(policy, inputs):
    """Checks one batch of the perturbed inputs against the policy's range and radius.

    Args:
        policy: the input policy (its `clip_min` / `clip_max`, and `epsilon`
            and `norm` when it has them).
        inputs: list of arrays, the inputs the policy perturbs.

    Raises:
        ValueError: when the data lies outside `[clip_min, clip_max]`: every
            perturbed input would be clamped into that range.

    Warns:
        When ε is larger than the whole data range (all perturbations of that
        size are equally meaningless).
    """
    low, high = policy.clip_min, policy.clip_max
    epsilon = getattr(policy, "epsilon", None)
    for value in inputs:
        value = np.asarray(value, dtype="float64")
        if value.size == 0 or not np.isfinite(value).any():
            continue  # Empty / all-NaN batches are reported elsewhere.
        seen_min, seen_max = float(np.nanmin(value)), float(np.nanmax(value))
        slack = 1e-6 * max(1.0, abs(seen_min), abs(seen_max))
        if (low is not None and seen_min < low - slack) or (high is not None and seen_max > high + slack):
            raise ValueError(
                f"The training inputs lie in [{seen_min:g}, {seen_max:g}], outside the policy's "
                f"data range [clip_min={low}, clip_max={high}]: every perturbed input would be "
                "clamped into that range. Scale the data into it (e.g. x / 255.0 for 8-bit "
                "images), or give the policy the data's own range (clip_min / clip_max; None "
                "leaves that side open)."
            )
        if epsilon is None:
            continue
        span = (high - low) if low is not None and high is not None else seen_max - seen_min
        if getattr(policy, "norm", "linf") == "l2":
            span *= float(np.sqrt(value[0].size))
        if span > 0 and epsilon > span:
            warnings.warn(
                f"epsilon={epsilon:g} ({getattr(policy, 'norm', 'linf')}) is larger than the "
                f"whole data range ({span:g} for inputs in [{seen_min:g}, {seen_max:g}]): the "
                "perturbation can replace an input entirely. Pick ε on the data's scale "
                "(e.g. 0.1–0.3 for images in [0, 1]).",
                stacklevel=3,
            )
            return
