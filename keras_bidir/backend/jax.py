"""JAX gradient code: `jax.value_and_grad` of pure functions of the variables' values.

Keras' JAX trainer is stateless: `train_step(state, data)` takes every
variable's value and returns the new values (`keras/src/backend/jax/trainer.py`).
keras-bidir's step (`keras_bidir.trainer.Step`) is written against variables,
as on TensorFlow. Here it runs inside a `keras.StatelessScope` that maps each
variable to its value in `state`: reads see the state, `assign` records the
new value in the scope, and the new state is read back from the scope. Every
gradient is one `jax.value_and_grad` of a pure function of the variables'
values and the site tensors, whose variable updates (BatchNorm statistics,
seed generators) come back as auxiliary outputs; graph loops thread the
scope's values through `jax.lax.fori_loop`. Nothing is captured as a
constant, so one jitted step serves the whole fit.

Multi-device training uses `keras.distribution.DataParallel`: the jitted step
sees the global batch (XLA splits it over the devices), so the replica helpers
below are the single-device ones.
"""

import contextlib

import jax
import keras
from jax import numpy as jnp

from keras_bidir.backend import private


class _Scope(keras.StatelessScope):
    """A `StatelessScope` that also remembers the variables it maps or updates."""

    def __init__(self, mapping=(), variables=()):
        super().__init__()
        self.variables = dict(variables)
        self.state_mapping.update(mapping)

    def map(self, variable, value):
        self.variables[id(variable)] = variable
        self.state_mapping[id(variable)] = value

    def add_update(self, update):
        variable, _ = update
        self.variables[id(variable)] = variable
        super().add_update(update)


def gather_rows(variable, index):
    """The rows `index` of `variable` (one row per training example)."""
    return jnp.take(_value(variable), jnp.asarray(index, "int32"), axis=0)


def scatter_rows(variable, index, rows):
    """Writes `rows` into `variable` at the rows `index`. Functional, as JAX is; inside the
    compiled step the state is donated, so XLA updates the buffer in place (measured: ATAS at
    60,000 MNIST examples 1.05x the batch-prior FGSM's step time)."""
    value = _value(variable)
    variable.assign(value.at[jnp.asarray(index, "int32")].set(rows.astype(value.dtype)))


def _inner_scope():
    """A scope starting from the active scope's values (empty outside one)."""
    outer = private.stateless_scope()
    if outer is None:
        return _Scope()
    return _Scope(outer.state_mapping, getattr(outer, "variables", {}))


def _value(variable):
    scope = private.stateless_scope()
    value = scope.get_current_value(variable) if scope is not None else None
    return variable.value if value is None else value


def _updates(inner, before, fixed=()):
    """`{id: value}` of the variables `inner` changed (leaving out `fixed` ids)."""
    return {key: value for key, value in inner.state_mapping.items()
            if key not in fixed and before.get(key) is not value}


def _write(updates, variables):
    """Applies `updates` to the active scope, or to the variables outside one."""
    scope = private.stateless_scope()
    for key, value in updates.items():
        if scope is None:
            variables[key].assign(value)
        elif isinstance(scope, _Scope):
            scope.map(variables[key], value)
        else:
            scope.state_mapping[key] = value


def _differentiate(fn, variables, tensors, wrt):
    """`(value, aux, gradients)` of `fn(tensors)`; `wrt` picks (variables, tensors) args."""
    variables, tensors = list(variables), list(tensors)
    known = {}

    def pure(variable_values, tensor_values):
        inner = _inner_scope()
        before = dict(inner.state_mapping)
        for variable, value in zip(variables, variable_values):
            inner.map(variable, value)
        with inner:
            value, aux = fn(list(tensor_values))
        known.update(inner.variables)
        return value, (aux, _updates(inner, before, {id(v) for v in variables}))

    (value, (aux, updates)), grads = jax.value_and_grad(pure, argnums=wrt, has_aux=True)(
        [_value(v) for v in variables], tensors)
    _write(updates, known)
    return value, aux, grads


def value_and_gradients(fn, variables, tensors):
    """Evaluates `fn(tensors)` once and differentiates it in one backward pass.

    Args:
        fn: callable taking the list `tensors` and returning `(value, aux)`,
            where `value` is a scalar and `aux` any structure of tensors.
        variables: list of variables (the trainable weights).
        tensors: list of tensors (inputs or activations) to differentiate.

    Returns:
        `(value, aux, variable_gradients, tensor_gradients)`; gradients of
        tensors that do not influence `value` are zeros.
    """
    value, aux, (variable_grads, tensor_grads) = _differentiate(fn, variables, tensors, (0, 1))
    return value, aux, list(variable_grads), list(tensor_grads)


def variable_gradients(fn, variables, tensors):
    """Gradients of `fn(tensors)` with respect to `variables` only.

    Returns:
        `(value, aux, variable_gradients)`.
    """
    value, aux, grads = _differentiate(fn, variables, tensors, 0)
    return value, aux, list(grads)


