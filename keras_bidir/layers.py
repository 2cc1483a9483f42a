"""Drop-in layers: `PerturbationPoint` marks where the bidirectional step perturbs."""

import contextlib
import threading

import keras
from keras import ops

_STATE = threading.local()


class PerturbationScope:
    """Trace-time state read by every `PerturbationPoint` during one forward pass.

    Args:
        mode: `"record"` stores each point's activation and mask (the clean
            values); `"apply"` replaces each named point's activation.
        values: for `"apply"`, `{name: (adversarial, clean, mask)}`: the point
            outputs `activation + (adversarial - clean) * mask`, so gradients
            with respect to `adversarial` are gradients at that activation.
    """

    def __init__(self, mode, values=None):
        if mode not in ("record", "apply"):
            raise ValueError(f"Unknown scope mode {mode!r}.")
        self.mode = mode
        self.values = values or {}
        self.recorded = {}

    def visit(self, name, activation, mask):
        if self.mode == "record":
            self.recorded[name] = (activation, mask)
            return activation
        if name not in self.values:
            return activation
        adversarial, clean, _ = self.values[name]
        # `clean` is a constant here: when the policy evaluates at x̃ = clean
        # (the same tensor), the gradient must still flow through x̃.
        clean = ops.stop_gradient(clean)
        delta = ops.cast(adversarial, activation.dtype) - ops.cast(clean, activation.dtype)
        if mask is not None:
            delta = delta * expand_mask(mask, delta)
        return activation + delta


def expand_mask(mask, like):
    """A Keras mask `(batch, time)` as a multiplier broadcastable to `like`."""
    mask = ops.cast(mask, like.dtype)
    while len(mask.shape) < len(like.shape):
        mask = ops.expand_dims(mask, -1)
    return mask


def current_scope():
    """The active `PerturbationScope`, or None."""
    return getattr(_STATE, "scope", None)


@contextlib.contextmanager
def perturbation_scope(scope):
    """Activates `scope` for the forward passes run inside the block."""
    previous = current_scope()
    _STATE.scope = scope
    try:
        yield scope
    finally:
        _STATE.scope = previous


@keras.saving.register_keras_serializable(package="keras_bidir")
class PerturbationPoint(keras.layers.Layer):
    """Marks an activation where `BidirectionalModel` perturbs along the gradient.

    The identity at inference and in plain `fit()`. Under a
    `keras_bidir.BidirectionalModel`, the input policy's perturbation is added
    here and the one-tape training step takes the loss gradient with respect to
    this activation. Place it after a token embedding to train text models
    adversarially in embedding space (FreeLB, SMART). Keras masks pass through
    and padding positions are never perturbed. When a model contains points,
    only the points are perturbed, unless `BidirectionalModel(perturb=...)`
    also names inputs.

    Args:
        **kwargs: `keras.layers.Layer` arguments; `name` is the point's name,
            used by `BidirectionalModel(perturb=[...])`.

    Example:

    ```python
    tokens = keras.Input((64,), dtype="int32")
    x = keras_hub.layers.TokenAndPositionEmbedding(20000, 64, 128, mask_zero=True)(tokens)
    x = keras_bidir.layers.PerturbationPoint(name="embeddings")(x)
    x = keras_hub.layers.TransformerEncoder(256, num_heads=4)(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras_bidir.BidirectionalModel(
        keras.Model(tokens, outputs), policy=keras_bidir.policies.FreeLB(0.5, steps=3))
    ```
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if not keras.backend.is_float_dtype(dtype):
            raise ValueError(
                f"PerturbationPoint '{self.name}' received a {dtype} activation. It must "
                "sit on a floating-point activation: place it after the embedding layer, "
                "not on the token ids."
            )
        scope = current_scope()
        if scope is None:
            return inputs
        return scope.visit(self.name, inputs, mask)

    def compute_mask(self, inputs, mask=None):
        return mask


def find_points(model):
    """The `PerturbationPoint` layers inside `model`, in tracking order."""
    from keras_bidir.backend.private import nested_layers

    points = [layer for layer in nested_layers(model) if isinstance(layer, PerturbationPoint)]
    names = [p.name for p in points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"PerturbationPoint names must be unique; repeated: {duplicates}.")
    return points


def insert_perturbation_point(model, after, name=None, mask_input="padding_mask"):
    """A copy of a Functional model with a `PerturbationPoint` after one of its layers.

    For models you did not write, such as a keras-hub backbone, whose code
    you cannot edit to place the point yourself. The copy shares every layer
    (and so every weight) with `model`; only the point is new. It is a plain
    Functional model, saved and loaded like any other.

    Padding positions are never perturbed: the point takes the model input
    named `mask_input` (keras-hub's BERT-style backbones take
    `padding_mask`, 1 for real tokens and 0 for padding) as its mask, or the
    Keras mask of the activation when the model has no such input.

    Args:
        model: a Functional model (keras-hub backbones are Functional).
        after: name of the layer whose output is perturbed, e.g.
            `"embeddings_layer_norm"` for BERT (`model.summary()` lists them).
        name: the point's name (default `"<after>_perturbation"`), which
            `BidirectionalModel(perturb=[...])` may refer to.
        mask_input: name of the input holding the padding mask, or None.

    Returns:
        A new Functional model with the same inputs and outputs.

    Example:

    ```python
    backbone = keras_hub.models.BertBackbone.from_preset("bert_tiny_en_uncased")
    perturbable = keras_bidir.layers.insert_perturbation_point(
        backbone, after="embeddings_layer_norm")
    inputs = perturbable.input
    logits = keras.layers.Dense(2)(perturbable(inputs)["pooled_output"])
    model = keras_bidir.BidirectionalModel(
        keras.Model(inputs, logits), policy=keras_bidir.policies.FreeLB(0.1, steps=2))
    ```
    """
    from keras_bidir.backend.private import is_graph_model

    if not is_graph_model(model):
        raise TypeError(
            f"insert_perturbation_point needs a Functional model (keras-hub backbones are), got "
            f"{type(model).__name__}. In a subclassed model, place "
            "keras_bidir.layers.PerturbationPoint() in call() yourself."
        )
    names = [layer.name for layer in model.layers]
    if after not in names:
        raise ValueError(f"The model has no layer named {after!r}. Its layers: {names}.")
    point = PerturbationPoint(name=name or f"{after}_perturbation")
    inputs = keras.tree.map_structure(
        lambda x: keras.Input(batch_shape=x.shape, dtype=x.dtype, name=x.name), model.input
    )
    by_name = {x.name: x for x in keras.tree.flatten(inputs)}
    mask = by_name.get(mask_input) if mask_input is not None else None

    def call(layer, *args, **kwargs):
        outputs = layer(*args, **kwargs)
        if layer.name != after:
            return outputs
        return point(outputs) if mask is None else point(outputs, mask=mask)

    return keras.models.clone_model(
        model, input_tensors=inputs, clone_function=lambda layer: layer, call_function=call
    )
