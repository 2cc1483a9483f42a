"""The robustness loop: every attack on every example, or AutoAttack's cascade on the
survivors, and the per-example worst case over them."""

import numpy as np

from keras_bidir.evaluation.checks import cascade_gradient_free_check
from keras_bidir.evaluation.checks import gradient_free_check


def run_independent(run, attacks, epsilons, clean, judge, restarts=1):
    """Every attack (each `restarts` times) on every example.

    Returns the per-attack figures, each ε's per-example worst case, and the
    gradient-free check.
    """
    by_attack = {name: {} for name in attacks}
    held, gradient_worst = {}, {}
    for eps in epsilons:
        worst, with_gradients = clean.copy(), clean.copy()
        for name, attack in attacks.items():
            scores = run(attack, eps)
            for restart in range(1, restarts):
                scores = judge.worst(scores, run(attack, eps, restart=restart))
            by_attack[name][eps] = judge.summary(scores)
            worst = judge.worst(worst, scores)
            if getattr(attack, "uses_gradients", True):
                with_gradients = judge.worst(with_gradients, scores)
        held[eps] = worst
        gradient_worst[eps] = judge.summary(with_gradients)
    free = [n for n, a in attacks.items() if not getattr(a, "uses_gradients", True)]
    check = None
    if free and len(free) < len(attacks) and judge.kind.is_classification:
        check = gradient_free_check(epsilons, by_attack, free, gradient_worst)
    return by_attack, held, check


def run_cascade(run, attacks, epsilons, clean, judge, restarts=1):
    """Each attack on the examples still robust (radii ascending: robust at ε needs robust below).

    Each attack runs `restarts` times (seeds seed, seed + 1, ...), each run
    on the examples the runs before left robust.

    Returns the robust accuracy after each attack, which examples held at
    each ε, and the cascade's gradient-free check.
    """
    by_attack = {name: {} for name in attacks}
    held, broken_without_gradients = {}, {}
    robust = np.asarray(clean, bool).copy()
    for eps in epsilons:
        broken_without_gradients[eps] = 0
        for name, attack in attacks.items():
            for restart in range(restarts):
                rows = np.flatnonzero(robust)
                kept = run(attack, eps, rows, restart)
                if not getattr(attack, "uses_gradients", True):
                    broken_without_gradients[eps] += int(np.sum(~kept))
                robust[rows] = kept
            by_attack[name][eps] = float(np.mean(robust))
        held[eps] = robust.copy()
    free = [n for n, a in attacks.items() if not getattr(a, "uses_gradients", True)]
    check = None
    if free and len(free) < len(attacks):
        shares = {e: b / len(robust) for e, b in broken_without_gradients.items()}
        check = cascade_gradient_free_check(shares, free)
    return by_attack, held, check


CHECK_ATTACKS = "the checks' PGD"


def fold(held, extra, judge, by_attack=None):
    """Folds per-example scores of further attacks (`[(epsilon, scores)]`) into `held`.

    Robust at ε needs robust at every smaller radius (the ball grows), so an
    example broken at ε counts as broken at every larger radius too. With
    `by_attack` (a cascade's rows), a row `CHECK_ATTACKS` is added when the
    further attacks broke an example the cascade had left robust.
    """
    before = {e: judge.summary(v) for e, v in held.items()}
    for radius, scores in extra:
        for e in held:
            if e >= radius:
                held[e] = judge.worst(held[e], scores)
    after = {e: judge.summary(v) for e, v in held.items()}
    if by_attack is not None and after != before:
        by_attack[CHECK_ATTACKS] = after
