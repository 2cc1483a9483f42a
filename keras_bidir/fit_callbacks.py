"""The callbacks `BidirectionalModel.fit` adds to every run."""

import warnings

import keras


class NonFiniteWarning(keras.callbacks.Callback):
    """Warns once per fit() when batches were skipped for NaN / Inf values."""

    def __init__(self):
        super().__init__()
        self._warned = False

    def on_epoch_end(self, epoch, logs=None):
        count = (logs or {}).get("nonfinite_batches", 0)
        if count and not self._warned:
            self._warned = True
            warnings.warn(
                f"{int(count)} training step(s) in epoch {epoch + 1} produced NaN or Inf "
                "(loss, weight or input gradient) and were skipped: neither the weights nor "
                "the policy state changed. Check the data for NaN/Inf values and labels out "
                "of range, and lower the learning rate if the loss diverges. The count is "
                "logged as `nonfinite_batches`.",
                stacklevel=2,
            )


class WeightPolicyWarmup(keras.callbacks.Callback):
    """No weight perturbation during the weight policy's warm-up epochs."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.weight_perturbation_scale.assign(0.0 if epoch < self.epochs else 1.0)


def added_callbacks(model):
    """The callbacks `fit` appends to the user's."""
    callbacks = [NonFiniteWarning()]
    if model.weight_policy is not None and model.weight_policy.warmup_epochs:
        callbacks.append(WeightPolicyWarmup(model.weight_policy.warmup_epochs))
    return callbacks
