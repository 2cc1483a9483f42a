"""Every private Keras / TensorFlow API keras-bidir uses, each with its reason.

Nothing else in keras-bidir imports `keras.src` or `tf.__internal__`. Each entry
says why the public API does not suffice and what would remove it. Besides
these, `BidirectionalModel` overrides two private trainer hooks,
`_maybe_symbolic_build` and `_symbolic_build` (Keras has no public hook to build
extra metric containers before a distributed step; keras-team/keras#20585),
and reads the trainer's `_compile_loss`, `_compile_metrics` and
`_loss_tracker`, which `Model.train_step` overrides are documented to use.
"""

import contextlib

# Keras' compiled-loss and compiled-metrics containers: the adversarial copies
# (`adv_accuracy`, `adv_<output>_loss`) must resolve "accuracy" and per-output
# names exactly as the compiled ones do. Public API: none (keras.src.trainers).
from keras.src.trainers.compile_utils import CompileLoss  # noqa: F401
from keras.src.trainers.compile_utils import CompileMetrics  # noqa: F401


def compiled_loss(model):
    """The compiled-loss container of a compiled model (None before `compile`).

    Why: the step computes the compiled loss on the outputs it already has
    (the clean pass), and the adversarial copy resolves output names as it
    does; `Model.compute_loss` would run it on outputs of its own choosing.
    """
    return getattr(model, "_compile_loss", None)


def compiled_metrics(model):
    """The compiled-metrics container (None without metrics); why: as `compiled_loss`."""
    return getattr(model, "_compile_metrics", None)


def loss_tracker(model):
    """The tracker behind the `loss` log. Why: the step updates it with its own total."""
    return model._loss_tracker


def set_loss_tracker(model, tracker):
    """Replaces the `loss` tracker (a `StepMean` reads NaN, not 0, when every step was skipped)."""
    object.__setattr__(model, "_loss_tracker", tracker)


def additional_loss(model, loss):
    """A `model.losses` entry reduced as Keras adds it to the compiled loss.

    Why: the step adds the layers' losses (regularizers) to its own total the
    way `Model.compute_loss` does; Keras exposes no public reducer.
    """
    return model._aggregate_additional_loss(loss)


def flat_metrics(container, y_true, y_pred):
    """`[(metric, y_true, y_pred, weighted)]` of a built CompileMetrics container.

    Why: VAT updates every compiled metric with a per-example mask of the
    labeled rows; the container has no public per-metric access.
    """
    y_true, y_pred = container._flatten_y(y_true), container._flatten_y(y_pred)
    pairs = [(m, t, p, False) for m, t, p in zip(container._flat_metrics, y_true, y_pred)]
    pairs += [(m, t, p, True) for m, t, p in zip(container._flat_weighted_metrics, y_true, y_pred)]
    return pairs


def scale_loss_for_distribution(value):
    """Divides a loss by the number of replicas, as Keras does for compiled losses.

    Why: a policy's own loss (TRADES, VAT) must be summed over replicas like
    the compiled one. Public API: none (keras.src.losses.loss).
    """
    from keras.src.losses.loss import scale_loss_for_distribution as scale

    return scale(value)


def unscale_loss_for_distribution(value):
    """The inverse of `scale_loss_for_distribution` (for logging per-batch means)."""
    from keras.src.losses.loss import unscale_loss_for_distribution as unscale

    return unscale(value)


def stateless_scope():
    """The active `keras.StatelessScope`, or None.

    Why: the JAX step nests scopes (one per gradient and loop body) that start
    from the enclosing scope's values; Keras exposes the scope class but not
    the getter (keras.src.backend.common.stateless_scope).
    """
    from keras.src.backend.common.stateless_scope import get_stateless_scope

    return get_stateless_scope()


def compute_output_spec(fn, *args, **kwargs):
    """Runs `fn` symbolically (KerasTensors), building the variables it creates.

    Why: the adversarial metric containers must be built before a distributed
    step, as Keras builds its own. Public API: none (keras.src.backend).
    """
    from keras.src.backend import compute_output_spec as spec

    return spec(fn, *args, **kwargs)


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Lets `layer` track new variables after it was built (and locked).

    Why: a policy's per-example state is created on the first batch, after
    reading activation shapes may have built the model; Keras unlocks its
    tracker the same way in `Layer._untrack_variable`.
    """
    was_locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        yield
    finally:
        if was_locked:
            layer._tracker.lock()


def nested_layers(model, include_self=False):
    """Every layer nested in `model`, depth first (subclassed models included).

    Why: `Model.layers` lists direct children only, and subclassed models'
    BatchNorm / PerturbationPoint layers hide deeper. Public API: none
    (`Layer._flatten_layers`).
    """
    flatten = getattr(model, "_flatten_layers", None)
    return list(flatten(include_self=include_self)) if flatten is not None else []


def seed_generators(layer):
    """The `SeedGenerator`s `layer` itself owns (not its sublayers').

    Why: an augmentation layer inside a policy is not part of the model, so
    the model must track its generators itself; Keras lists a layer's
    generators only in the private `_seed_generators`.
    """
    return list(getattr(layer, "_seed_generators", []))


def is_graph_model(model):
    """Whether `model` is a graph of layers (Functional, keras-hub backbones).

    Why: `keras.models.clone_model(call_function=...)` needs one, and
    subclasses of `Functional` (keras-hub backbones) are not
    `keras.Sequential`; the class is not public. Public API: none.
    """
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def strategy_supports_no_merge_call():
    """TensorFlow: whether all-reduce may run inside a replica (no merge call).

    Why: a conditional optimizer update under a strategy must take the
    cross-replica path otherwise. Public API: none (tf.__internal__).
    """
    import tensorflow as tf

    return tf.__internal__.distribute.strategy_supports_no_merge_call()


def collective_all_reduce_multi_worker(strategy):
    """TensorFlow: whether `strategy` is multi-worker (its step outputs need gathering).

    Why: Keras reduces scalar step outputs along axis 0 under
    MultiWorkerMirroredStrategy (keras-team/keras#20585); the check Keras
    uses itself is private.
    """
    from keras.src.backend.tensorflow.trainer import _collective_all_reduce_multi_worker

    return _collective_all_reduce_multi_worker(strategy)


def stored_value(variable):
    """The value a variable holds, or None where JAX's `fit` emptied it.

    Why: Keras' JAX `fit` sets `variable._value = None` while it holds the
    values in its state, and `variable.value` then raises; there is no
    public way to ask whether a variable is empty.
    """
    return variable._value
