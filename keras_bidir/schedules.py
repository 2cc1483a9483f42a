"""Learning-rate schedules of the fast adversarial training recipes."""

import keras
from keras import ops

from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive


@keras.saving.register_keras_serializable(package="keras_bidir")
class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """One triangular cycle: linear warm-up to a peak, then linear decay.

    The "cyclic" schedule of fast adversarial training (Wong, Rice and Kolter,
    "Fast is better than free", ICLR 2020; after Smith's one-cycle policy):
    the rate rises from `initial_learning_rate` to `peak_learning_rate` over
    the first `warmup_fraction` of `total_steps`, then falls linearly to
    `final_learning_rate` at the last step, and stays there.

    Args:
        peak_learning_rate: the highest rate, reached at
            `warmup_fraction · total_steps`.
        total_steps: the number of optimizer steps of the whole training
            (epochs × steps per epoch; × replays for FreeAdversarial).
        warmup_fraction: the fraction of the steps spent rising, in (0, 1).
        initial_learning_rate: the rate at step 0.
        final_learning_rate: the rate at the last step.

    Example:

    >>> steps = 30 * math.ceil(len(x_train) / 128)
    >>> optimizer = keras.optimizers.Adam(keras_bidir.schedules.OneCycle(4e-3, steps))
    """

    def __init__(self, peak_learning_rate, total_steps, warmup_fraction=0.4,
                 initial_learning_rate=0.0, final_learning_rate=0.0):
        self.peak_learning_rate = check_positive("peak_learning_rate", peak_learning_rate)
        self.total_steps = check_count("total_steps", total_steps)
        if not 0.0 < float(warmup_fraction) < 1.0:
            raise ValueError(f"warmup_fraction must lie in (0, 1), got {warmup_fraction!r}.")
        self.warmup_fraction = float(warmup_fraction)
        for name, value in (("initial_learning_rate", initial_learning_rate),
                            ("final_learning_rate", final_learning_rate)):
            if not 0.0 <= float(value) <= self.peak_learning_rate:
                raise ValueError(
                    f"{name} must lie in [0, peak_learning_rate={self.peak_learning_rate}], "
                    f"got {value!r}.")
        self.initial_learning_rate = float(initial_learning_rate)
        self.final_learning_rate = float(final_learning_rate)

    def __call__(self, step):
        t = ops.cast(step, "float32") / float(self.total_steps)
        t = ops.minimum(t, 1.0)
        peak, warm = self.peak_learning_rate, self.warmup_fraction
        rising = self.initial_learning_rate + (peak - self.initial_learning_rate) * t / warm
        falling = peak + (self.final_learning_rate - peak) * (t - warm) / (1.0 - warm)
        return ops.where(t < warm, rising, falling)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "warmup_fraction": self.warmup_fraction,
            "initial_learning_rate": self.initial_learning_rate,
            "final_learning_rate": self.final_learning_rate,
        }
