"""Perturbation sites: the model inputs and `PerturbationPoint` activations a policy moves."""

from keras import ops

from keras_bidir import inputs as inputs_lib
from keras_bidir.layers import PerturbationScope
from keras_bidir.layers import expand_mask
from keras_bidir.layers import find_points
from keras_bidir.layers import perturbation_scope


class Sites:
    """Where a batch is perturbed: some flattened inputs and some points.

    Args:
        model: the model that will be run (its `PerturbationPoint`s are found).
        x: one batch of inputs.
        perturb: optional names of inputs and / or points. By default the
            model's points if it has any, else all floating-point inputs.

    Attributes:
        input_indices: positions in `tree.flatten(x)` of perturbed inputs.
        point_names: names of perturbed `PerturbationPoint`s.
    """

    def __init__(self, model, x, perturb=None):
        base = getattr(model, "base_model", model)
        point_names_all = [p.name for p in find_points(base)]
        if perturb is None:
            if point_names_all:
                self.input_indices, self.point_names = [], point_names_all
            else:
                self.input_indices = inputs_lib.perturbable_indices(x, None, base)
                self.point_names = []
            return
        wanted = [perturb] if isinstance(perturb, str) else list(perturb)
        self.point_names = [n for n in wanted if n in point_names_all]
        input_wanted = [n for n in wanted if n not in point_names_all]
        if input_wanted:
            try:
                self.input_indices = inputs_lib.perturbable_indices(x, input_wanted, base)
            except ValueError as error:
                if point_names_all and "does not have" in str(error):
                    raise ValueError(f"{error} PerturbationPoints: {point_names_all!r}.") from None
                raise
        else:
            self.input_indices = []

    def clip_flags(self):
        """Data-range clipping applies to input sites only, never to activations."""
        return [True] * len(self.input_indices) + [False] * len(self.point_names)

    def record(self, model, x, training):
        """Clean values of every site, their masks, and the model outputs.

        Input sites need no forward pass; points are read in one forward pass
        (whose outputs are returned, else None).
        """
        clean = inputs_lib.select_inputs(x, self.input_indices)
        masks = [None] * len(clean)
        outputs = None
        if self.point_names:
            scope = PerturbationScope("record")
            with perturbation_scope(scope):
                outputs = model(x, training=training)
            for name in self.point_names:
                if name not in scope.recorded:
                    raise ValueError(
                        f"PerturbationPoint '{name}' was not reached in the forward pass; "
                        "make sure it is part of the model's computation."
                    )
                activation, mask = scope.recorded[name]
                activation = ops.stop_gradient(activation)
                if mask is not None:
                    mask = ops.stop_gradient(ops.cast(mask, activation.dtype))
                clean.append(activation)
                masks.append(mask)
        return clean, masks, outputs

    def forward(self, model, x, values, clean, masks, training):
        """Model outputs with every site replaced by `values`."""
        n = len(self.input_indices)
        x = inputs_lib.replace_inputs(x, self.input_indices, values[:n])
        if not self.point_names:
            return model(x, training=training)
        mapping = {
            name: (value, base, mask)
            for name, value, base, mask in zip(self.point_names, values[n:], clean[n:], masks[n:])
        }
        with perturbation_scope(PerturbationScope("apply", mapping)):
            return model(x, training=training)


def apply_masks(clean, adversarial, masks):
    """Zeroes the perturbation at masked (padding) positions."""
    result = []
    for c, a, m in zip(clean, adversarial, masks):
        result.append(a if m is None else c + (a - c) * expand_mask(m, a))
    return result
