"""TensorFlow gradient code: one `tf.GradientTape` per gradient computation."""

import tensorflow as tf


def value_and_gradients(fn, variables, tensors):
    """Evaluates `fn(tensors)` once and differentiates it in one tape.

    Args:
        fn: callable taking the list `tensors` and returning `(value, aux)`,
            where `value` is a scalar and `aux` any structure of tensors.
        variables: list of variables (the trainable weights).
        tensors: list of tensors (inputs or activations) to differentiate.

    Returns:
        `(value, aux, variable_gradients, tensor_gradients)`. Gradients of
        tensors that do not influence `value` are zeros, never `None`.
    """
    tensors = list(tensors)
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        value, aux = fn(tensors)
    variable_grads, tensor_grads = tape.gradient(
        value,
        (list(variables), tensors),
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
    return value, aux, variable_grads, tensor_grads


def input_gradients(fn, tensors):
    """Gradients of `fn(tensors)` with respect to `tensors` only.

    Variables are not watched, so no weight gradient is computed.

    Args:
        fn: callable taking the list `tensors` and returning `(value, aux)`.
        tensors: list of tensors.

    Returns:
        `(value, aux, tensor_gradients)`.
    """
    tensors = list(tensors)
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(tensors)
        value, aux = fn(tensors)
    grads = tape.gradient(
        value, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return value, aux, grads


def function(fn, jit_compile=False):
    """Compiles `fn` into a TensorFlow graph function."""
    return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True)


def accumulate(total, gradients, weight):
    """`total + weight * gradients`, elementwise; `total` None starts a sum.

    Sparse embedding gradients (`tf.IndexedSlices`) are made dense so that
    the gradients of several passes can be added.
    """
    scaled = [tf.convert_to_tensor(g) * weight for g in gradients]
    if total is None:
        return scaled
    return [t + g for t, g in zip(total, scaled)]
