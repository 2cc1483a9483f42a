"""Gradient-sign family: FGSM, RandomFGSM (fast AT), N-FGSM and PGD (Madry et al.)."""

import keras
from keras import ops

from keras_bidir import constraints
from keras_bidir.policies import pieces
from keras_bidir.policies.base import InputPolicy
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive


class _BallPolicy(InputPolicy):
    """A policy bounded by an ε-ball of a norm."""

    def __init__(self, epsilon, norm="linf", **kwargs):
        super().__init__(**kwargs)
        self.epsilon = check_positive("epsilon", epsilon)
        self.norm = constraints.standardize_norm(norm)

    def get_config(self):
        return {"epsilon": self.epsilon, "norm": self.norm, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_bidir")
class FGSM(_BallPolicy):
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
class RandomFGSM(_BallPolicy):
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
class PGD(_BallPolicy):
    """Projected gradient descent on the loss (Madry et al.).

    `steps` projected ascent steps of size `step_size` from a random start
    in the ε-ball; with `restarts > 1` each example keeps the restart with
    the highest loss.

    Reference: Madry, Makelov, Schmidt, Tsipras and Vladu, "Towards Deep
    Learning Models Resistant to Adversarial Attacks", ICLR 2018.

    Args:
        epsilon: radius of the perturbation ball.
        steps: number of ascent steps (>= 1).
        step_size: step length; defaults to 2.5·ε/steps.
        random_start: start from a uniform point of the ball instead of x.
        restarts: independent random restarts (>= 1).
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None),
            `direction` (+1 ascends the loss, -1 descends it) and `seed`.

    Example:

    >>> attack = keras_bidir.policies.PGD(0.2, steps=20, restarts=2,
    ...                                   clip_min=0.0, clip_max=1.0)
    >>> x_adv = attack.perturb(model, x, y)
    """

    def __init__(
        self,
        epsilon,
        steps=10,
        step_size=None,
        random_start=True,
        restarts=1,
        norm="linf",
        **kwargs,
    ):
        super().__init__(epsilon, norm=norm, **kwargs)
        self.steps = check_count("steps", steps)
        self.restarts = check_count("restarts", restarts)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = 2.5 * self.epsilon / self.steps if step_size is None else step_size
        self.random_start = bool(random_start)

    def _one_run(self, context, inputs, epsilon):
        start = [pieces.random_start("ball"), pieces.project(), pieces.clip_to_range()]
        step = pieces.chain(pieces.gradient_step(self.step_size / self.epsilon), pieces.project(),
                            pieces.clip_to_range())
        attack = pieces.chain(*(start if self.random_start else []), pieces.repeat(step, self.steps))
        return attack(self, context, inputs, list(inputs), epsilon)

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        best = self._one_run(context, inputs, epsilon)
        if self.restarts == 1:
            return best, state
        best_loss = context.loss(best) * self.direction
        for _ in range(self.restarts - 1):
            candidate = self._one_run(context, inputs, epsilon)
            candidate_loss = context.loss(candidate) * self.direction
            better = candidate_loss > best_loss
            best = [
                ops.where(ops.reshape(better, (-1,) + (1,) * (len(b.shape) - 1)), c, b)
                for b, c in zip(best, candidate)
            ]
            best_loss = ops.maximum(best_loss, candidate_loss)
        return best, state

    def get_config(self):
        return {
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            "restarts": self.restarts,
            **super().get_config(),
        }


@keras.saving.register_keras_serializable(package="keras_bidir")
class NFGSM(_BallPolicy):
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
