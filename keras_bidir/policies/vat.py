"""VAT (Miyato et al. 2018): virtual adversarial training, labels optional."""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import constraints
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.divergence import DivergencePolicy


@keras.saving.register_keras_serializable(package="keras_bidir")
class VAT(DivergencePolicy):
    """Virtual adversarial training: a smoothness regularizer that needs no labels.

    The virtual adversarial direction is found by power iteration: d ~ N(0, I);
    `iterations` times d ← normalise(∇_d KL(f(x) ‖ f(x + ξ·d))); then
    r = ε·d (L2). The training loss adds KL(stop_gradient(f(x)) ‖ f(x + r)) on
    every example, labeled or not, to the clean loss on the labeled ones.

    Unlabeled examples: give them the label **-1** (sparse integer labels).
    They enter only the VAT term; the clean loss and the clean metrics are
    averaged over the labeled examples of each batch. A `BidirectionalModel`
    with this policy uses `clean_weight=1` by default, and its perturbed pass
    leaves BatchNorm's moving statistics untouched.

    Reference: Miyato, Maeda, Koyama and Ishii, "Virtual Adversarial
    Training: A Regularization Method for Supervised and Semi-Supervised
    Learning", IEEE TPAMI 2018.

    Args:
        epsilon: L2 norm of the virtual adversarial perturbation.
        xi: size of the finite-difference probe in the power iteration.
        iterations: power iterations (1 in the paper).
        from_logits: whether the model outputs logits (recommended).
        **kwargs: `clip_min` and `clip_max` (None by default: VAT does not
            clip) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.VAT(epsilon=2.0, xi=1e-6, iterations=1)
    """

    accepts_unlabeled = True
    freeze_statistics = True
    requires_labels = False
    loss_description = "adds KL(f(x) ‖ f(x + r)) to the clean loss on the labeled examples"

    def __init__(self, epsilon, xi=1e-6, iterations=1, from_logits=True, **kwargs):
        super().__init__(epsilon, norm="l2", from_logits=from_logits, **kwargs)
        self.xi = check_positive("xi", xi)
        self.iterations = check_count("iterations", iterations)

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        divergence = self._divergence_from(context, inputs)
        directions = [
            constraints.ascent_direction(
                ops.cast(backend.replica_rows(
                    lambda shape: keras.random.normal(shape, seed=context.seed), ops.shape(x)),
                    x.dtype),
                "l2")
            for x in inputs
        ]
        xi = [constraints.as_dtype(self.xi, x.dtype) for x in inputs]
        for _ in range(self.iterations):
            probes = [x + s * d for x, s, d in zip(inputs, xi, directions)]
            _, grads, _ = context.loss_and_gradients(probes, divergence)
            directions = [constraints.ascent_direction(g, "l2") for g in grads]
        adversarial = [
            self._clip(x + constraints.as_dtype(epsilon, x.dtype) * d, c)
            for x, d, c in zip(inputs, directions, context.clip(len(inputs)))
        ]
        return adversarial, state

    def adversarial_loss(self, y, clean_outputs, adversarial_outputs):
        self._check_clean(clean_outputs)
        reference = keras.tree.map_structure(ops.stop_gradient, clean_outputs)
        return self._kl(reference, adversarial_outputs)

    def get_config(self):
        config = super().get_config()
        config.pop("norm")
        return {"xi": self.xi, "iterations": self.iterations, **config}
