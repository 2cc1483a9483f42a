"""MART (Wang et al. 2020): misclassification-aware adversarial training."""

import keras
from keras import ops

from keras_bidir import losses as losses_lib
from keras_bidir.policies import pieces
from keras_bidir.policies.base import BallPolicy
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.divergence import single_output


@keras.saving.register_keras_serializable(package="keras_bidir")
class MART(BallPolicy):
    """MART: misclassification-aware adversarial training.

    The perturbation is PGD on the compiled loss (`steps` signed steps of
    `step_size` from x + 0.001·N(0, 1)); the training loss is

        BCE(f(x̃), y) + β · KL(f(x) ‖ f(x̃)) · (1 − p_y(x)),

    where BCE(f(x̃), y) = −log p_y(x̃) − log(1 − max_{k≠y} p_k(x̃)) also pushes
    down the strongest wrong class, and the KL term weighs most the examples
    the model gets wrong on clean inputs. Gradients flow through f(x) and
    f(x̃), as in the reference code. No separate clean cross-entropy: a
    `BidirectionalModel` with this policy uses `clean_weight=0` by default and
    still computes f(x).

    Reference: Wang, Zou, Yi, Bailey, Ma and Gu, "Improving Adversarial
    Robustness Requires Revisiting Misclassified Examples", ICLR 2020.

    Args:
        epsilon: radius of the perturbation ball.
        beta: weight of the KL term (the reference recipe uses 5 to 6).
        steps: ascent steps of the inner maximisation.
        step_size: size of each step; defaults to ε / 4.
        norm: `"linf"` or `"l2"`.
        from_logits: whether the model outputs logits (recommended) or
            probabilities.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.MART(0.2, beta=6.0, steps=7, clip_min=0.0, clip_max=1.0)
    """

    needs_clean_outputs = True

    def __init__(self, epsilon, beta=6.0, steps=10, step_size=None, norm="linf",
                 from_logits=True, **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("MART always ascends the loss; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        self.beta = check_positive("beta", beta)
        self.steps = check_count("steps", steps)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon / 4 if step_size is None else step_size
        self.from_logits = bool(from_logits)

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        attack = pieces.chain(
            pieces.random_start("gaussian", scale=0.001 / self.epsilon), pieces.project(),
            pieces.clip_to_range(),
            pieces.repeat(pieces.chain(pieces.gradient_step(self.step_size / self.epsilon),
                                       pieces.project(), pieces.clip_to_range()), self.steps),
        )
        return attack(self, context, inputs, list(inputs), epsilon), state

    def adversarial_loss(self, y, clean_outputs, adversarial_outputs):
        clean = self._per_class(single_output(clean_outputs, "MART"))
        adversarial = self._per_class(single_output(adversarial_outputs, "MART"))
        log_q = losses_lib.log_probabilities(adversarial, self.from_logits)
        one_hot = losses_lib.one_hot_like(y, log_q)
        q = ops.exp(log_q)
        log_true = ops.sum(one_hot * log_q, axis=-1)
        strongest_wrong = ops.max(q - 2.0 * one_hot, axis=-1)  # max over k ≠ y
        boosted = -log_true - ops.log(1.0001 - strongest_wrong + 1e-12)
        p_true = ops.sum(one_hot * ops.exp(losses_lib.log_probabilities(clean, self.from_logits)),
                         axis=-1)
        kl = losses_lib.kl_divergence(clean, adversarial, self.from_logits)
        return boosted + self.beta * kl * (1.0000001 - p_true)

    def _per_class(self, outputs):
        """One column per class: a single binary logit z is [0, z], a probability p is [1 − p, p]."""
        if outputs.shape[-1] != 1:
            return outputs
        if self.from_logits:
            return losses_lib.two_class_logits(outputs)
        return ops.concatenate([1.0 - outputs, outputs], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"beta": self.beta, "steps": self.steps, "step_size": self.step_size,
                "from_logits": self.from_logits, **config}
