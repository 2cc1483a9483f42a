"""PGD (Madry et al. 2018): projected gradient ascent with random starts and restarts."""

import keras
from keras import ops

from keras_bidir.policies import pieces
from keras_bidir.policies.base import BallPolicy
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive


@keras.saving.register_keras_serializable(package="keras_bidir")
class PGD(BallPolicy):
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
