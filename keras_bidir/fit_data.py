"""What `BidirectionalModel.fit` checks and adds to the data before Keras' own `fit` runs.

On the host, from the first batch: labels in range, inputs in the policy's data
range, the policy's state built for the batch shape, and each example's index
for policies that keep a per-example memory. Checks a dataset can only make
batch by batch run inside its pipeline, and their errors are translated back
into clear ones (`translate_error`).
"""

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_bidir import backend
from keras_bidir import data_utils
from keras_bidir import example_index
from keras_bidir import inputs as inputs_lib
from keras_bidir.sites import Sites


def missing_labels_error(policy):
    """The error for a gradient-following policy given batches without labels."""
    return ValueError(
        f"{type(policy).__name__} follows the loss gradient and needs "
        "labels: pass (x, y) or (x, y, sample_weight) batches to fit().")


def sparse_classes(model):
    """The number of classes when `model` is trained on sparse integer labels, else None."""
    loss = model.step_state.loss_spec
    sparse = isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or loss in (
        "sparse_categorical_crossentropy",)
    outputs = getattr(model.base_model, "outputs", None)
    if not sparse or outputs is None or len(outputs) != 1:
        return None
    return outputs[0].shape[-1]


def check_label_range(model, y):
    """Sparse integer labels must index the model's classes (a GPU gives NaN otherwise)."""
    classes = sparse_classes(model)
    if classes is None or y is None or not hasattr(y, "dtype"):
        return
    data_utils.check_label_range(np.asarray(y), classes, model.policy.accepts_unlabeled)


def check_inputs(model, x_batch):
    """A batch against the policy's data range and radius."""
    sites = Sites(model, x_batch, model.perturb_names)
    data_utils.check_data_range(model.policy, inputs_lib.select_inputs(x_batch, sites.input_indices))


def clean_sites(model, x):
    """The clean values at `model`'s perturbation sites for the batch `x`."""
    x = tree.map_structure(ops.convert_to_tensor, x)
    clean, _, _ = Sites(model, x, model.perturb_names).record(model, x, training=False)
    return clean


def prepare(model, x, y, batch_size):
    """`x` as Keras' `fit` should get it, after the checks and the state built from its first batch."""
    data_utils.validate_arrays(x, model.base_model)
    check_label_range(model, y)
    if x is None:
        return x
    x_batch, y_batch, x = data_utils.peek_inputs(x, batch_size, y)
    if y_batch is None and model.policy.requires_labels:
        raise missing_labels_error(model.policy)
    classes = sparse_classes(model)
    if y is None and classes is not None:  # batches: check each one
        check_label_range(model, y_batch)
        x = data_utils.checked_labels(x, classes, model.policy.accepts_unlabeled)
    inputs_batch, _ = example_index.split(x_batch)
    check_inputs(model, inputs_batch)
    if not model.built:  # Keras' callbacks (BackupAndRestore) need a built model
        model(tree.map_structure(ops.convert_to_tensor, inputs_batch), training=False)
    model.build_policy_state(inputs_batch)
    return with_example_index(model, x, x_batch)


def translate_error(model, error):
    """A clear error for one a dataset's pipeline check raised during `fit`, or None."""
    clear = example_index.translate(error, type(model.policy).__name__,
                                    model.step_state.example_rows)
    classes = sparse_classes(model)
    if clear is None and classes is not None:
        clear = data_utils.translate_label_error(error, classes, model.policy.accepts_unlabeled)
    return clear


def check_batch(model, x):
    """`train_on_batch`'s checks: the data range, the state, the per-example memory's size."""
    inputs, index = example_index.split(x)
    check_inputs(model, inputs)
    model.build_policy_state(inputs)
    state, name = model.step_state, type(model.policy).__name__
    if model.policy.example_state_shapes([()]) and not state.example_variables:
        raise ValueError(
            f"{name} keeps a memory per training example: train with fit(), or call "
            "build_example_state(x, num_examples) first and pass inputs indexed as "
            "keras_bidir.example_index describes.")
    if index is not None and state.example_variables:
        example_index.check_batch(ops.convert_to_numpy(index), name, state.example_rows)


def with_example_index(model, x, x_batch):
    """`x` with each example's index, and the per-example store, for policies that keep one."""
    policy = model.policy
    if not policy.example_state_shapes([()]):
        return x
    name = type(policy).__name__
    with backend.strategy_scope(model):
        if backend.num_replicas() > 1:
            raise NotImplementedError(
                f"{name} keeps a memory per training example, which does not run under "
                "tf.distribute yet; train on one device.")
    indexed = example_index.is_indexed(x)
    _, batch_index = example_index.split(x_batch)
    if batch_index is not None and np.ndim(batch_index) == 0:
        raise ValueError(
            "Each batch carries one index instead of one per example: "
            "with_example_index was applied after batch(). Index the single examples "
            "first: with_example_index(dataset).shuffle(...).batch(...).")
    if not indexed and not data_utils.is_array_data(x):
        if not example_index.is_indexed(x_batch):
            raise ValueError(
                f"{name} keeps a memory per training example and needs each example's index. "
                "Pass arrays to fit(), or index the examples of your dataset with "
                "keras_bidir.example_index.with_example_index(dataset) before shuffling "
                "and batching (and pass num_examples=... to the policy).")
        count = getattr(policy, "num_examples", None)
        if count is None:
            raise ValueError(f"With a dataset, {name} needs num_examples=<number of training "
                             "examples> to size its per-example memory.")
        rows = max(count, model.step_state.example_rows)
        example_index.check_batch(batch_index, name, rows)
        x = example_index.checked(x, name, rows)
    else:
        x = x if indexed else example_index.index_arrays(x)
        count = int(np.max(x[example_index.INDEX])) + 1
        count = max(count, getattr(policy, "num_examples", None) or 0)
    model.build_example_state(x_batch, count)
    return x


def without_example_index(data):
    """A `(x, y[, sample_weight])` batch with the example index taken off the inputs."""
    if not isinstance(data, tuple) or not data or not example_index.is_indexed(data[0]):
        return data
    return (example_index.split(data[0])[0],) + data[1:]
