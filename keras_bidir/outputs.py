"""What a model's outputs mean: class logits, class probabilities or regression values.

Robust accuracy is only meaningful when predictions are read the way the model
means them. A single sigmoid output thresholded at 0 instead of 0.5 reports the
positive-class rate as the accuracy; a regression model has no accuracy at
all. `describe_outputs` decides from what is known for sure (an explicit
argument, the compiled loss, the layer that produces the output, the values
themselves) and refuses when it cannot tell.
"""

import keras
import numpy as np

MULTICLASS, BINARY, REGRESSION = "multiclass", "binary", "regression"

_REGRESSION_LOSSES = {
    "mean_squared_error", "mse", "mean_absolute_error", "mae",
    "mean_absolute_percentage_error", "mape", "mean_squared_logarithmic_error", "msle",
    "huber", "huber_loss", "log_cosh", "logcosh", "cosine_similarity", "poisson",
}
_BINARY_LOSSES = {"binary_crossentropy", "binary_focal_crossentropy"}
_MULTICLASS_LOSSES = {
    "sparse_categorical_crossentropy", "categorical_crossentropy",
    "categorical_focal_crossentropy",
}


class OutputKind:
    """How to read one model output.

    Attributes:
        task: `"multiclass"`, `"binary"` or `"regression"`.
        from_logits: for classification, whether the outputs are logits
            (False: probabilities; None: unknown, which only multi-class
            argmax predictions tolerate).
        reason: how this was decided (shown in reports and errors).
    """

    def __init__(self, task, from_logits=None, reason=""):
        self.task = task
        self.from_logits = from_logits
        self.reason = reason

    @property
    def is_classification(self):
        return self.task != REGRESSION

    def predict(self, outputs):
        """Class predictions `(batch,)` from outputs of this kind."""
        outputs = np.asarray(outputs)
        if self.task == MULTICLASS:
            return outputs.argmax(axis=-1)
        scores = outputs.reshape(outputs.shape[0], -1)[:, 0]
        return (scores > (0.0 if self.from_logits else 0.5)).astype("int64")

    def labels(self, y):
        """Integer class labels `(batch,)` from sparse, one-hot or 0/1 targets."""
        y = np.asarray(y)
        if y.ndim >= 2 and y.shape[-1] > 1:
            return y.argmax(axis=-1)
        y = y.reshape(y.shape[0])
        return (y > 0.5).astype("int64") if self.task == BINARY else y.astype("int64")

    def default_loss(self, model, y):
        """The loss to attack a model of this kind that was compiled without one."""
        from keras_bidir import losses as losses_lib

        if self.task == REGRESSION:
            return "mean_squared_error"
        if self.task == BINARY:
            return keras.losses.BinaryCrossentropy(from_logits=bool(self.from_logits))
        return losses_lib.default_classification_loss(model, y, self.from_logits)

    def __repr__(self):
        return f"OutputKind({self.task!r}, from_logits={self.from_logits!r})"


def loss_name(loss):
    """The lower-case name of a loss spec (string, `keras.losses.Loss` or function)."""
    if isinstance(loss, str):
        return loss.lower()
    if isinstance(loss, keras.losses.Loss):
        return (loss.name or "").lower()
    return getattr(loss, "__name__", "").lower()


def _loss_from_logits(loss):
    """The loss's `from_logits`, or None when it does not say."""
    if isinstance(loss, keras.losses.Loss):
        return loss.get_config().get("from_logits")
    if loss_name(loss) in _BINARY_LOSSES | _MULTICLASS_LOSSES:
        return False  # The string and function forms default to probabilities.
    return None


def _task_from_loss(loss, units):
    name = loss_name(loss)
    if name in _REGRESSION_LOSSES:
        return REGRESSION
    if name in _BINARY_LOSSES:
        return BINARY if units == 1 else None  # Several sigmoid units: multi-label.
    if name in _MULTICLASS_LOSSES:
        return MULTICLASS if units > 1 else None
    return None


