"""Gradient-free baselines."""

import keras

from keras_bidir import backend
from keras_bidir import constraints
from keras_bidir.policies.base import InputPolicy
from keras_bidir.policies.base import check_positive


@keras.saving.register_keras_serializable(package="keras_bidir")
class GaussianNoise(InputPolicy):
    """Adds Gaussian noise N(0, stddev²) to the inputs; uses no gradient.

    The baseline that separates the effect of adversarial directions from
    that of mere noise. Needs no labels.

    Args:
        stddev: standard deviation of the noise.
        epsilon: optional L∞ bound on the noise (None: unbounded).
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None),
            `direction` (+1 ascends the loss, -1 descends it) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.GaussianNoise(stddev=0.1, clip_min=0.0, clip_max=1.0)
    """

    uses_gradients = False
    requires_labels = False

    def __init__(self, stddev, epsilon=None, **kwargs):
        kwargs.setdefault("direction", 1)
        super().__init__(**kwargs)
        self.stddev = check_positive("stddev", stddev)
        self.epsilon = check_positive("epsilon", epsilon, allow_none=True)

    def generate(self, context, inputs, state):
        adversarial = []
        for x, clip in zip(inputs, context.clip(len(inputs))):
            noise = backend.replica_rows(
                lambda shape: keras.random.normal(
                    shape, stddev=self.stddev, dtype="float32", seed=context.seed
                ),
                keras.ops.shape(x),
            )
            noise = keras.ops.cast(noise, x.dtype) * keras.ops.cast(context.scale, x.dtype)
            if self.epsilon is not None:
                noise = constraints.project(noise, self.epsilon * context.scale, "linf")
            adversarial.append(self._clip(x + noise, clip))
        return adversarial, state

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"stddev": self.stddev, "epsilon": self.epsilon, **config}
