"""Free adversarial training: the weight step's own input gradient moves x̃."""

import keras
from keras import ops

from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.base import BallPolicy


def _rows(state, batch_size):
    """The first `batch_size` rows of `state`, zero-padded if it has fewer."""
    missing = batch_size - ops.shape(state)[0]
    # Static shapes (JAX, known batch sizes) stay Python ints: JAX needs concrete shapes.
    missing = max(missing, 0) if isinstance(missing, int) else ops.maximum(missing, 0)
    padding = ops.zeros((missing,) + tuple(state.shape[1:]), dtype=state.dtype)
    return ops.concatenate([state, padding], axis=0)[:batch_size]


def _store_rows(state, rows):
    """`state` with its first rows replaced by `rows` (capacity unchanged)."""
    capacity = state.shape[0]
    batch_size = ops.shape(rows)[0]
    stored = ops.concatenate([ops.cast(rows, state.dtype), state[batch_size:]], axis=0)
    return ops.reshape(stored[:capacity], state.shape)  # static shape for graph loops


@keras.saving.register_keras_serializable(package="keras_bidir")
class FreeAdversarial(BallPolicy):
    """Free adversarial training: every minibatch is replayed m times.

    Each replay is ONE backward pass that yields the weight gradient (applied
    by the optimizer) and the input gradient, which moves the perturbation:
    δ ← Π_ε(δ + step·sign(∇ₓL)). δ persists across replays and minibatches,
    so adversarial examples cost no extra gradient computation. Train for
    `epochs / replays` epochs to match the cost of ordinary training.

    Used as an evaluation attack, it runs `replays` signed steps of size
    `step_size` from x (no weight updates).

    Reference: Shafahi et al., "Adversarial Training for Free!", NeurIPS 2019.

    Args:
        epsilon: radius of the perturbation ball.
        replays: m, weight updates per minibatch (>= 1).
        step_size: the perturbation step; defaults to ε, as in the paper.
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None),
            `direction` (+1 ascends the loss, -1 descends it) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.FreeAdversarial(epsilon=0.2, replays=4)
    """

    kind = "replay"

    def __init__(self, epsilon, replays=4, step_size=None, norm="linf", **kwargs):
        super().__init__(epsilon, norm=norm, **kwargs)
        self.replays = check_count("replays", replays)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon if step_size is None else step_size

    def state_shapes(self, input_shapes):
        return [tuple(shape) for shape in input_shapes]

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        adversarial = [
            self._project(x, x + _rows(delta, ops.shape(x)[0]), epsilon, c)
            for x, delta, c in zip(inputs, state, context.clip(len(inputs)))
        ]
        return adversarial, state

    def update(self, context, inputs, adversarial, gradients, state):
        epsilon = self.epsilon * context.scale
        step = self.step_size * context.scale
        adversarial = self._step_sites(context, inputs, adversarial, gradients, step, epsilon)
        state = [_store_rows(s, a - x) for s, a, x in zip(state, adversarial, inputs)]
        return adversarial, state

    def attack(self, context, inputs):
        epsilon = self.epsilon * context.scale
        step = self.step_size * context.scale
        return self._ascend(context, inputs, list(inputs), self.replays, step, epsilon)

    def get_config(self):
        return {"replays": self.replays, "step_size": self.step_size, **super().get_config()}