def _activation_of_output_layer(model):
    """'sigmoid' / 'softmax' when a Sequential model's last layer applies it, else None."""
    base = getattr(model, "base_model", model)
    if not isinstance(base, keras.Sequential) or not base.layers:
        return None
    last = base.layers[-1]
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    name = getattr(getattr(last, "activation", None), "__name__", "")
    return name if name in ("sigmoid", "softmax") else None


def compiled_loss(model, output=None):
    """The loss `model` was compiled with (for one head when `output` is given), or None."""
    loss = getattr(getattr(model, "step_state", None), "loss_spec", None)
    if loss is None:
        loss = getattr(model, "loss", None)
    if output is not None and isinstance(loss, dict):
        return loss.get(output)
    if output is not None and isinstance(loss, (list, tuple)) and isinstance(output, int):
        return loss[output]
    if isinstance(loss, (dict, list, tuple)):
        return None
    return loss


def declared_from_logits(model):
    """Whether `model` outputs logits, when its compiled loss or output layer says; else None."""
    loss = compiled_loss(model)
    said = _loss_from_logits(loss) if loss is not None else None
    if said is not None:
        return bool(said)
    return False if _activation_of_output_layer(model) is not None else None


def describe_outputs(model, outputs, y, from_logits=None, loss=None):
    """Decides how to read `outputs` of `model` (one output head).

    Args:
        model: the model (its compiled loss and output layer are consulted).
        outputs: model outputs on a batch of clean inputs.
        y: the labels of that batch.
        from_logits: explicit answer for classifiers (None: decide).
        loss: the loss of this head, when known (default: the compiled one).

    Returns:
        An `OutputKind`.

    Raises:
        ValueError: when a single-output classifier's outputs could be either
            probabilities or logits, or the outputs are multi-label; the
            message says which argument to pass.
    """
    outputs = np.asarray(keras.ops.convert_to_numpy(outputs), dtype="float64")
    units = 1 if outputs.ndim < 2 else int(np.prod(outputs.shape[1:]))
    loss = compiled_loss(model) if loss is None else loss
    task = _task_from_loss(loss, units) if loss is not None else None
    if task is None and loss is not None and loss_name(loss) in _BINARY_LOSSES | _MULTICLASS_LOSSES:
        raise ValueError(
            f"The model has {units} outputs and is trained with {loss_name(loss)}: a "
            "multi-label (or mismatched) head, for which robust accuracy per example is "
            "not defined here. Evaluate one binary or one multi-class head (`output=`)."
        )
    if task is None:
        task = _task_from_labels(y, units)
    if task == REGRESSION:
        return OutputKind(REGRESSION, None, "regression loss or continuous targets")
    if from_logits is not None:
        return OutputKind(task, bool(from_logits), "from_logits argument")
    said = _loss_from_logits(loss) if loss is not None else None
    if said is not None:
        return OutputKind(task, bool(said), f"the compiled loss ({loss_name(loss)})")
    activation = _activation_of_output_layer(model)
    if activation is not None:
        return OutputKind(task, False, f"the output layer's {activation}")
    finite = outputs[np.isfinite(outputs)]
    if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
        return OutputKind(task, True, "output values outside [0, 1]")
    if task == MULTICLASS:
        return OutputKind(task, None, "argmax (probabilities or logits alike)")
    raise ValueError(
        "Cannot tell whether this binary model outputs a probability (sigmoid) or a "
        "logit: its outputs on the batch all lie in [0, 1], and neither the compiled loss "
        "nor the output layer says. Pass from_logits=False if the model applies a sigmoid "
        "(e.g. in call()), from_logits=True if it returns raw scores."
    )


def _task_from_labels(y, units):
    y = np.asarray(y)
    if units > 1:
        return MULTICLASS
    values = y[np.isfinite(y)] if np.issubdtype(y.dtype, np.floating) else y
    if values.size and np.all(np.isin(values, (0, 1))):
        return BINARY
    if np.issubdtype(y.dtype, np.integer) or (values.size and np.all(values == np.round(values))):
        raise ValueError(
            "A single-output model with integer labels other than 0/1: cannot tell a binary "
            "classifier from a count regression. Compile the model with its loss."
        )
    return REGRESSION
