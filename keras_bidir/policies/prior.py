"""Prior-guided FGSM (Jia et al., ECCV 2022): FGSM started from the previous perturbation."""

import keras
from keras import ops

from keras_bidir import constraints
from keras_bidir.policies.base import check_positive
from keras_bidir.policies import memory
from keras_bidir.policies.base import BallPolicy

PRIORS = ("batch", "example")


def output_distance(reference, outputs):
    """Per-example mean squared difference of two output structures, summed over outputs."""
    total = 0.0
    for r, o in zip(keras.tree.flatten(reference), keras.tree.flatten(outputs)):
        difference = ops.square(ops.cast(o, "float32") - ops.cast(r, "float32"))
        axes = tuple(range(1, len(difference.shape)))
        total = total + (ops.mean(difference, axis=axes) if axes else difference)
    return total


def _unit_mean_magnitude(gradient):
    """`gradient` divided by its mean absolute value, per example."""
    axes = tuple(range(1, len(gradient.shape)))
    scale = ops.mean(ops.abs(ops.cast(gradient, "float32")), axis=axes, keepdims=True) if axes else (
        ops.abs(ops.cast(gradient, "float32")))
    return ops.cast(ops.cast(gradient, "float32") / ops.maximum(scale, 1e-12), gradient.dtype)


@keras.saving.register_keras_serializable(package="keras_bidir")
class PriorGuidedFGSM(BallPolicy):
    """FGSM from a remembered perturbation, with its regulariser (FGSM-PGI).

    δ_init is a remembered perturbation (see `prior`); g = ∇ₓL(x + δ_init)
    (with momentum μ > 0, as MI-FGSM: g = μ·g_prev + ∇ / mean|∇|);
    δ = Π_ε(δ_init + α·sign(g)) (g/‖g‖₂ for L2). The
    training loss adds λ·mean((f(x + δ) − f(x + δ_init))²) to the loss at
    x + δ, which keeps the model's outputs smooth between the prior and the
    adversarial point and prevents catastrophic overfitting. One gradient
    evaluation per step besides the weight step, as FGSM, and one more
    forward and backward pass at x + δ_init in the weight step for the
    regulariser (`regularization=0` drops it).

    `prior="batch"` is the paper's FGSM-BP: δ_init is the previous batch's
    perturbation (zero at the first batch). `prior="example"` is FGSM-EP:
    each training example starts from its own perturbation of the previous
    epoch (a uniform draw in the ε-ball the first time), kept in a memory of
    one row per training example; with `momentum=0.3` it is FGSM-MEP. The
    per-example prior needs each example's index: `fit` adds it for arrays;
    index a `tf.data.Dataset` with `keras_bidir.example_index.with_example_index`
    and pass `num_examples`. As in the paper, the regulariser's gradient flows
    through both f(x + δ) and f(x + δ_init) (holding f(x + δ_init) fixed was
    tried and diverged on the digits protocol).

    Reference: Jia, Zhang, Wu, Wei, Liang and Cao, "Prior-Guided Adversarial
    Initialization for Fast Adversarial Training", ECCV 2022.

    Args:
        epsilon: radius of the perturbation ball.
        step_size: α; defaults to ε.
        regularization: λ, the weight of the output-distance term (paper: 10).
        momentum: μ, the decay of the carried gradient direction (0: none;
            the paper's momentum variant uses 0.3).
        prior: `"batch"` (the previous batch's perturbation) or `"example"`
            (each example's own perturbation from its previous visit).
        num_examples: the number of training examples, needed with
            `prior="example"` when `fit` gets a dataset rather than arrays.
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.PriorGuidedFGSM(0.2, clip_min=0.0, clip_max=1.0)
    """

    def __init__(self, epsilon, step_size=None, regularization=10.0, momentum=0.0, prior="batch",
                 num_examples=None, norm="linf", **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("PriorGuidedFGSM ascends the loss; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon if step_size is None else step_size
        if not float(regularization) >= 0.0:
            raise ValueError(f"regularization must be >= 0, got {regularization!r}.")
        self.regularization = float(regularization)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}.")
        self.momentum = float(momentum)
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}.")
        self.prior = prior
        self.num_examples = memory.check_num_examples(num_examples)

    def _carried(self, shapes):
        # The perturbation per site, then (with momentum) the direction per site.
        shapes = [tuple(shape) for shape in shapes]
        return shapes + shapes if self.momentum else shapes

    def state_shapes(self, input_shapes):
        return self._carried(input_shapes) if self.prior == "batch" else []

    def example_state_shapes(self, example_shapes):
        return self._carried(example_shapes) + [()] if self.prior == "example" else []

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        count = len(inputs)
        clip = context.clip(count)
        carried = (memory.BatchMemory(state) if self.prior == "batch"
                   else memory.ExampleMemory(state))
        starts = memory.starting_points(self, context, carried, inputs, epsilon)
        _, gradients, _ = context.loss_and_gradients(starts)
        context.prior_inputs = [ops.stop_gradient(s) for s in starts]
        directions = gradients
        if self.momentum:  # as MI-FGSM: μ·g_prev + ∇ / mean|∇|, per example
            directions = [_unit_mean_magnitude(g) + ops.cast(self.momentum, g.dtype)
                          * ops.cast(carried.read(count + i, ops.shape(g)[0]), g.dtype)
                          for i, g in enumerate(gradients)]
        step = self.step_size * context.scale
        adversarial = [
            self._project(x, s + constraints.as_dtype(step, x.dtype)
                          * constraints.ascent_direction(d, self.norm), epsilon, c)
            for x, s, d, c in zip(inputs, starts, directions, clip)
        ]
        for i, (a, x) in enumerate(zip(adversarial, inputs)):
            carried.write(i, a - x)
            if self.momentum:
                carried.write(count + i, directions[i])
        if self.prior == "example":
            carried.mark_seen()
        return adversarial, carried.tensors

    def regularizer(self, context, adversarial_outputs):
        if context.prior_inputs is None or not self.regularization:
            return None
        reference = context.forward(context.prior_inputs)
        return self.regularization * output_distance(reference, adversarial_outputs)

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"step_size": self.step_size, "regularization": self.regularization,
                "momentum": self.momentum, "prior": self.prior, "num_examples": self.num_examples,
                **config}
