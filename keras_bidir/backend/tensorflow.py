"""TensorFlow gradient code: one `tf.GradientTape` per gradient computation."""

import contextlib

import keras
import tensorflow as tf

from keras_bidir.backend import private


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


def variable_gradients(fn, variables, tensors):
    """Gradients of `fn(tensors)` with respect to `variables` only (dense).

    Args:
        fn: callable taking the list `tensors` and returning `(value, aux)`.
        variables: list of variables (the trainable weights).
        tensors: list of tensors, passed to `fn` but not differentiated.

    Returns:
        `(value, aux, variable_gradients)`; sparse (embedding) gradients are
        made dense, unconnected ones are zeros.
    """
    with tf.GradientTape() as tape:
        value, aux = fn(list(tensors))
    grads = tape.gradient(
        value, list(variables), unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return value, aux, [tf.convert_to_tensor(g) for g in grads]


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


def function(fn, jit_compile=False, state=None):
    """Compiles `fn` into a TensorFlow graph function (`state` is JAX's: variables are read live).

    Without AutoGraph, as Keras compiles its own steps: keras-bidir's code branches and loops
    through `keras.ops` (it runs under `jax.jit` too), so there is nothing to convert, and
    converting every attack's code cost 13% of an evaluation test's time (65 -> 55 s).
    """
    del state
    return tf.function(fn, jit_compile=jit_compile, reduce_retracing=True, autograph=False)


def gather_rows(variable, index):
    """The rows `index` of `variable` (one row per training example), read without copying
    the rest (a resource gather)."""
    return tf.gather(variable.value, tf.cast(index, "int32"))


def scatter_rows(variable, index, rows):
    """Writes `rows` into `variable` at the rows `index`, in place: the cost of the batch,
    not of the variable (the functional `ops.scatter_update` copies all of it)."""
    index = tf.reshape(tf.cast(index, "int32"), (-1, 1))
    variable.value.scatter_nd_update(index, tf.cast(rows, variable.dtype))


def is_symbolic(tensor):
    """Whether `tensor` is traced (a graph tensor), so its values cannot be read."""
    return not tf.executing_eagerly() or not hasattr(tensor, "numpy")


def batch_bucket(count):
    """The batch size to pad `count` examples to: none (`function` retraces with a dynamic batch)."""
    return count


def fori_loop(lower, upper, body, init):
    """`keras.ops.fori_loop`: a graph loop (its body may assign variables)."""
    return keras.ops.fori_loop(lower, upper, body, init)


def switch(index, branches, *operands):
    """`keras.ops.switch` (its branches may assign variables)."""
    return keras.ops.switch(index, branches, *operands)


def fit_guard(model):
    """Nothing to guard: TensorFlow's `fit` keeps the variables' values in place."""
    del model
    return contextlib.nullcontext()


def sync_state(model):
    """Nothing to do: TensorFlow's variables hold the live state."""
    del model


def accumulate(total, gradients, weight):
    """`total + weight * gradients`, elementwise; `total` None starts a sum.

    Sparse embedding gradients (`tf.IndexedSlices`) are made dense so that
    the gradients of several passes can be added.
    """
    scaled = [tf.convert_to_tensor(g) * weight for g in gradients]
    if total is None:
        return scaled
    return [t + g for t, g in zip(total, scaled)]


# -- tf.distribute -----------------------------------------------------------------
# A training step under a strategy runs once per replica. These helpers are the
# only places that know about replicas; without a strategy they are no-ops.


def distributed():
    """True inside a `tf.distribute` strategy (its scope or one of its replicas)."""
    return tf.distribute.has_strategy()


def replica_position():
    """`(replica_id, num_replicas)` of the running replica; `(0, 1)` without a strategy."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return 0, 1
    context = tf.distribute.get_replica_context()
    return context.replica_id_in_sync_group, context.num_replicas_in_sync


def num_replicas():
    """Replicas of the current strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_rows(draw, shape):
    """This replica's rows of `draw(global_shape)`.

    Random starts and noise are drawn for the whole global batch (every replica
    uses the same seed) and each replica keeps its own rows, so a replica sees
    exactly the numbers single-device training would give its examples.

    Args:
        draw: callable taking a shape and returning a tensor of that shape.
        shape: the per-replica shape, batch axis first.
    """
    replica, replicas = replica_position()
    if replicas == 1:
        return draw(shape)
    shape = tuple(shape)
    rows = shape[0]
    full = draw((rows * replicas,) + shape[1:])
    return full[replica * rows:(replica + 1) * rows]


def replica_block(tensor):
    """This replica's block of a tensor laid out as `num_replicas` equal blocks."""
    replica, replicas = replica_position()
    if replicas == 1:
        return tensor
    capacity = tensor.shape[0]
    if capacity % replicas:
        raise ValueError(
            f"The policy state holds {capacity} rows, which do not split evenly over "
            f"{replicas} replicas. Build the model's policy state under the strategy "
            "(call fit() or build_policy_state() on a model created in strategy.scope()), "
            "or use a global batch size divisible by the number of replicas."
        )
    rows = capacity // replicas
    return tensor[replica * rows:(replica + 1) * rows]


def gather_blocks(tensor):
    """Inverse of `replica_block`: every replica's block, concatenated in replica order."""
    _, replicas = replica_position()
    if replicas == 1:
        return tensor
    return tf.distribute.get_replica_context().all_gather(tensor, axis=0)


def all_replicas(flag):
    """A scalar bool that is True only if `flag` is True on every replica."""
    _, replicas = replica_position()
    if replicas == 1:
        return flag
    failures = tf.distribute.get_replica_context().all_reduce(
        tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(flag, tf.float32)
    )
    return failures < 0.5


def apply_if(flag, apply, args):
    """Runs `apply(*args)` (an optimizer update) only where `flag` is True.

    Under a strategy the replicas first agree on `flag`; the condition is then
    taken in the cross-replica context, because a branch of a replica-context
    `cond` may not contain the optimizer's gradient all-reduce.

    Args:
        flag: scalar bool tensor.
        apply: callable returning nothing; it may synchronize replicas.
        args: tuple of tensor structures passed to `apply`.
    """

    def run(*values):
        apply(*values)
        return tf.constant(True)

    def skip():
        return tf.constant(False)

    if tf.distribute.has_strategy():
        flag = all_replicas(flag)
    if private.strategy_supports_no_merge_call():  # True without a strategy
        tf.cond(flag, lambda: run(*args), skip)
        return

    def cross_replica(strategy, flag, *values):
        # The replicas agreed on `flag`: read it back per replica and take the
        # first (the predicate must be a cross-replica tensor).
        agreed = strategy.extended.call_for_each_replica(tf.identity, args=(flag,))
        first = strategy.experimental_local_results(agreed)[0]

        def run_each():
            strategy.extended.call_for_each_replica(apply, args=values)
            return tf.constant(True)

        tf.cond(first, run_each, skip)

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(flag,) + tuple(args))