def input_gradients(fn, tensors):
    """Gradients of `fn(tensors)` with respect to `tensors` only.

    Returns:
        `(value, aux, tensor_gradients)`.
    """
    value, aux, grads = _differentiate(fn, [], tensors, 1)
    return value, aux, list(grads)


# Loops of at most this many iterations (the training attacks: PGD-7, free-8, FreeLB-3)
# are unrolled into the step; longer ones (PGD-100, APGD, Square as evaluation attacks)
# stay `jax.lax.fori_loop`s, whose compile time does not grow with the count. On the
# 2-core CPU, XLA's loop cost free-4 1,147 ms a step against 44 ms unrolled, and PGD-7 96
# against 56 ms (`keras-bidir bench --configs pgd7 free4`).
UNROLL_UP_TO = 16


def fori_loop(lower, upper, body, init):
    """`keras.ops.fori_loop` whose body may assign variables (seed generators, BatchNorm).

    Short loops with Python bounds are unrolled (`UNROLL_UP_TO`). Otherwise,
    inside a stateless scope (a jitted step) the scope's values travel in the
    loop's carry; outside any trace the loop runs in Python.
    """
    python_bounds = isinstance(lower, int) and isinstance(upper, int)
    scope = private.stateless_scope()
    if python_bounds and (upper - lower <= UNROLL_UP_TO or (scope is None and not _tracing(init))):
        value = init
        for i in range(lower, upper):
            value = body(i, value)
        return value
    if scope is None:
        scope = _Scope()
        with scope:
            return fori_loop(lower, upper, body, init)
    keys = list(scope.state_mapping)
    known = dict(getattr(scope, "variables", {}))

    def step(i, carry):
        value, values = carry
        inner = _Scope(scope.state_mapping, known)
        inner.state_mapping.update(zip(keys, values))
        with inner:
            value = body(i, value)
        _check_no_new(inner, keys)
        return value, [inner.state_mapping[k] for k in keys]

    value, values = jax.lax.fori_loop(lower, upper, step, (init, [scope.state_mapping[k] for k in keys]))
    scope.state_mapping.update(zip(keys, values))
    return value


def switch(index, branches, *operands):
    """`keras.ops.switch` whose branches may assign variables (seed generators)."""
    scope = private.stateless_scope()
    if scope is None:
        if not _tracing([index, list(operands)]):  # eager: take the branch
            return branches[int(index)](*operands)
        scope = _Scope()
        with scope:
            return switch(index, branches, *operands)
    keys = list(scope.state_mapping)
    known = dict(getattr(scope, "variables", {}))

    def threaded(branch):
        def run(values, *xs):
            inner = _Scope(scope.state_mapping, known)
            inner.state_mapping.update(zip(keys, values))
            with inner:
                result = branch(*xs)
            _check_no_new(inner, keys)
            return result, [inner.state_mapping[k] for k in keys]

        return run

    result, values = jax.lax.switch(
        index, [threaded(b) for b in branches], [scope.state_mapping[k] for k in keys], *operands)
    scope.state_mapping.update(zip(keys, values))
    return result


def _check_no_new(inner, keys):
    new = set(inner.state_mapping) - set(keys)
    if new:
        names = [getattr(inner.variables.get(k), "path", k) for k in new]
        raise RuntimeError(
            f"Variables {names} were first written inside a loop or branch; keras-bidir's JAX "
            "step threads only the variables of the model's state. Please report this.")


def is_symbolic(tensor):
    """Whether `tensor` is traced (a JAX tracer), so its values cannot be read."""
    return isinstance(tensor, jax.core.Tracer)


def _tracing(structure):
    return any(isinstance(t, jax.core.Tracer) for t in keras.tree.flatten(structure))


def function(fn, jit_compile=False, state=None):
    """Compiles `fn` with `jax.jit`, its variables passed in and out as values.

    Args:
        fn: the function.
        jit_compile: ignored (JAX always compiles with XLA).
        state: callable returning the variables `fn` reads or writes (the
            model's and its seed generators'). Without it `fn` runs eagerly,
            since jitting would freeze the variables' values into the trace.
    """
    del jit_compile
    if state is None:
        return fn

    def pure(values, args, kwargs):
        variables = state()
        scope = _Scope()
        for variable, value in zip(variables, values):
            scope.map(variable, value)
        with scope:
            result = fn(*args, **kwargs)
        return result, [scope.state_mapping[id(v)] for v in variables]

    jitted = jax.jit(pure)

    def call(*args, **kwargs):
        variables = state()
        result, values = jitted([v.value for v in variables], args, kwargs)
        for variable, value in zip(variables, values):
            variable.assign(value)
        return result

    return call


