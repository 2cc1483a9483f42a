"""Per-example losses for attacks, derived from what the user compiled."""

import warnings

import keras
from keras import ops
from keras import tree


def match_rank(y_true, y_pred):
    """Keras' rule for compiled loss functions: when the ranks differ by one
    and one side ends in an axis of size 1, that axis is added to the other
    (rank 1) or removed; e.g. labels `(batch,)` against outputs `(batch, 1)`."""
    true_rank, pred_rank = len(y_true.shape), len(y_pred.shape)
    if pred_rank == true_rank + 1 and y_pred.shape[-1] == 1:
        if true_rank == 1:
            return ops.expand_dims(y_true, -1), y_pred
        return y_true, ops.squeeze(y_pred, -1)
    if true_rank == pred_rank + 1 and y_true.shape[-1] == 1:
        if pred_rank == 1:
            return y_true, ops.expand_dims(y_pred, -1)
        return ops.squeeze(y_true, -1), y_pred
    return y_true, y_pred


def _unreduced(loss):
    """A callable `(y_true, y_pred) -> per-example loss` for one loss spec."""
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        config["reduction"] = None
        return loss.__class__.from_config(config)
    if isinstance(loss, str):
        loss = keras.losses.get(loss)  # Functional form: already unreduced.
    if callable(loss):

        def ranked(y_true, y_pred):
            # Keras wraps loss functions so that label and output ranks match; so do we.
            if y_true is None or tree.is_nested(y_true) or tree.is_nested(y_pred):
                return loss(y_true, y_pred)
            return loss(*match_rank(ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred)))

        return ranked
    raise TypeError(f"Cannot use {loss!r} as a loss.")


def _mean_over_non_batch(values):
    values = ops.convert_to_tensor(values)
    if len(values.shape) <= 1:
        return values
    return ops.mean(values, axis=tuple(range(1, len(values.shape))))


def per_example_loss_fn(loss, loss_weights=None):
    """Builds `fn(y_true, y_pred) -> (batch,)` from a compiled-style loss spec.

    Args:
        loss: a loss name, function or `keras.losses.Loss`, or a list / dict of
            them matching the model's outputs.
        loss_weights: optional list / dict of scalar weights, as in `compile`.

    Returns:
        A callable summing the weighted per-example losses of all outputs.
    """
    if isinstance(loss, dict):
        keys = sorted(loss)
        weights = loss_weights or {}
        parts = [(k, _unreduced(loss[k]), weights.get(k, 1.0)) for k in keys if loss[k] is not None]

        def by_name(y_true, y_pred):
            terms = [
                _mean_over_non_batch(fn(y_true[k], y_pred[k])) * w for k, fn, w in parts
            ]
            return ops.sum(ops.stack(terms), axis=0)

        return by_name
    if isinstance(loss, (list, tuple)):
        weights = list(loss_weights) if loss_weights is not None else [1.0] * len(loss)
        parts = [(i, _unreduced(item), weights[i]) for i, item in enumerate(loss) if item is not None]

        def by_position(y_true, y_pred):
            y_true, y_pred = tree.flatten(y_true), tree.flatten(y_pred)
            terms = [
                _mean_over_non_batch(fn(y_true[i], y_pred[i])) * w for i, fn, w in parts
            ]
            return ops.sum(ops.stack(terms), axis=0)

        return by_position
    fn = _unreduced(loss)
    return lambda y_true, y_pred: _mean_over_non_batch(fn(y_true, y_pred))


def warn_on_logits_mismatch(loss, base_model):
    """Warns when `loss` expects logits but `base_model` ends in a softmax (`compile`)."""
    from_logits = getattr(loss, "from_logits", None)
    if from_logits is None and isinstance(loss, keras.losses.Loss):
        from_logits = loss.get_config().get("from_logits")
    if from_logits and output_activation_is_softmax(base_model):
        warnings.warn(
            "The loss expects logits (from_logits=True) but the base model "
            "ends in a softmax. The loss is then computed on probabilities "
            "and its input gradient is weak, which makes the perturbations "
            "(and robustness figures) unreliable. Remove the final softmax "
            "(keep logits), or use from_logits=False.",
            stacklevel=3,
        )


def output_activation_is_softmax(model):
    """True when the model's last layer applies a softmax activation."""
    layers = getattr(model, "layers", None)
    if not layers:
        return False
    last = layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    return name == "softmax"


def default_classification_loss(model, y, from_logits=None):
    """Cross-entropy matching the labels' form and the model's output.

    Integer labels give sparse cross-entropy, one-hot labels categorical;
    `from_logits` (when not given) is False only when the model ends in a
    softmax.
    """
    if from_logits is None:
        from_logits = not output_activation_is_softmax(model)
    y = ops.convert_to_tensor(y)
    if "int" in str(y.dtype) or len(y.shape) == 1:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits)
    return keras.losses.CategoricalCrossentropy(from_logits=from_logits)


