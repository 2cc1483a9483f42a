"""Embedding-space policies for text models: FreeLB."""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir.layers import expand_mask
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.base import BallPolicy


@keras.saving.register_keras_serializable(package="keras_bidir")
class FreeLB(BallPolicy):
    """FreeLB: K ascent steps on an embedding perturbation, one weight update.

    Each of the K steps is one forward-backward pass at the perturbed
    embeddings; it yields the weight gradient (accumulated and averaged over
    the K steps, then applied ONCE) and the gradient at the embeddings, which
    moves δ: δ ← Π_ε(δ + α·g/‖g‖) (L2, per example over the whole sequence) or
    δ ← clip(δ + α·sign(g), −ε, ε) (L∞). δ starts uniform, scaled as in the
    paper: for L2, `init_magnitude / sqrt(length · width)` with the length
    counted over unmasked tokens; padding positions stay unperturbed.

    Reference: Zhu et al., "FreeLB: Enhanced Adversarial Training for Natural
    Language Understanding", ICLR 2020.

    Args:
        epsilon: radius of the ball (the paper's max-norm).
        steps: K, ascent steps per batch (>= 1).
        step_size: α; defaults to ε / 2.
        norm: `"l2"` (default, as the paper) or `"linf"`.
        init_magnitude: size of the random start; defaults to ε / 2.

    Example:

    >>> policy = keras_bidir.policies.FreeLB(epsilon=1.0, steps=3)
    """

    #: The K replays' weight gradients are averaged into one update.
    kind = "accumulate"

    def __init__(self, epsilon, steps=3, step_size=None, norm="l2", init_magnitude=None, **kwargs):
        super().__init__(epsilon, norm=norm, **kwargs)
        self.steps = check_count("steps", steps)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon / 2 if step_size is None else step_size
        init_magnitude = check_positive("init_magnitude", init_magnitude, allow_none=True)
        self.init_magnitude = self.epsilon / 2 if init_magnitude is None else init_magnitude

    @property
    def replays(self):
        return self.steps

    def _init(self, context, x, mask, scale):
        noise = backend.replica_rows(
            lambda shape: keras.random.uniform(shape, -1.0, 1.0, seed=context.seed),
            ops.shape(x),
        )
        noise = ops.cast(noise, x.dtype)
        if mask is not None:
            noise = noise * expand_mask(mask, noise)
        magnitude = ops.cast(self.init_magnitude * scale, x.dtype)
        if self.norm == "linf":
            return noise * magnitude
        width = 1
        for size in x.shape[2:] if mask is not None else x.shape[1:]:
            width *= size
        if mask is not None:
            length = ops.sum(ops.cast(mask, x.dtype), axis=tuple(range(1, len(mask.shape))))
        else:
            length = ops.ones((ops.shape(x)[0],), x.dtype)
        dims = ops.maximum(length * width, 1.0)
        per_example = magnitude / ops.sqrt(dims)
        return noise * ops.reshape(per_example, (-1,) + (1,) * (len(x.shape) - 1))

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        masks = context.masks(len(inputs))
        clip = context.clip(len(inputs))
        adversarial = [
            self._project(x, x + self._init(context, x, m, context.scale), epsilon, c)
            for x, m, c in zip(inputs, masks, clip)
        ]
        return adversarial, state

    def update(self, context, inputs, adversarial, gradients, state):
        epsilon = self.epsilon * context.scale
        step = self.step_size * context.scale
        return self._step_sites(context, inputs, adversarial, gradients, step, epsilon), state

    def attack(self, context, inputs):
        adversarial, _ = self.generate(context, inputs, [])
        epsilon = self.epsilon * context.scale
        return self._ascend(context, inputs, adversarial, self.steps, self.step_size * context.scale, epsilon)

    def get_config(self):
        return {"steps": self.steps, "step_size": self.step_size,
                "init_magnitude": self.init_magnitude, **super().get_config()}
