"""The one-step gradient attacks: FGSM, RandomFGSM (fast AT) and N-FGSM."""

import keras

from keras_bidir.policies import pieces
from keras_bidir.policies.base import BallPolicy
from keras_bidir.policies.base import check_positive


@keras.saving.register_keras_serializable(package="keras_bidir")
class FGSM(BallPolicy):
    """Fast gradient sign method: one step of size ε along the input gradient.

    x̃ = clip(x + ε·sign(∇ₓL)) for L∞; x + ε·∇ₓL/‖∇ₓL‖₂ for L2.

    Reference: Goodfellow, Shlens and Szegedy, "Explaining and Harnessing
    Adversarial Examples", ICLR 2015.

    Args:
        epsilon: radius of the perturbation ball.
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None),
            `direction` (+1 ascends the loss, -1 descends it) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.FGSM(epsilon=0.1, clip_min=0.0, clip_max=1.0)
    """

    def generate(self, context, inputs, state):
        attack = pieces.chain(pieces.gradient_step(1.0), pieces.project(), pieces.clip_to_range())
        return attack(self, context, inputs, list(inputs), self.epsilon * context.scale), state


@keras.saving.register_keras_serializable(package="keras_bidir")
class RandomFGSM(BallPolicy):
    """FGSM from a uniform random start in the ε-ball ("fast adversarial training").

    δ₀ ~ U(ball); δ = Π_ε(δ₀ + α·sign(∇ₓL(x + δ₀))), with α = 1.25·ε by default.

    Reference: Wong, Rice and Kolter, "Fast is better than free: Revisiting
    adversarial training", ICLR 2020.

    Args:
        epsilon: radius of the perturbation ball.
        step_size: α; defaults to 1.25·ε.
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None),
            `direction` (+1 ascends the loss, -1 descends it) and `seed`.
    """

    def __init__(self, epsilon, step_size=None, norm="linf", **kwargs):
        super().__init__(epsilon, norm=norm, **kwargs)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = 1.25 * self.epsilon if step_size is None else step_size

    def generate(self, context, inputs, state):
        attack = pieces.chain(
            pieces.random_start("ball"), pieces.project(), pieces.clip_to_range(),
            pieces.gradient_step(self.step_size / self.epsilon), pieces.project(),
            pieces.clip_to_range(),
        )
        return attack(self, context, inputs, list(inputs), self.epsilon * context.scale), state

    def get_config(self):
        return {"step_size": self.step_size, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_bidir")
class NFGSM(BallPolicy):
    """N-FGSM: strong noise and one unprojected FGSM step (de Jorge et al., 2022).

    η ~ U(−k·ε, k·ε) per coordinate (k = 2), then x̃ = clip(x + η + α·sign(∇ₓL(x + η)))
    with α = ε: no projection back to the ε-ball, so the perturbation reaches up
    to (k + α/ε)·ε = 3ε in L∞. The larger noise and the missing projection avoid
    the catastrophic overfitting of FGSM training at large ε at FGSM's cost (one
    extra gradient evaluation per step). Built from the public
    `keras_bidir.policies.pieces`.

    Reference: de Jorge, Bibi, Volpi, Sanyal, Torr, Rogez and Dokania, "Make
    Some Noise: Reliable and Efficient Single-Step Adversarial Training",
    NeurIPS 2022.

    Args:
        epsilon: the ε the model is trained for (L∞).
        noise_scale: k, the noise box is [−k·ε, k·ε].
        step_size: α; defaults to ε.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None),
            `direction` (+1 ascends the loss, -1 descends it) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.NFGSM(8 / 255, clip_min=0.0, clip_max=1.0)
    """

    def __init__(self, epsilon, noise_scale=2.0, step_size=None, norm="linf", **kwargs):
        super().__init__(epsilon, norm=norm, **kwargs)
        if self.norm != "linf":
            raise ValueError("N-FGSM is defined for the L∞ norm (norm='linf').")
        self.noise_scale = check_positive("noise_scale", noise_scale)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon if step_size is None else step_size

    def generate(self, context, inputs, state):
        attack = pieces.chain(
            pieces.random_start("box", scale=self.noise_scale),
            pieces.clip_to_range(),
            pieces.gradient_step(scale=self.step_size / self.epsilon),
            pieces.clip_to_range(),
        )
        return attack(self, context, inputs, list(inputs), self.epsilon * context.scale), state

    def get_config(self):
        return {"noise_scale": self.noise_scale, "step_size": self.step_size, **super().get_config()}