def one_hot_like(y_true, logits):
    num_classes = logits.shape[-1]
    y_true = ops.convert_to_tensor(y_true)
    if len(y_true.shape) == len(logits.shape) and y_true.shape[-1] == num_classes:
        return ops.cast(y_true, logits.dtype)
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(labels, num_classes, dtype=logits.dtype)


def as_logits(outputs, from_logits=True):
    """Logits (float32) from model outputs, for losses that read logits.

    Probabilities (`from_logits=False`) become the log-odds log(p / (1 − p))
    of a single sigmoid unit, or the log-probabilities of a softmax (logits
    up to a per-example shift, which the margin and DLR losses ignore).
    Probabilities are clipped to [1e-7, 1 − 1e-7] first.

    Args:
        outputs: model outputs `(batch, classes)` or `(batch, 1)`.
        from_logits: whether `outputs` are logits already (None: as given).

    Returns:
        A float32 tensor of the same shape.
    """
    outputs = ops.cast(outputs, "float32")
    if from_logits is not False:
        return outputs
    p = ops.clip(outputs, 1e-7, 1.0 - 1e-7)
    if outputs.shape[-1] == 1:
        return ops.log(p) - ops.log1p(-p)
    return ops.log(p)


def reads_logits(loss):
    """Whether a per-example loss reads its outputs as logits (the margin losses)."""
    return bool(getattr(loss, "reads_logits", False))


def on_outputs(loss, from_logits):
    """A logit-reading `loss(y_true, logits)` applied to outputs of this kind.

    Args:
        loss: a per-example loss for which `reads_logits` holds.
        from_logits: False when the outputs are probabilities (they are
            turned into logits by `as_logits` first); True or None: as given.

    Returns:
        A per-example loss `(y_true, outputs) -> (batch,)`.
    """
    if from_logits is not False:
        return loss

    def from_probabilities(y_true, outputs):
        return loss(y_true, tree.map_structure(lambda o: as_logits(o, False), outputs))

    return from_probabilities


def two_class_logits(logits):
    """Logits `(batch, classes)`; a single logit z (binary model) becomes [0, z]."""
    logits = ops.cast(logits, "float32")
    if logits.shape[-1] == 1:
        return ops.concatenate([ops.zeros_like(logits), logits], axis=-1)
    return logits


def margin_loss(y_true, logits):
    """Per-example margin max_{i≠y} z_i − z_y (positive once misclassified).

    A single-logit binary output z is read as the two logits [0, z].
    """
    logits = two_class_logits(logits)
    one_hot = one_hot_like(y_true, logits)
    true_logit = ops.sum(logits * one_hot, axis=-1)
    other = ops.max(ops.where(one_hot > 0, -1e30, logits), axis=-1)
    return other - true_logit


margin_loss.reads_logits = True


def dlr_loss(y_true, logits):
    """Difference-of-logits-ratio loss (Croce and Hein, 2020), per example.

    −(z_y − max_{i≠y} z_i) / (z_π1 − z_π3): invariant to shifting and scaling
    the logits, so it cannot be defeated by saturating the softmax. With fewer
    than three classes it falls back to the plain margin; a single binary
    logit z counts as the two logits [0, z].

    Args:
        y_true: integer labels `(batch,)` or one-hot `(batch, classes)`.
        logits: model outputs `(batch, classes)`.

    Returns:
        A `(batch,)` tensor to ascend.
    """
    logits = two_class_logits(logits)
    margin = margin_loss(y_true, logits)
    if logits.shape[-1] < 3:
        return margin
    ordered = ops.sort(logits, axis=-1)
    scale = ordered[:, -1] - ordered[:, -3] + 1e-12
    return margin / scale


dlr_loss.reads_logits = True


def log_probabilities(outputs, from_logits=True):
    """Log class probabilities (float32) from logits or from probabilities."""
    outputs = ops.cast(outputs, "float32")
    if from_logits:
        return ops.log_softmax(outputs, axis=-1)
    return ops.log(ops.clip(outputs, 1e-7, 1.0))


def kl_divergence(reference, outputs, from_logits=True):
    """Per-example KL(p_reference ‖ p_outputs), summed over classes.

    Args:
        reference: model outputs defining p (logits or probabilities).
        outputs: model outputs defining q.
        from_logits: whether both are logits.

    Returns:
        A `(batch,)` float32 tensor, >= 0.
    """
    log_p = log_probabilities(reference, from_logits)
    log_q = log_probabilities(outputs, from_logits)
    return ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
