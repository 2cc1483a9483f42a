"""Adversarial copies of the user's compiled metrics (`adv_accuracy`, ...)."""

import keras
from keras import tree
from keras.src.trainers.compile_utils import CompileMetrics


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
