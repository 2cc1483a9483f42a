"""Small public pieces that chain into attacks, in the spirit of optax's transformations.

A piece is a function `piece(policy, context, inputs, adversarial, epsilon) ->
adversarial`: it reads the policy's norm, direction and data range, the step's
`PerturbationContext` (objective, random seed, clipping rule per site), the
clean site values `inputs`, the current perturbed values and the radius ε (already
multiplied by the ε-schedule), and returns new perturbed values, one per site.
`chain` runs pieces in order. A policy built from them overrides
`InputPolicy.generate` only:

```python
class NoiseThenFGSM(keras_bidir.policies.InputPolicy):
    def __init__(self, epsilon, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def generate(self, context, inputs, state):
        attack = pieces.chain(pieces.random_start("box", scale=0.5),
                              pieces.gradient_step(1.0), pieces.project(),
                              pieces.clip_to_range())
        return attack(self, context, inputs, list(inputs), self.epsilon * context.scale), state
```

(`docs/write-a-policy.md` has the complete version, with its configuration.)
"""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import constraints

START_SHAPES = ("ball", "box", "gaussian")


def chain(*pieces):
    """One piece that runs `pieces` in order."""

    def chained(policy, context, inputs, adversarial, epsilon):
        for piece in pieces:
            adversarial = piece(policy, context, inputs, adversarial, epsilon)
        return adversarial

    return chained


def random_start(shape="ball", scale=1.0):
    """Adds random noise to the perturbed values.

    Args:
        shape: `"ball"` (uniform in the ε-ball of the policy's norm), `"box"`
            (uniform in [−scale·ε, scale·ε] per coordinate, as N-FGSM) or
            `"gaussian"` (standard deviation scale·ε per coordinate).
        scale: multiplies ε.
    """
    if shape not in START_SHAPES:
        raise ValueError(f"shape must be one of {START_SHAPES}, got {shape!r}.")

    def start(policy, context, inputs, adversarial, epsilon):
        radius = ops.cast(epsilon, "float32") * scale
        return [a + _noise(shape, ops.shape(a), radius, policy.norm, a.dtype, context.seed)
                for a in adversarial]

    return start


def _noise(shape, size, radius, norm, dtype, seed):
    if shape == "ball":
        return constraints.random_in_ball(size, radius, norm, dtype, seed)

    def draw(rows):  # One global draw under tf.distribute, as for the ball.
        if shape == "box":
            return ops.cast(keras.random.uniform(rows, -1.0, 1.0, seed=seed) * radius, dtype)
        return ops.cast(keras.random.normal(rows, seed=seed) * radius, dtype)

    return backend.replica_rows(draw, size)


def gradient_step(scale=1.0):
    """One steepest-ascent step of length scale·ε at the current perturbed values.

    The direction is sign(∇) for L∞ and ∇/‖∇‖₂ for L2, times the policy's
    `direction` (+1 ascends the loss). Costs one gradient evaluation.
    """

    def step(policy, context, inputs, adversarial, epsilon):
        _, gradients, _ = context.loss_and_gradients(adversarial)
        # A Python-number length is converted in the data's dtype (float64 stays exact).
        length = scale * policy.direction * epsilon
        return [a + constraints.as_dtype(length, a.dtype) * constraints.ascent_direction(g, policy.norm)
                for a, g in zip(adversarial, gradients)]

    return step


def project():
    """Pulls each perturbation back into the ε-ball around the clean values."""

    def projected(policy, context, inputs, adversarial, epsilon):
        return [x + constraints.project(a - x, epsilon, policy.norm)
                for x, a in zip(inputs, adversarial)]

    return projected


def clip_to_range():
    """Clips model-input sites to the policy's data range (activations stay open)."""

    def clipped(policy, context, inputs, adversarial, epsilon):
        flags = context.clip(len(inputs))
        return [constraints.clip_to_range(a, *policy._range(flag))
                for a, flag in zip(adversarial, flags)]

    return clipped


def repeat(piece, times):
    """`piece` run `times` times in a graph loop (the traced graph does not grow)."""

    def repeated(policy, context, inputs, adversarial, epsilon):
        def body(_, current):
            return piece(policy, context, inputs, list(current), epsilon)

        return list(backend.fori_loop(0, times, body, list(adversarial)))

    return repeated
