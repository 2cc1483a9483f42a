"""ATAS: FGSM with a per-example adaptive step size (Huang et al. 2023)."""

import keras
from keras import ops

from keras_bidir import constraints
from keras_bidir.policies import memory
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.base import BallPolicy


@keras.saving.register_keras_serializable(package="keras_bidir")
class ATAS(BallPolicy):
    """ATAS: one FGSM step from each example's previous perturbation, with its own step size.

    For every training example it keeps its perturbation from the previous
    epoch (a uniform draw in the ε-ball the first time) and a running mean of
    its squared input-gradient norm, v ← β·v + (1 − β)·‖∇ₓL‖². The step is
    α = 2ε / (1 + √v / c), clipped to [min_step·ε, max_step·ε]: examples with
    large gradients (near the decision boundary, where FGSM overshoots) take
    small steps, which prevents catastrophic overfitting at FGSM's cost.
    δ = Π_ε(δ_init + α·sign(∇ₓL(x + δ_init))).

    The memory has one row per training example and needs each example's
    index: `fit` adds it for arrays; index a `tf.data.Dataset` with
    `keras_bidir.example_index.with_example_index` and pass `num_examples`.
    Not in this implementation: the reference code's constant-step warm-up
    epochs and its reset of the perturbations every 10 epochs.

    Reference: Huang, Fan, Liu, Zhang, Zhang, Salzmann, Süsstrunk and Wang,
    "Fast Adversarial Training with Adaptive Step Size", IEEE TIP 2023.

    Args:
        epsilon: radius of the perturbation ball.
        c: the gradient norm at which the step is ε. The reference's 0.01
            is for the gradient of a batch-mean loss of 128 examples; the
            gradient here is per example, so the equivalent is 1.28.
        beta: the decay of the running mean of squared gradient norms.
        min_step: the smallest step, in units of ε.
        max_step: the largest step, in units of ε.
        num_examples: the number of training examples, needed when `fit` gets
            a dataset rather than arrays.
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.ATAS(8 / 255, clip_min=0.0, clip_max=1.0)
    """

    def __init__(self, epsilon, c=1.28, beta=0.5, min_step=0.5, max_step=1.75, num_examples=None,
                 norm="linf", **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("ATAS ascends the loss; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        self.c = check_positive("c", c)
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"beta must lie in [0, 1), got {beta!r}.")
        self.beta = float(beta)
        self.min_step = check_positive("min_step", min_step)
        self.max_step = check_positive("max_step", max_step)
        if self.min_step > self.max_step:
            raise ValueError(f"min_step ({min_step}) must not exceed max_step ({max_step}).")
        self.num_examples = memory.check_num_examples(num_examples)

    def example_state_shapes(self, example_shapes):
        # The perturbation per site, the running squared gradient norm, the seen flag.
        return [tuple(shape) for shape in example_shapes] + [(), ()]

    def step_sizes(self, squared_norm_mean, epsilon):
        """`(batch,)` steps 2ε / (1 + √v / c), clipped to [min_step·ε, max_step·ε]."""
        steps = 2.0 * epsilon / (1.0 + ops.sqrt(squared_norm_mean) / self.c)
        return ops.clip(steps, self.min_step * epsilon, self.max_step * epsilon)

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        count = len(inputs)
        clip = context.clip(count)
        carried = memory.ExampleMemory(state)
        starts = memory.starting_points(self, context, carried, inputs, epsilon)
        _, gradients, _ = context.loss_and_gradients(starts)
        squared = sum(ops.square(constraints.per_example_norm(ops.cast(g, "float32"), "l2"))
                      for g in gradients)
        previous = ops.cast(carried.read(count), "float32")
        mean = self.beta * previous + (1.0 - self.beta) * squared
        steps = self.step_sizes(mean, ops.cast(epsilon, "float32"))
        adversarial = []
        for x, s, g, c in zip(inputs, starts, gradients, clip):
            step = ops.cast(ops.reshape(steps, (-1,) + (1,) * (len(x.shape) - 1)), x.dtype)
            moved = s + step * constraints.ascent_direction(g, self.norm)
            adversarial.append(self._project(x, moved, epsilon, c))
        for i, (a, x) in enumerate(zip(adversarial, inputs)):
            carried.write(i, a - x)
        carried.write(count, mean)
        carried.mark_seen()
        return adversarial, carried.tensors

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"c": self.c, "beta": self.beta, "min_step": self.min_step,
                "max_step": self.max_step, "num_examples": self.num_examples, **config}