def apply_loss_scaled(optimizer, gradients, variables):
    """A `LossScaleOptimizer` update (it skips non-finite steps and adapts its scale)."""
    optimizer.apply(gradients, variables)


def local_batch(batch, model):
    """One replica's part of a distributed batch (the batch itself if not distributed).

    Keras builds metrics from a batch that it first averages over replicas; under
    `MultiWorkerMirroredStrategy` that average is a collective op run eagerly,
    which fails (keras-team/keras#20585). One replica's part has the same
    per-example shapes and needs no communication.
    """

    if isinstance(batch, (list, tuple)):
        return type(batch)(local_batch(value, model) for value in batch)
    if isinstance(batch, dict):
        return {key: local_batch(value, model) for key, value in batch.items()}
    # The first local replica's value (a plain tensor is its own only value).
    return model.distribute_strategy.experimental_local_results(batch)[0]


def step_logs(logs):
    """The logs a train / test step returns, in a form Keras can reduce over replicas.

    Under multi-worker `MultiWorkerMirroredStrategy` Keras reduces step outputs
    with `strategy.reduce("MEAN", value, axis=0)`, which rejects scalars
    (keras-team/keras#20585). The values (aggregated metric results, equal on
    every replica) get a length-1 axis there, which that reduction removes.
    """
    if not private.collective_all_reduce_multi_worker(tf.distribute.get_strategy()):
        return logs
    return {key: tf.reshape(value, [1]) if value.shape.rank == 0 else value
            for key, value in ((k, tf.convert_to_tensor(v)) for k, v in logs.items())}


def strategy_scope(model):
    """The scope in which `model`'s variables live (its distribution strategy's)."""
    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return strategy.scope()


# -- the machine (the benchmark's report) ------------------------------------------


def framework():
    """`"TensorFlow <version>"`."""
    return f"TensorFlow {tf.__version__}"


def accelerators():
    """Names of the GPUs TensorFlow sees (empty on a CPU machine)."""
    return [tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in tf.config.list_physical_devices("GPU")]


def reset_peak_memory():
    """Starts a new peak-memory measurement on the first GPU (no-op without one)."""
    if tf.config.list_physical_devices("GPU"):
        tf.config.experimental.reset_memory_stats("GPU:0")


def peak_memory_mib():
    """Peak GPU memory since `reset_peak_memory`, in MiB; None without a GPU."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