def batch_bucket(count):
    """The batch size to pad `count` examples to, so `jax.jit` compiles few shapes.

    Sizes 2^k and 1.5·2^k: at most 1.5× the work, a handful of compilations.
    """
    size = 1
    while size < count:
        power_of_two = size & (size - 1) == 0
        size = size + max(size // 2, 1) if power_of_two else size // 3 * 4
    return size


def accumulate(total, gradients, weight):
    """`total + weight * gradients`, elementwise; `total` None starts a sum."""
    scaled = [g * weight for g in gradients]
    if total is None:
        return scaled
    return [t + g for t, g in zip(total, scaled)]


def apply_if(flag, apply, args):
    """Runs `apply(*args)` (an optimizer update) and keeps its effect only where `flag` holds."""
    scope = private.stateless_scope()
    before = dict(scope.state_mapping)
    apply(*args)
    for key, value in list(scope.state_mapping.items()):
        old = before.get(key)
        if old is not None and old is not value:
            scope.state_mapping[key] = jnp.where(flag, value, old)


def apply_loss_scaled(optimizer, gradients, variables):
    """A `LossScaleOptimizer` update through its stateless form (its `apply` branches on state)."""
    scope = private.stateless_scope()
    trainable = list(variables)
    new_trainable, new_optimizer = optimizer.stateless_apply(
        [_value(v) for v in optimizer.variables], list(gradients), [_value(v) for v in trainable])
    for variable, value in zip(trainable + list(optimizer.variables), new_trainable + new_optimizer):
        scope.map(variable, value) if isinstance(scope, _Scope) else variable.assign(value)


# -- the model's state, threaded -------------------------------------------------------


def _state_variables(model, optimizer=True):
    groups = [model.trainable_variables, model.non_trainable_variables]
    if optimizer:
        groups.append(model.optimizer.variables if model.optimizer is not None else [])
    groups.append(model.metrics_variables)
    return groups


def stateful(model, state, run, optimizer=True):
    """Runs `run()` with the model's variables holding `state`; `(result, new state)`.

    Keras' JAX trainer's shape: the state is `(trainable, non-trainable, optimizer,
    metrics)` values; the step itself is written against variables (`keras_bidir.steps`).
    """
    groups = _state_variables(model, optimizer)
    scope = _Scope()
    for variables, values in zip(groups, state):
        for variable, value in zip(variables, values):
            scope.map(variable, value)
    expected = set(scope.state_mapping)
    with scope:
        result = run()
    stray = set(scope.state_mapping) - expected
    if stray:
        names = sorted(str(getattr(scope.variables[k], "path", k)) for k in stray)
        raise RuntimeError(
            f"The training step wrote variables outside the model's state: {names}. "
            "Attach them to the model (e.g. as attributes of a layer) so JAX can thread them.")
    new_state = tuple([scope.state_mapping[id(v)] for v in variables] for variables in groups)
    return result, new_state


# -- distribution: keras.distribution.DataParallel -----------------------------------
# The jitted step computes on the global batch and XLA shards it, so a step
# never sees a replica: these are the single-device forms.


def distributed():
    """False: JAX's data parallelism is invisible to the step."""
    return False


def replica_position():
    return 0, 1


def num_replicas():
    return 1


def replica_rows(draw, shape):
    return draw(shape)


def replica_block(tensor):
    return tensor


def gather_blocks(tensor):
    return tensor


def all_replicas(flag):
    return flag


def local_batch(batch, model):
    return batch


def step_logs(logs):
    return logs


def strategy_scope(model):
    del model
    return contextlib.nullcontext()


@contextlib.contextmanager
def fit_guard(model):
    """Gives the variables their values back when `fit` fails before its first step.

    Keras' JAX `fit` empties the model's variables while it holds their values
    in its state, and writes them back only once a step has run: an error
    raised while the step is traced (a clear keras-bidir error included)
    would leave every weight empty.
    """
    variables = _all_variables(model)
    values = [private.stored_value(v) for v in variables]
    try:
        yield
    except BaseException:
        for variable, value in zip(variables, values):
            if private.stored_value(variable) is None and value is not None:
                variable.assign(value)
        raise


def _all_variables(model):
    found, seen = [], set()
    for group in _state_variables(model, optimizer=model.optimizer is not None):
        for variable in group:
            if id(variable) not in seen:
                seen.add(id(variable))
                found.append(variable)
    return found


def sync_state(model):
    """Writes the state a running `fit` holds back into the model's variables."""
    if getattr(model, "_jax_state", None):
        model.jax_state_sync()


# -- the machine (the benchmark's report) ------------------------------------------


def framework():
    """`"JAX <version>"`."""
    return f"JAX {jax.__version__}"


def accelerators():
    """Names of the GPUs / TPUs JAX uses (empty on a CPU machine)."""
    return [d.device_kind for d in jax.devices() if d.platform != "cpu"]


def reset_peak_memory():
    """JAX keeps no resettable peak: `peak_memory_mib` reports None."""


def peak_memory_mib():
    """None: JAX's allocator has no per-measurement peak to reset."""
    return None
