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
from keras_bidir.policies import pieces
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


class _DivergencePolicy(_BallPolicy):
    """Shared by TRADES and VAT: KL-based attack and training loss, clean term required."""

    default_clean_weight = 1.0
    #: How the policy's loss uses the clean term (for the error without it).
    loss_description = ""

    def __init__(self, epsilon, norm="linf", from_logits=True, **kwargs):
        name = type(self).__name__
        if kwargs.get("direction", 1) != 1:
            raise ValueError(f"{name} always ascends the divergence; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        self.from_logits = bool(from_logits)

    def attack_loss(self):
        return _no_label_loss

    def _kl(self, reference, outputs):
        name = type(self).__name__
        return losses_lib.kl_divergence(_single_output(reference, name),
                                        _single_output(outputs, name), self.from_logits)

    def _divergence_from(self, context, inputs):
        """`outputs -> KL(f(inputs) ‖ outputs)` per example, f(inputs) held fixed."""
        reference = context.outputs(inputs)
        return lambda outputs: self._kl(reference, outputs)

    def _check_clean(self, clean_outputs):
        if clean_outputs is None:
            name = type(self).__name__
            raise ValueError(
                f"{name} {self.loss_description} and needs the clean term: use "
                f"clean_weight=1 (the default for {name}), not 0."
            )

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"from_logits": self.from_logits, **config}


@keras.saving.register_keras_serializable(package="keras_bidir")
class TRADES(_DivergencePolicy):
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


@keras.saving.register_keras_serializable(package="keras_bidir")
class VAT(_DivergencePolicy):
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


@keras.saving.register_keras_serializable(package="keras_bidir")
class MART(_BallPolicy):
    """MART: misclassification-aware adversarial training.

    The perturbation is PGD on the compiled loss (`steps` signed steps of
    `step_size` from x + 0.001·N(0, 1)); the training loss is

        BCE(f(x̃), y) + β · KL(f(x) ‖ f(x̃)) · (1 − p_y(x)),

    where BCE(f(x̃), y) = −log p_y(x̃) − log(1 − max_{k≠y} p_k(x̃)) also pushes
    down the strongest wrong class, and the KL term weighs most the examples
    the model gets wrong on clean inputs. Gradients flow through f(x) and
    f(x̃), as in the reference code. No separate clean cross-entropy: a
    `BidirectionalModel` with this policy uses `clean_weight=0` by default and
    still computes f(x).

    Reference: Wang, Zou, Yi, Bailey, Ma and Gu, "Improving Adversarial
    Robustness Requires Revisiting Misclassified Examples", ICLR 2020.

    Args:
        epsilon: radius of the perturbation ball.
        beta: weight of the KL term (the reference recipe uses 5 to 6).
        steps: ascent steps of the inner maximisation.
        step_size: size of each step; defaults to ε / 4.
        norm: `"linf"` or `"l2"`.
        from_logits: whether the model outputs logits (recommended) or
            probabilities.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.MART(0.2, beta=6.0, steps=7, clip_min=0.0, clip_max=1.0)
    """

    needs_clean_outputs = True

    def __init__(self, epsilon, beta=6.0, steps=10, step_size=None, norm="linf",
                 from_logits=True, **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("MART always ascends the loss; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        self.beta = check_positive("beta", beta)
        self.steps = check_count("steps", steps)
        step_size = check_positive("step_size", step_size, allow_none=True)
        self.step_size = self.epsilon / 4 if step_size is None else step_size
        self.from_logits = bool(from_logits)

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        attack = pieces.chain(
            pieces.random_start("gaussian", scale=0.001 / self.epsilon), pieces.project(),
            pieces.clip_to_range(),
            pieces.repeat(pieces.chain(pieces.gradient_step(self.step_size / self.epsilon),
                                       pieces.project(), pieces.clip_to_range()), self.steps),
        )
        return attack(self, context, inputs, list(inputs), epsilon), state

    def adversarial_loss(self, y, clean_outputs, adversarial_outputs):
        clean = self._per_class(_single_output(clean_outputs, "MART"))
        adversarial = self._per_class(_single_output(adversarial_outputs, "MART"))
        log_q = losses_lib.log_probabilities(adversarial, self.from_logits)
        one_hot = losses_lib.one_hot_like(y, log_q)
        q = ops.exp(log_q)
        log_true = ops.sum(one_hot * log_q, axis=-1)
        strongest_wrong = ops.max(q - 2.0 * one_hot, axis=-1)  # max over k ≠ y
        boosted = -log_true - ops.log(1.0001 - strongest_wrong + 1e-12)
        p_true = ops.sum(one_hot * ops.exp(losses_lib.log_probabilities(clean, self.from_logits)),
                         axis=-1)
        kl = losses_lib.kl_divergence(clean, adversarial, self.from_logits)
        return boosted + self.beta * kl * (1.0000001 - p_true)

    def _per_class(self, outputs):
        """One column per class: a single binary logit z is [0, z], a probability p is [1 − p, p]."""
        if outputs.shape[-1] != 1:
            return outputs
        if self.from_logits:
            return losses_lib.two_class_logits(outputs)
        return ops.concatenate([1.0 - outputs, outputs], axis=-1)

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"beta": self.beta, "steps": self.steps, "step_size": self.step_size,
                "from_logits": self.from_logits, **config}
