"""The attack suites: the fast set and AutoAttack's standard version, and which one a call runs."""

import numpy as np

from keras_bidir import losses as losses_lib
from keras_bidir import outputs as outputs_lib


# -- evaluate_robustness ---------------------------------------------------------------

def default_attacks(epsilon, clip_min=None, clip_max=None, norm="linf", task="multiclass"):
    """The default attack set at one radius, weakest first.

    FGSM; PGD-20 with 2 restarts (step 2.5ε/20); APGD with 100 steps (Croce
    and Hein, 2020) on the model's loss (APGD-CE) and, for classifiers, on
    the difference-of-logits ratio (APGD-DLR), whose scale does not depend on
    the cross-entropy's.
    """
    from keras_bidir import policies

    common = {"norm": norm, "clip_min": clip_min, "clip_max": clip_max}
    attacks = {
        "FGSM": policies.FGSM(epsilon, **common),
        "PGD-20x2": policies.PGD(epsilon, steps=20, restarts=2, **common),
    }
    if task == outputs_lib.REGRESSION:
        attacks["APGD"] = policies.APGD(epsilon, steps=100, loss="ce", **common)
        return attacks
    attacks["APGD-CE"] = policies.APGD(epsilon, steps=100, loss="ce", **common)
    attacks["APGD-DLR"] = policies.APGD(epsilon, steps=100, loss="dlr", **common)
    return attacks


SUITES = ("fast", "standard")


def standard_attacks(epsilon, clip_min=None, clip_max=None, norm="linf", classes=10):
    """AutoAttack's standard version at one radius (Croce and Hein, 2020), run in cascade.

    APGD-CE (100 steps), APGD-T (targeted DLR, 100 steps per target), FAB-T
    (100 steps per target) and Square (5,000 queries), with 9 target classes
    (fewer when the model has fewer). With fewer than four classes the
    targeted DLR is undefined and APGD-DLR takes APGD-T's place; a single
    binary logit has no target class for FAB-T, which is left out.

    Args:
        epsilon: the radius.
        clip_min: lower end of the valid data range, or None.
        clip_max: upper end of the valid data range, or None.
        norm: `"linf"` or `"l2"`.
        classes: the model's number of output logits (1 for a single binary logit).

    Returns:
        `{name: attack}` in AutoAttack's order.
    """
    from keras_bidir import policies

    common = {"norm": norm, "clip_min": clip_min, "clip_max": clip_max}
    targets = max(1, min(9, classes - 1))
    attacks = {"APGD-CE": policies.APGD(epsilon, steps=100, loss="ce", **common)}
    if classes >= 4:
        attacks["APGD-T"] = policies.APGDTargeted(epsilon, steps=100, targets=targets, **common)
    else:
        attacks["APGD-DLR"] = policies.APGD(epsilon, steps=100, loss="dlr", **common)
    if classes >= 2:
        attacks["FAB-T"] = policies.FABTargeted(epsilon, steps=100, targets=targets, **common)
    attacks["Square"] = policies.Square(epsilon, queries=5000, **common)
    return attacks


def suite_attacks(suite, attacks, epsilon, common, judge):
    """The attacks to run and the suite's name (`"custom"` for the user's own)."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}.")
    if attacks is not None:
        if not attacks:
            raise ValueError("attacks is empty: pass at least one attack, or None for the suite.")
        margins = [n for n, a in attacks.items() if losses_lib.reads_logits(a.attack_loss())]
        if margins and not judge.kind.is_classification:
            raise ValueError(f"{margins} ascend a classification margin (logits); this "
                             "regression model has none: use attacks on its loss (PGD, APGD "
                             "with loss='ce', FGSM).")
        return dict(attacks), "custom"
    if suite == "fast":
        return default_attacks(epsilon, task=judge.kind.task, **common), suite
    if not judge.kind.is_classification:
        raise ValueError("suite='standard' (AutoAttack) measures classifiers; this regression "
                         "model is reported by its loss under attack: use suite='fast'.")
    if judge.output is not None:
        raise ValueError("suite='standard' attacks a model with one classifier output; for "
                         "several outputs use suite='fast' with output=<name>.")
    attacks = standard_attacks(epsilon, classes=judge.classes, **common)
    # The fast set's gradient attacks end the cascade on the survivors (≈ 140 gradients per
    # example against the suite's ≈ 3,800), so the standard figure is never above the fast
    # set's per example: alone, the standard cascade left 0-3 of 397 digits robust that they broke.
    for name, attack in default_attacks(epsilon, task=judge.kind.task, **common).items():
        if name != "FGSM":
            attacks.setdefault(name, attack)
    return attacks, suite


def check_restarts(restarts):
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1 (runs of every attack, seeds "
                         f"seed, seed + 1, ...), got {restarts!r}.")
    return int(restarts)
