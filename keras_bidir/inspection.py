"""What a model's policy does to one batch, without training (callbacks, debugging)."""

import numpy as np
from keras import ops
from keras import tree

from keras_bidir import constraints
from keras_bidir import trainer
from keras_bidir.sites import Sites
from keras_bidir.sites import apply_masks


def inspect(model, x, y=None):
    """`BidirectionalModel.inspect`: the policy's perturbation of one batch and what it does.

    Returns:
        The dict `BidirectionalModel.inspect` documents.
    """
    if not model.step_state.compiled:
        raise RuntimeError("Compile the model before calling inspect().")
    x = tree.map_structure(ops.convert_to_tensor, x)
    y = None if y is None else tree.map_structure(ops.convert_to_tensor, y)
    sites = Sites(model, x, model.perturb_names)
    clean, masks, outputs = sites.record(model, x, training=False)
    context = trainer.training_context(model, x, y, sites, clean, masks)
    adversarial = apply_masks(clean, model.policy.attack(context, clean), masks)
    if outputs is None:
        outputs = model(x, training=False)
    return {
        "outputs": outputs,
        "attacked_outputs": sites.forward(model, x, adversarial, clean, masks, training=False),
        "perturbation_norm": float(ops.convert_to_numpy(
            trainer.perturbation_norm(model.policy.norm, clean, adversarial))),
        "input_gradient_norm": None if y is None else _gradient_norm(context, clean),
        "clean_sites": clean,
        "adversarial_sites": adversarial,
        "site_names": list(sites.input_indices) + list(sites.point_names),
    }


def _gradient_norm(context, clean):
    """Mean per-example L2 norm of the loss gradient at the clean sites, averaged over sites."""
    _, grads, _ = context.loss_and_gradients(clean)
    norms = [ops.mean(constraints.per_example_norm(ops.cast(g, "float32"), "l2")) for g in grads]
    return float(np.mean([ops.convert_to_numpy(n) for n in norms]))
