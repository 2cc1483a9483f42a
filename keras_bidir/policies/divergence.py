"""The base of the divergence policies (TRADES, VAT): perturb towards the largest change
of the prediction, KL(f(x) ‖ f(x̃)), and train on that divergence instead of the compiled loss on x̃.
"""

import keras
from keras import ops

from keras_bidir import losses as losses_lib
from keras_bidir.policies.base import BallPolicy


def no_label_loss(y, outputs):
    """The attack objective of divergence policies ignores the labels."""
    return ops.zeros((ops.shape(keras.tree.flatten(outputs)[0])[0],), dtype="float32")


def single_output(outputs, name):
    flat = keras.tree.flatten(outputs)
    if len(flat) != 1:
        raise ValueError(f"{name} needs a model with one (classification) output, got {len(flat)}.")
    return flat[0]


class DivergencePolicy(BallPolicy):
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
        return no_label_loss

    def _kl(self, reference, outputs):
        name = type(self).__name__
        return losses_lib.kl_divergence(single_output(reference, name),
                                        single_output(outputs, name), self.from_logits)

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
