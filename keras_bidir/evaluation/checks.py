"""The gradient-masking checks: more steps, FGSM against iterative, a huge radius,
input-gradient health, and the gradient-free attacks against the gradient ones."""

import keras
import numpy as np
from keras import ops

from keras_bidir import backend
from keras_bidir.evaluation.report import Check
from keras_bidir.evaluation.runner import batches
from keras_bidir.evaluation.runner import has_compiled_loss
from keras_bidir.evaluation.runner import num_examples
from keras_bidir.policies.base import resolve_attack_loss
from keras_bidir.sites import Sites


def input_gradient_health(model, x, y, batch_size, loss=None):
    """Fraction of examples whose input gradient is all zero / non-finite."""
    zero = nonfinite = 0
    total = 0
    for xb, yb in batches(x, y, batch_size):
        xb_t = keras.tree.map_structure(ops.convert_to_tensor, xb)
        yb_t = keras.tree.map_structure(ops.convert_to_tensor, yb)
        per_example = resolve_attack_loss(model, yb_t, loss)
        sites = Sites(model, xb_t, getattr(model, "perturb_names", None))
        clean, masks, _ = sites.record(model, xb_t, training=False)

        def value(tensors):
            outputs = sites.forward(model, xb_t, tensors, clean, masks, training=False)
            return ops.sum(per_example(yb_t, outputs)), None

        _, _, grads = backend.input_gradients(value, clean)
        count = num_examples(yb)
        flat = np.concatenate(
            [ops.convert_to_numpy(g).reshape(count, -1).astype("float64") for g in grads], axis=1
        )
        finite = np.isfinite(flat).all(axis=1)
        nonfinite += int((~finite).sum())
        zero += int((finite & (np.abs(flat).max(axis=1) == 0)).sum())
        total += count
    return zero / total, nonfinite / total


def cascade_gradient_free_check(shares, names, margin=0.02):
    """Fails where the gradient-free attacks broke > `margin` of the examples in a cascade."""
    bad = {e: v for e, v in shares.items() if v > margin}
    text = ", ".join(f"ε={e:g}: {v:.1%}" for e, v in sorted(bad.items()))
    return Check(
        "gradient_free", not bad,
        f"the gradient-free attacks ({', '.join(names)}) broke at most {margin:.0%} of the "
        "examples the gradient attacks left robust" if not bad else
        f"the gradient-free attacks ({', '.join(names)}) broke more than {margin:.0%} of the "
        f"examples every gradient attack left robust ({text}): the gradients mislead the "
        "attacks (gradient masking), so gradient-based figures overstate robustness.",
        {str(e): v for e, v in shares.items()},
    )


def gradient_free_check(epsilons, by_attack, names, gradient_worst, margin=0.02):
    """Fails where a gradient-free attack beats the gradient attacks' worst case by > `margin`."""
    bad = {}
    for e in epsilons:
        free = min(by_attack[n][e] for n in names)
        if free < gradient_worst[e] - margin:
            bad[e] = (free, gradient_worst[e])
    text = ", ".join(f"ε={e:g}: {f:.1%} against {g:.1%}" for e, (f, g) in sorted(bad.items()))
    return Check(
        "gradient_free", not bad,
        f"the gradient-free attacks ({', '.join(names)}) are never more than {margin:.0%} below "
        "the gradient attacks' worst case" if not bad else
        f"the gradient-free attacks ({', '.join(names)}) are more than {margin:.0%} below the "
        "gradient attacks' worst case "
        f"({text}): the gradients mislead the attacks (gradient masking), so the gradient-based "
        "figures overstate robustness.",
        {str(e): v for e, v in bad.items()},
    )


def masking_checks(model, x, y, judge, run, epsilons, by_attack, common, batch_size, tolerance):
    """The gradient-masking checks of `evaluate_robustness`.

    Returns:
        The `Check`s, and the per-example scores of the checks' attacks at
        the radii they ran (`[(epsilon, scores)]`).
    """
    from keras_bidir import policies

    classifier = judge.kind.is_classification
    show = (lambda v: f"{v:.1%}") if classifier else (lambda v: f"{judge.measure} {v:.4g}")
    results = []
    mid = sorted(epsilons)[len(epsilons) // 2]
    weak_scores = run(policies.PGD(mid, steps=5, **common))
    strong_scores = run(policies.PGD(mid, steps=20, **common))
    weak, strong = judge.summary(weak_scores), judge.summary(strong_scores)
    ok = not judge.stronger(weak, strong, tolerance)
    results.append(Check(
        "more_steps", ok, f"PGD-5 {show(weak)} vs PGD-20 {show(strong)} at ε={mid:g}"
        + ("" if ok else ": more steps made the attack weaker, a sign of a noisy or masked "
           "gradient (stochastic layers active at inference, non-differentiable operations)."),
        {"epsilon": mid, "pgd5": float(weak), "pgd20": float(strong)},
    ))
    names = list(by_attack)
    fgsm_name = next((k for k in names if k.upper().startswith("FGSM")), None)
    multi = [k for k in names if k != fgsm_name]
    if fgsm_name is not None and multi:
        strongest = min if classifier else max
        bad = {}
        for e in epsilons:
            iterative = strongest(by_attack[k][e] for k in multi)
            if judge.stronger(by_attack[fgsm_name][e], iterative, tolerance):
                bad[e] = (by_attack[fgsm_name][e], iterative)
        results.append(Check(
            "single_vs_multi_step", not bad,
            "FGSM is never stronger than the iterative attacks" if not bad else
            f"FGSM beats every iterative attack at ε={sorted(bad)}: iterative attacks are "
            "stuck, typically because gradients vanish near the data (gradient masking).",
            {str(e): v for e, v in bad.items()},
        ))
    if classifier:
        low, high = common["clip_min"], common["clip_max"]
        big = float(high - low) if low is not None and high is not None else 10.0 * max(epsilons)
        huge = judge.summary(run(policies.PGD(big, steps=50, step_size=big / 10, **common)))
        results.append(Check(
            "large_epsilon", huge <= 0.1,
            f"accuracy {huge:.1%} at ε={big:g}"
            + ("" if huge <= 0.1 else
               ": an attack that may change the input almost arbitrarily should reach ~0%. "
               "The gradient does not lead the attack (masked, saturated or shattered gradients)."),
            {"epsilon": big, "accuracy": float(huge)},
        ))
    loss = None if has_compiled_loss(model) else judge.fallback_loss(y)
    zero, nonfinite = input_gradient_health(model, x, y, batch_size, loss)
    healthy = nonfinite == 0 and zero <= 0.05
    results.append(Check(
        "input_gradients", healthy,
        f"{zero:.1%} of examples have an all-zero input gradient, {nonfinite:.1%} a non-finite one"
        + ("" if healthy else
           ": the loss gradient carries no signal; look for rounding/quantisation, argmax, "
           "saturated softmax outputs (use logits with from_logits=True), or NaNs."),
        {"zero_fraction": zero, "nonfinite_fraction": nonfinite},
    ))
    return results, [(mid, weak_scores), (mid, strong_scores)]
