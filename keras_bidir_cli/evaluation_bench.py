"""`keras-bidir bench --evaluation`: AutoAttack's standard suite against the fast set.

Trains the digits protocol's models (as `--quality` does) and evaluates each
with both suites back to back, so the time ratio is measured in one run.
"""

import time

DEFAULT_CONFIGS = ("pgd7", "trades7")


def evaluate_both(model, x, y, epsilons, seed):
    """`{suite: row}`: the fast and the standard suite on one model, timed."""
    from keras_bidir.evaluation import evaluate_robustness

    rows = {}
    for suite in ("fast", "standard"):
        start = time.perf_counter()
        report = evaluate_robustness(model, (x, y), epsilons, clip_min=0.0, clip_max=1.0,
                                     suite=suite, seed=seed, verbose=0)
        rows[suite] = {
            "seconds": time.perf_counter() - start,
            "clean_accuracy": report.clean_accuracy,
            "robust_accuracy": {str(e): v for e, v in report.robust_accuracy.items()},
            "attacks": {n: {str(e): v for e, v in r.items()} for n, r in report.accuracy.items()},
            "checks_passed": report.passed_checks,
            "summary": report.summary_line(),
        }
    rows["standard_over_fast"] = rows["standard"]["seconds"] / rows["fast"]["seconds"]
    return rows


def run(configs=None, epsilons=(0.2,), seed=0, verbose=True):
    """Trains each configuration on the digits protocol and evaluates it with both suites.

    Returns:
        A JSON-ready dict: per configuration, the training seconds and both
        suites' figures and times.
    """
    from keras_bidir_cli import frontier

    protocol = frontier.PROTOCOLS["digits"]
    (x_train, y_train), (x_test, y_test) = protocol.load()
    known = frontier._configs()
    results = {}
    for name in configs or DEFAULT_CONFIGS:
        if verbose:
            print(f"  {name}: training ({protocol.epochs} epochs)...", flush=True)
        model, _, seconds, _ = frontier._timed_fit(protocol, known[name], seed, x_train, y_train)
        if verbose:
            print(f"  {name}: evaluating with the fast and the standard suite...", flush=True)
        results[name] = {"train_seconds": seconds, **evaluate_both(model, x_test, y_test,
                                                                  list(epsilons), seed)}
    return {"mode": "evaluation", "protocol": protocol.description, "seed": seed,
            "epsilons": list(epsilons), "results": results}


def table(payload):
    """A Markdown table: per model and ε, the fast worst case, the standard suite, the times."""
    rows = list(payload["results"].values())
    stages = list(rows[0]["standard"]["attacks"]) if rows else []
    header = ["model", "clean", "ε", "fast: worst case",
              "standard: after " + " / ".join(stages), "fast s", "standard s", "standard ÷ fast"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in payload["results"].items():
        fast, standard = row["fast"], row["standard"]
        for e in payload["epsilons"]:
            key = str(float(e))
            steps = " / ".join(f"{standard['attacks'][s][key]:.1%}"
                               if s in standard["attacks"] else "–" for s in stages)
            lines.append(f"| {name} | {fast['clean_accuracy']:.1%} | {e:g} | "
                         f"{fast['robust_accuracy'][key]:.1%} | {steps} | {fast['seconds']:.0f} | "
                         f"{standard['seconds']:.0f} | {row['standard_over_fast']:.2f} |")
    return "\n".join(lines)
