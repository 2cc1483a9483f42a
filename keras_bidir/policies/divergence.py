"""Divergence-based policies: TRADES (Zhang et al. 2019) and VAT (Miyato et al. 2018).

Both perturb towards the largest change of the model's prediction, measured by
KL(f(x) ‖ f(x̃)), rather than towards a higher loss on the label, and both train
on that divergence instead of the compiled loss on x̃.
"""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import constraints
from keras_bidir import losses as losses_lib
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.gradient import _BallPolicy


def _no_label_loss(y, outputs):
    """The attack objective of divergence policies ignores the labels."""
    return ops.zeros((ops.shape(keras.tree.flatten(outputs)[0])[0],), dtype="float32")


def _single_output(outputs, name):
    flat = keras.tree.flatten(outputs)
    if len(flat) != 1:
        raise ValueError(f"{name} needs a model with one (classification) output, got {len(flat)}.")
    return flat[0]


@keras.saving.register_keras_serializable(package="keras_bidir")
class TRADES(_BallPolicy):
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

    default_clean_weight = 1.0

    def __init__(self, epsilon, beta=6.0, steps=10, step_size=None, norm="linf",
                 from_logits=True, **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("TRADES always ascends the divergence; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        self.beta = check_positive("beta", beta)
        self.steps = check_count("steps", steps)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon / 4 if step_size is None else step_size
        self.from_logits = bool(from_logits)

    def attack_loss(self):
        return _no_label_loss

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        step = self.step_size * context.scale
        reference = _single_output(context.outputs(inputs), "TRADES")
        clip = context.clip(len(inputs))
        adversarial = []
        for x, c in zip(inputs, clip):
            noise = backend.replica_rows(
                lambda shape: keras.random.normal(shape, stddev=0.001, seed=context.seed),
                ops.shape(x),
            )
            adversarial.append(self._project(x, x + ops.cast(noise, x.dtype), epsilon, c))

        def divergence(outputs):
            return losses_lib.kl_divergence(reference, _single_output(outputs, "TRADES"),
                                            self.from_logits)

        for _ in range(self.steps):
            _, grads, _ = context.loss_and_gradients(adversarial, divergence)
            adversarial = self._step_sites(context, inputs, adversarial, grads, step, epsilon)
        return adversarial, state

    def adversarial_loss(self, y, clean_outputs, adversarial_outputs):
        if clean_outputs is None:
            raise ValueError(
                "TRADES trains on CE(f(x), y) + β·KL(f(x) ‖ f(x̃)) and needs the clean term: "
                "use clean_weight=1 (the default for TRADES), not 0."
            )
        kl = losses_lib.kl_divergence(_single_output(clean_outputs, "TRADES"),
                                      _single_output(adversarial_outputs, "TRADES"),
                                      self.from_logits)
        return self.beta * kl

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"beta": self.beta, "steps": self.steps, "step_size": self.step_size,
                "from_logits": self.from_logits, **config}


@keras.saving.register_keras_serializable(package="keras_bidir")
class VAT(_BallPolicy):
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

    default_clean_weight = 1.0
    accepts_unlabeled = True
    freeze_statistics = True
    requires_labels = False

    def __init__(self, epsilon, xi=1e-6, iterations=1, from_logits=True, **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("VAT always ascends the divergence; direction must be +1.")
        super().__init__(epsilon, norm="l2", **kwargs)
        self.xi = check_positive("xi", xi)
        self.iterations = check_count("iterations", iterations)
        self.from_logits = bool(from_logits)

    def attack_loss(self):
        return _no_label_loss

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        reference = _single_output(context.outputs(inputs), "VAT")

        def divergence(outputs):
            return losses_lib.kl_divergence(reference, _single_output(outputs, "VAT"),
                                            self.from_logits)

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
        if clean_outputs is None:
            raise ValueError(
                "VAT adds KL(f(x) ‖ f(x + r)) to the clean loss on the labeled examples: "
                "use clean_weight=1 (the default for VAT), not 0."
            )
        reference = ops.stop_gradient(_single_output(clean_outputs, "VAT"))
        return losses_lib.kl_divergence(reference, _single_output(adversarial_outputs, "VAT"),
                                        self.from_logits)

    def get_config(self):
        config = super().get_config()
        for key in ("direction", "norm"):
            config.pop(key)
        return {"xi": self.xi, "iterations": self.iterations, "from_logits": self.from_logits,
                **config}
