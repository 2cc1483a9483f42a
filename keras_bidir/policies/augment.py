"""Augmentation policies: Keras preprocessing layers inside the training step."""

import keras
from keras import ops

from keras_bidir.policies.base import InputPolicy
from keras_bidir.policies.base import check_count


def _as_layers(layers):
    if isinstance(layers, keras.layers.Layer):
        layers = [layers]
    layers = list(layers)
    if not layers:
        raise ValueError("Give at least one augmentation layer, e.g. keras.layers.RandomFlip().")
    for layer in layers:
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                f"Augmentations must be Keras layers (keras.layers.RandomFlip, RandomTranslation, "
                f"RandomRotation, RandAugment, ...), got {type(layer).__name__}."
            )
    return layers


def _check_input_sites(context, inputs, name):
    if not all(context.clip(len(inputs))):
        raise ValueError(
            f"{name} applies image augmentation layers to model inputs; it cannot act on "
            "PerturbationPoint activations. Use it on a model without PerturbationPoints, or "
            "pass perturb=[input names] to the BidirectionalModel."
        )


class _AugmentationPolicy(InputPolicy):
    """Shared by Augment and WorstOfK: a list of layers applied in order."""

    requires_labels = False

    def __init__(self, layers, **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError(f"{type(self).__name__} has no direction; leave it at +1.")
        super().__init__(**kwargs)
        self.layers = _as_layers(layers)

    def _augment(self, context, x):
        """`x` through every layer, in training mode, with the step's seed."""
        out = x
        for layer in self.layers:
            if hasattr(layer, "get_random_transformation") and hasattr(layer, "transform_images"):
                # Keras image preprocessing layers: draw the transformation from the
                # model's seed stream, so training is reproducible from `seed`.
                transformation = layer.get_random_transformation(out, training=True,
                                                                 seed=context.seed)
                out = layer.transform_images(out, transformation, training=True)
            else:
                out = layer(out, training=True)
        return self._clip(ops.cast(out, x.dtype))

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"layers": [keras.saving.serialize_keras_object(layer) for layer in self.layers],
                **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["layers"] = [keras.saving.deserialize_keras_object(c) for c in config["layers"]]
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_bidir")
class Augment(_AugmentationPolicy):
    """Data augmentation inside the step: Keras preprocessing layers, no gradient.

    The layers run on the batch in training mode (each example gets its own
    random transformation) and the weight step trains on the result. No input
    gradient is computed, so the cost is that of the layers.

    Args:
        layers: a Keras layer or a list of them, applied in order, e.g.
            `[keras.layers.RandomFlip("horizontal"), keras.layers.RandomTranslation(0.1, 0.1)]`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None) and `seed`.

    Example:

    >>> policy = keras_bidir.policies.Augment([keras.layers.RandomRotation(0.05),
    ...                                        keras.layers.RandomTranslation(0.1, 0.1)])
    """

    def generate(self, context, inputs, state):
        _check_input_sites(context, inputs, "Augment")
        return [self._augment(context, x) for x in inputs], state


@keras.saving.register_keras_serializable(package="keras_bidir")
class WorstOfK(_AugmentationPolicy):
    """The worst of k random augmentations per example (spatial adversarial training).

    Each example is augmented k times; all k·batch candidates are evaluated in
    one batched forward pass and each example keeps the candidate with the
    highest loss. With `RandomRotation` and `RandomTranslation` this is the
    "worst-of-k" spatial attack and training of Engstrom et al. (k = 10).

    Reference: Engstrom, Tran, Tsipras, Schmidt and Madry, "Exploring the
    Landscape of Spatial Robustness", ICML 2019.

    Args:
        layers: the augmentation layer(s), as for `Augment`.
        k: candidates per example (>= 1).
        **kwargs: `clip_min` and `clip_max` and `seed`.

    Example:

    >>> policy = keras_bidir.policies.WorstOfK(
    ...     [keras.layers.RandomRotation(30 / 360), keras.layers.RandomTranslation(0.1, 0.1)], k=10)
    """

    requires_labels = True

    def __init__(self, layers, k=10, **kwargs):
        super().__init__(layers, **kwargs)
        self.k = check_count("k", k)

    def candidates(self, context, inputs):
        """`(candidates, losses)`: k augmentations per example, stacked as `(k·batch, ...)`,
        and their per-example losses as `(k, batch)`."""
        _check_input_sites(context, inputs, "WorstOfK")
        candidates = [self._augment(context, ops.concatenate([x] * self.k, axis=0))
                      for x in inputs]
        losses = context.loss(candidates, repeats=self.k)
        return candidates, ops.reshape(ops.cast(losses, "float32"), (self.k, -1))

    def generate(self, context, inputs, state):
        candidates, losses = self.candidates(context, inputs)
        best = ops.one_hot(ops.argmax(losses, axis=0), self.k, axis=0)  # (k, batch)
        chosen = []
        for x, c in zip(inputs, candidates):
            stacked = ops.reshape(c, (self.k, -1) + tuple(x.shape[1:]))
            pick = ops.reshape(ops.cast(best, x.dtype), (self.k, -1) + (1,) * (len(x.shape) - 1))
            chosen.append(ops.sum(stacked * pick, axis=0))
        return chosen, state

    def get_config(self):
        return {"k": self.k, **super().get_config()}
