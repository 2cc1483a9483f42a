"""Small public pieces that chain into attacks, in the spirit of optax's transformations.

A piece is a function `piece(policy, context, inputs, adversarial, epsilon) ->
adversarial`: it reads the policy's norm, direction and data range (unless the
piece was given its own `norm` / range), the step's
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


def _norm(norm, policy):
    """The piece's own norm, else the policy's."""
    return policy.norm if norm is None else norm


def random_start(shape="ball", scale=1.0, norm=None):
    """Adds random noise to the perturbed values.

    Args:
        shape: `"ball"` (uniform in the ε-ball of the norm), `"box"`
            (uniform in [−scale·ε, scale·ε] per coordinate, as N-FGSM) or
            `"gaussian"` (standard deviation scale·ε per coordinate).
        scale: multiplies ε.
        norm: the ball's norm, `"linf"` or `"l2"` (default: the policy's).
    """
    if shape not in START_SHAPES:
        raise ValueError(f"shape must be one of {START_SHAPES}, got {shape!r}.")
    norm = None if norm is None else constraints.standardize_norm(norm)

    def start(policy, context, inputs, adversarial, epsilon):
        radius = ops.cast(epsilon, "float32") * scale
        return [a + _noise(shape, ops.shape(a), radius, _norm(norm, policy), a.dtype,
                           context.seed) for a in adversarial]

    return start


def _noise(shape, size, radius, norm, dtype, seed):
    if shape == "ball":
        return constraints.random_in_ball(size, radius, norm, dtype, seed)

    def draw(rows):  # One global draw under tf.distribute, as for the ball.
        if shape == "box":
            return ops.cast(keras.random.uniform(rows, -1.0, 1.0, seed=seed) * radius, dtype)
        return ops.cast(keras.random.normal(rows, seed=seed) * radius, dtype)

    return backend.replica_rows(draw, size)


def gradient_step(scale=1.0, norm=None):
    """One steepest-ascent step of length scale·ε at the current perturbed values.

    The direction is sign(∇) for L∞ and ∇/‖∇‖₂ for L2 (`norm`, default: the
    policy's), times the policy's `direction` (+1 ascends the loss). Costs
    one gradient evaluation.
    """
    norm = None if norm is None else constraints.standardize_norm(norm)

    def step(policy, context, inputs, adversarial, epsilon):
        _, gradients, _ = context.loss_and_gradients(adversarial)
        # A Python-number length is converted in the data's dtype (float64 stays exact).
        length = scale * policy.direction * epsilon
        direction = _norm(norm, policy)
        return [a + constraints.as_dtype(length, a.dtype) * constraints.ascent_direction(g, direction)
                for a, g in zip(adversarial, gradients)]

    return step


def project(norm=None):
    """Pulls each perturbation back into the ε-ball (of `norm`, default: the policy's)."""
    norm = None if norm is None else constraints.standardize_norm(norm)

    def projected(policy, context, inputs, adversarial, epsilon):
        return [x + constraints.project(a - x, epsilon, _norm(norm, policy))
                for x, a in zip(inputs, adversarial)]

    return projected


def clip_to_range(clip_min=None, clip_max=None):
    """Clips model-input sites to a data range (activations stay open).

    Args:
        clip_min: lower end of the range (default, with `clip_max`: the
            policy's `data_range`).
        clip_max: upper end of the range.
    """
    own = clip_min is not None or clip_max is not None

    def clipped(policy, context, inputs, adversarial, epsilon):
        flags = context.clip(len(inputs))
        ranges = [((clip_min, clip_max) if flag else (None, None)) if own
                  else policy.data_range(flag) for flag in flags]
        return [constraints.clip_to_range(a, *limits) for a, limits in zip(adversarial, ranges)]

    return clipped


def repeat(piece, times):
    """`piece` run `times` times in a graph loop (the traced graph does not grow)."""

    def repeated(policy, context, inputs, adversarial, epsilon):
        def body(_, current):
            return piece(policy, context, inputs, list(current), epsilon)

        return list(backend.fori_loop(0, times, body, list(adversarial)))

    return repeated
