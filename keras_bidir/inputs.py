"""Which inputs of a (possibly nested) batch get perturbed."""

import keras
from keras import tree


def _is_float(tensor):
    dtype = getattr(tensor, "dtype", None)
    return dtype is not None and keras.backend.is_float_dtype(
        keras.backend.standardize_dtype(dtype)
    )


def input_names(x, model=None):
    """Names of the flattened inputs of `x`: dict keys, or the model's input names."""
    paths = [path for path, _ in tree.flatten_with_path(x)]
    names = []
    model_names = None
    if model is not None and getattr(model, "inputs", None):
        try:
            model_names = [t.name for t in tree.flatten(model.inputs)]
        except (AttributeError, ValueError):
            model_names = None
    for position, path in enumerate(paths):
        if path and isinstance(path[-1], str):
            names.append(str(path[-1]))
        elif model_names is not None and len(model_names) == len(paths):
            names.append(model_names[position])
        else:
            names.append(f"input_{position}")
    return names


def perturbable_indices(x, perturb=None, model=None):
    """Positions in `tree.flatten(x)` of the inputs a policy may perturb.

    Args:
        x: one batch of inputs: a tensor, list or dict.
        perturb: optional list of input names to restrict perturbation to.
        model: the model, used to name list inputs.

    Returns:
        A list of integer positions; only floating-point inputs qualify.

    Raises:
        ValueError: when a requested name does not exist or is not float, or
            when no input is floating-point.
    """
    flat = tree.flatten(x)
    names = input_names(x, model)
    if perturb is not None:
        wanted = [perturb] if isinstance(perturb, str) else list(perturb)
        unknown = [n for n in wanted if n not in names]
        if unknown:
            layers = _inner_layer_names(model)
            inner = [n for n in unknown if n in layers]
            hint = (
                f" {inner!r} are layers inside the model, not inputs: put a PerturbationPoint "
                f"after one with keras_bidir.layers.insert_perturbation_point(model, "
                f"after={inner[0]!r}) and wrap the model it returns."
                if inner else ""
            )
            raise ValueError(
                f"perturb={wanted!r} names inputs {unknown!r} that the batch does "
                f"not have. Available inputs: {names!r}.{hint}"
            )
        indices = [names.index(n) for n in wanted]
        not_float = [names[i] for i in indices if not _is_float(flat[i])]
        if not_float:
            raise ValueError(
                f"Inputs {not_float!r} are not floating-point and cannot be "
                "perturbed along a gradient. For token ids, perturb the "
                "embeddings instead: place keras_bidir.layers.PerturbationPoint "
                "after the embedding layer."
            )
        return indices
    indices = [i for i, t in enumerate(flat) if _is_float(t)]
    if not indices:
        dtypes = [str(getattr(t, "dtype", type(t).__name__)) for t in flat]
        raise ValueError(
            f"The model's inputs {names!r} have dtypes {dtypes!r}: none is "
            "floating-point, so an input-level policy has nothing to perturb. "
            "If these are token ids, perturb the embeddings instead: place "
            "keras_bidir.layers.PerturbationPoint after the embedding layer. "
            "If they are numeric features stored as integers, cast them to "
            "float32 in your data pipeline."
        )
    return indices


def replace_inputs(x, indices, tensors):
    """Returns `x` with the flattened inputs at `indices` replaced by `tensors`."""
    flat = list(tree.flatten(x))
    for index, tensor in zip(indices, tensors):
        flat[index] = tensor
    return tree.pack_sequence_as(x, flat)


def select_inputs(x, indices):
    """The flattened inputs of `x` at `indices`."""
    flat = tree.flatten(x)
    return [flat[i] for i in indices]


def _inner_layer_names(model):
    """Names of every layer nested in `model` (empty for None)."""
    from keras_bidir.backend.private import nested_layers

    return {layer.name for layer in nested_layers(getattr(model, "base_model", model))}
