"""Each training example's index, carried through `fit` for policies with per-example memory.

FGSM with a per-example prior (`PriorGuidedFGSM(prior="example")`) and ATAS
keep, for every training example, what they learnt about it the last time it
came by (its perturbation, its gradient norm). They need to know which
examples a batch holds. With arrays, `BidirectionalModel.fit` adds the index
itself (shuffling included); with a `tf.data.Dataset`, index the examples with
`with_example_index` before shuffling and batching:

    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    dataset = keras_bidir.example_index.with_example_index(dataset)
    model.fit(dataset.shuffle(1000).batch(128), epochs=10)

The inputs then travel as `{INPUTS: x, INDEX: i}`; the training step takes the
index off before the model sees the inputs.
"""

import numpy as np
from keras import ops

from keras_bidir import batch_checks

INPUTS = "keras_bidir_inputs"
INDEX = "keras_bidir_example_index"


def with_example_index(dataset):
    """Indexes the examples of an unbatched `tf.data.Dataset` of `(x, y[, sample_weight])`.

    Call it before `shuffle` and `batch`, so that each example keeps its index.

    Args:
        dataset: a `tf.data.Dataset` yielding single examples.

    Returns:
        A dataset yielding `({INPUTS: x, INDEX: i}, y[, sample_weight])`.
    """
    spec = getattr(dataset, "element_spec", None)
    if spec is None or not hasattr(dataset, "enumerate"):
        raise TypeError(f"with_example_index expects a tf.data.Dataset, got {type(dataset).__name__}.")
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError("with_example_index expects a dataset of (x, y) or (x, y, sample_weight) "
                         "single examples, before batching.")

    def indexed(index, element):
        return ({INPUTS: element[0], INDEX: index},) + tuple(element[1:])

    return dataset.enumerate().map(indexed)


def index_arrays(x):
    """`{INPUTS: x, INDEX: arange(n)}` for array inputs `x` (an array, list or dict of arrays)."""
    leaves = x.values() if isinstance(x, dict) else (x if isinstance(x, (list, tuple)) else [x])
    count = len(next(iter(leaves)))
    return {INPUTS: x, INDEX: np.arange(count, dtype="int64")}


def is_indexed(x):
    """True when `x` carries example indices (`{INPUTS: ..., INDEX: ...}`)."""
    return isinstance(x, dict) and set(x) == {INPUTS, INDEX}


def split(x):
    """`(inputs, index)` of possibly indexed inputs; index None when `x` carries none."""
    if is_indexed(x):
        return x[INPUTS], x[INDEX]
    return x, None


_MARK = "keras_bidir: example index beyond the per-example memory"


def too_small(policy_name, rows, index):
    """The error for an example index at or beyond a memory of `rows` rows."""
    return ValueError(
        f"{policy_name} keeps a memory of {rows} examples (num_examples={rows}), but the data "
        f"holds example index {index}, so at least {index + 1} examples. Pass "
        "num_examples=<the number of training examples> (for a dataset: its length before "
        "batching, e.g. int(dataset.cardinality()) right after with_example_index).")


def check_batch(index, policy_name, rows):
    """Raises `too_small` when a batch's (host) indices reach past `rows`."""
    index = np.asarray(index)
    if index.size and int(index.max()) >= rows:
        raise too_small(policy_name, rows, int(index.max()))


def _memory_check(policy_name, rows):
    """Every batch's example indices lie below `rows` (the memory's size)."""

    def graph(*batch):
        import tensorflow as tf

        largest = tf.reduce_max(tf.cast(batch[0][INDEX], tf.int64))
        return largest < rows, [largest]

    return batch_checks.BatchCheck(
        _MARK, lambda batch: check_batch(batch[0][INDEX], policy_name, rows), graph,
        lambda values: too_small(policy_name, rows, values[0]))


def checked(data, policy_name, rows):
    """`fit` data whose every batch's example indices are checked against `rows`
    (see `keras_bidir.batch_checks.checked`; `translate` gives the clear error back)."""
    return batch_checks.checked(data, _memory_check(policy_name, rows))


def translate(error, policy_name, rows):
    """`too_small` for an error raised by `checked`'s assertion, else None."""
    return batch_checks.translate(error, _memory_check(policy_name, rows))


def gather_rows(store, index):
    """Removed: a policy's per-example state now arrives as the batch's rows already."""
    raise _rows_now(store)


def scatter_rows(store, index, rows):
    """Removed: a policy returns the batch's rows; the step writes them back in place."""
    raise _rows_now(store)


def _rows_now(store):
    return TypeError(
        "A policy's per-example memory (example_state_shapes) reaches "
        "generate() as the batch's rows, in the batch's order, and generate() returns the "
        "updated rows: use the tensors as they are, without gather_rows / scatter_rows "
        f"(got a tensor of shape {tuple(getattr(store, 'shape', ()))}).")
