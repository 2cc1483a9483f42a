"""TRADES (Zhang et al. 2019): the clean loss plus β·KL(f(x) ‖ f(x̃)) at the most divergent x̃."""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.divergence import DivergencePolicy


@keras.saving.register_keras_serializable(package="keras_bidir")
class TRADES(DivergencePolicy):
    """TRADES: trade clean accuracy against robustness with one parameter β.

    The perturbation maximises KL(f(x) ‖ f(x̃)) inside the ε-ball with `steps`
    signed steps from x + 0.001·N(0, 1); the training loss is

        CE(f(x), y) + β · KL(f(x) ‖ f(x̃)),

    with gradients through both f(x) and f(x̃), as in the reference code. A
    `BidirectionalModel` with this policy uses `clean_weight=1` by default
    (the CE term); larger β favours robustness over clean accuracy.

    Reference: Zhang, Yu, Jiao, Xing, El Ghaoui and Jordan, "Theoretically
    Principled Trade-off between Robustness and Accuracy", ICML 2019.

    Args:
        epsilon: radius of the perturbation ball.
        beta: weight of the KL term (the reference recipe uses 6).
        steps: ascent steps of the inner maximisation.
        step_size: size of each step; defaults to ε / 4.
        norm: `"linf"` or `"l2"`.
        from_logits: whether the model outputs logits (recommended) or
            probabilities.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.TRADES(0.2, beta=6.0, steps=7, clip_min=0.0, clip_max=1.0)
    """

    loss_description = "trains on CE(f(x), y) + β·KL(f(x) ‖ f(x̃))"

    def __init__(self, epsilon, beta=6.0, steps=10, step_size=None, norm="linf",
                 from_logits=True, **kwargs):
        super().__init__(epsilon, norm=norm, from_logits=from_logits, **kwargs)
        self.beta = check_positive("beta", beta)
        self.steps = check_count("steps", steps)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon / 4 if step_size is None else step_size

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        step = self.step_size * context.scale
        divergence = self._divergence_from(context, inputs)
        clip = context.clip(len(inputs))
        adversarial = []
        for x, c in zip(inputs, clip):
            noise = backend.replica_rows(
                lambda shape: keras.random.normal(shape, stddev=0.001, seed=context.seed),
                ops.shape(x),
            )
            adversarial.append(self._project(x, x + ops.cast(noise, x.dtype), epsilon, c))
        for _ in range(self.steps):
            _, grads, _ = context.loss_and_gradients(adversarial, divergence)
            adversarial = self._step_sites(context, inputs, adversarial, grads, step, epsilon)
        return adversarial, state

    def adversarial_loss(self, y, clean_outputs, adversarial_outputs):
        self._check_clean(clean_outputs)
        return self.beta * self._kl(clean_outputs, adversarial_outputs)

    def get_config(self):
        return {"beta": self.beta, "steps": self.steps, "step_size": self.step_size,
                **super().get_config()}
