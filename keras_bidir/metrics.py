"""Adversarial copies of the user's compiled metrics (`adv_accuracy`, ...)."""

import keras
from keras import ops
from keras import tree
from keras_bidir.backend.private import CompileLoss
from keras_bidir.backend.private import CompileMetrics
from keras_bidir.backend.private import flat_metrics


def _clone_metric(metric):
    if isinstance(metric, keras.metrics.Metric):
        return metric.__class__.from_config(metric.get_config())
    return metric  # Names and plain functions are resolved afresh.


def clone_metric_spec(spec):
    """A copy of a `compile(metrics=...)` argument with fresh Metric objects."""
    if spec is None:
        return None
    return tree.map_structure(_clone_metric, spec)


class PrefixedCompileMetrics(CompileMetrics):
    """Keras' compiled-metrics container whose result keys carry a prefix.

    Keras resolves `"accuracy"` and friends from the shapes of labels and
    outputs; reusing its container keeps that logic identical for the
    adversarial copies.
    """

    def __init__(self, metrics, weighted_metrics, prefix, output_names=None):
        super().__init__(metrics, weighted_metrics, output_names=output_names)
        self.prefix = prefix
        self.name = f"{prefix}compile_metrics"

    def result(self):
        if not self.built:
            return {}
        return {f"{self.prefix}{k}": v for k, v in super().result().items()}


class StepMean(keras.metrics.Mean):
    """A `Mean` that reads NaN, not 0, when nothing was counted.

    The step's losses are weighted by 0 when a step is skipped (NaN / Inf);
    an epoch in which no step counted then shows `loss: nan`, never a loss of
    0.0 that looks like perfect training.
    """

    def result(self):
        count = ops.cast(self.count, self.dtype)
        return ops.where(count > 0, self.total / ops.maximum(count, 1e-30), float("nan"))


class PrefixedCompileLoss(CompileLoss):
    """Keras' compiled-loss container whose per-output loss metrics carry a prefix.

    The adversarial pass of a multi-output model logs `adv_<output>_loss`
    beside the clean `<output>_loss`.
    """

    def __init__(self, loss, loss_weights, prefix, output_names=None):
        super().__init__(loss, loss_weights, output_names=output_names)
        self.prefix = prefix

    def build(self, y_true, y_pred):
        super().build(y_true, y_pred)
        for metric in self.metrics:
            if not metric.name.startswith(self.prefix):
                metric.name = f"{self.prefix}{metric.name}"


def update_labeled(container, y_true, y_pred, labeled, sample_weight=None):
    """Updates a compiled-metrics container on the labeled examples only.

    Keras' `metrics=` ignore sample weights, so a batch mixing unlabeled
    examples (VAT) would count them as errors; here every metric is weighted
    by the 0/1 `labeled` mask (times `sample_weight` for `weighted_metrics`).
    """
    if not container.built:
        container.build(y_true, y_pred)
    weighted = labeled if sample_weight is None else labeled * sample_weight
    for metric, y_t, y_p, is_weighted in flat_metrics(container, y_true, y_pred):
        if metric:
            metric.update_state(y_t, y_p, sample_weight=weighted if is_weighted else labeled)
