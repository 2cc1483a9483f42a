"""Weight policies: the weight direction of bidirectional optimization (SAM, AWP).

Before the descent gradient is taken, the weights move up the training
objective, θ + v, with v computed from ∇_θ of the objective at the current
(perturbed) inputs; the descent gradient is taken at θ + v, the weights are
restored exactly to θ, and the optimizer applies that gradient to θ. This costs
one extra forward and backward pass over the weights per step.
"""

import keras
from keras import ops

from keras_bidir.policies.base import Configured
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive

_TINY = 1e-12


class WeightPolicy(Configured):
    """Base class of weight policies: how the weights move before the descent step.

    Subclasses implement `perturbation(weights, gradients)`.

    Args:
        warmup_epochs: epochs at the start of training without weight
            perturbation.
    """

    def __init__(self, warmup_epochs=0):
        self.warmup_epochs = check_count("warmup_epochs", warmup_epochs, minimum=0)

    def perturbation(self, weights, gradients):
        """The perturbation v of each weight (a list like `weights`).

        Args:
            weights: the trainable weight values (tensors).
            gradients: ∇ of the training objective with respect to them.
        """
        raise NotImplementedError

    def get_config(self):
        return {"warmup_epochs": self.warmup_epochs}


def _norm(tensor):
    return ops.sqrt(ops.sum(ops.square(ops.cast(tensor, "float32"))))


@keras.saving.register_keras_serializable(package="keras_bidir")
class SAM(WeightPolicy):
    """Sharpness-aware minimization: v = ρ·g/‖g‖ over all trainable weights.

    Reference: Foret, Kleiner, Mobahi and Neyshabur, "Sharpness-Aware
    Minimization for Efficiently Improving Generalization", ICLR 2021.

    Args:
        rho: ρ, the radius of the weight neighbourhood.
        warmup_epochs: epochs without weight perturbation at the start.

    Example:

    >>> model = keras_bidir.BidirectionalModel(base, policy=keras_bidir.policies.PGD(0.2, steps=3),
    ...                                       weight_policy=keras_bidir.weight_policies.SAM(0.05))
    """

    def __init__(self, rho=0.05, warmup_epochs=0):
        super().__init__(warmup_epochs)
        self.rho = check_positive("rho", rho)

    def perturbation(self, weights, gradients):
        total = ops.sqrt(sum(ops.square(_norm(g)) for g in gradients))
        scale = self.rho / (total + _TINY)
        return [ops.cast(ops.cast(g, "float32") * scale, w.dtype) for w, g in zip(weights, gradients)]

    def get_config(self):
        return {"rho": self.rho, **super().get_config()}


@keras.saving.register_keras_serializable(package="keras_bidir")
class AWP(WeightPolicy):
    """Adversarial weight perturbation: v_l = γ·‖w_l‖·g_l/‖g_l‖ per layer weight.

    Per-layer relative ascent on the adversarial training loss; as in the
    paper's code, only weights with two or more axes (kernels, embeddings)
    move, biases and normalisation scales do not.

    Reference: Wu, Xia and Wang, "Adversarial Weight Perturbation Helps
    Robust Generalization", NeurIPS 2020.

    Args:
        gamma: γ, the size of the perturbation relative to each weight's norm.
        warmup_epochs: epochs without weight perturbation at the start (the
            paper starts AWP after a few epochs of plain adversarial training).

    Example:

    >>> model = keras_bidir.BidirectionalModel(base, policy=keras_bidir.policies.TRADES(0.2),
    ...                                       weight_policy=keras_bidir.weight_policies.AWP(5e-3))
    """

    def __init__(self, gamma=5e-3, warmup_epochs=0):
        super().__init__(warmup_epochs)
        self.gamma = check_positive("gamma", gamma)

    def perturbation(self, weights, gradients):
        moved = []
        for w, g in zip(weights, gradients):
            if len(w.shape) < 2:
                moved.append(ops.zeros_like(w))
                continue
            scale = self.gamma * _norm(w) / (_norm(g) + _TINY)
            moved.append(ops.cast(ops.cast(g, "float32") * scale, w.dtype))
        return moved

    def get_config(self):
        return {"gamma": self.gamma, **super().get_config()}


_BY_NAME = {"sam": SAM, "awp": AWP}


def get(identifier):
    """A weight policy from a policy, a config dict or a name (`"sam"`, `"awp"`); None stays None."""
    if identifier is None or isinstance(identifier, WeightPolicy):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"Unknown weight policy {identifier!r}: pass keras_bidir.weight_policies.SAM(...), "
        "AWP(...), their names 'sam' / 'awp', or None."
    )
