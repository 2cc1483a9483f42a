"""A report as RobustBench's model-info JSON (`robustbench/model_info/<dataset>/<threat>/<name>.json`)."""

import fractions
import json
import os

THREAT_MODELS = {"linf": "Linf", "l2": "L2"}
FULL_TEST_SETS = {"cifar10": 10000, "cifar100": 10000, "imagenet": 5000}


def epsilon_text(epsilon):
    """ε as RobustBench writes it: `"8/255"` for a multiple of 1/255, else the number."""
    as_255 = fractions.Fraction(epsilon * 255).limit_denominator(1000)
    if as_255.denominator == 1 and abs(float(as_255) / 255 - epsilon) < 1e-9:
        return f"{as_255.numerator}/255"
    return f"{epsilon:g}"


def model_info(report, dataset, architecture, epsilon=None, name="", authors="", link="",
               venue="", additional_data=False, reported=None):
    """`report`'s figures in RobustBench's model-info fields (see `RobustnessReport.to_robustbench`)."""
    if not report.is_accuracy:
        raise ValueError("RobustBench ranks classifiers by accuracy; this report is for a "
                         f"regression model ({report.measure}).")
    if report.suite != "standard":
        raise ValueError(
            f"This report comes from the {report.suite!r} attacks; RobustBench's autoattack_acc "
            "is AutoAttack's standard version: evaluate with suite='standard'.")
    if report.norm not in THREAT_MODELS:
        raise ValueError(f"RobustBench's threat models are Linf and L2, not {report.norm!r}.")
    if epsilon is None:
        if len(report.epsilons) != 1:
            raise ValueError(f"The report has radii {report.epsilons}: pass epsilon=<one of them>.")
        epsilon = report.epsilons[0]
    matches = [e for e in report.epsilons if abs(e - epsilon) < 1e-12]
    if not matches:
        raise ValueError(f"The report has no radius {epsilon:g}; it has {report.epsilons}.")
    info = {
        "link": link, "name": name, "authors": authors,
        "additional_data": bool(additional_data), "number_forward_passes": 1,
        "dataset": dataset, "venue": venue, "architecture": architecture,
        "eps": epsilon_text(matches[0]),
        "clean_acc": f"{100 * report.clean:.2f}",
        "reported": "" if reported is None else f"{100 * reported:.2f}",
        "autoattack_acc": f"{100 * report.robust_accuracy[matches[0]]:.2f}",
    }
    full = FULL_TEST_SETS.get(dataset)
    if full is not None and report.num_examples < full:
        info["footnote"] = (f"Evaluated on {report.num_examples} of the {full} test examples; "
                            "the leaderboard uses all of them.")
    return info


def save_model_info(report, directory, model_name, dataset, **fields):
    """Writes `model_info(...)` where RobustBench keeps it; returns the path."""
    threat = THREAT_MODELS.get(report.norm, report.norm)
    folder = os.path.join(directory, dataset, threat)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{model_name}.json")
    with open(path, "w") as handle:
        json.dump(model_info(report, dataset, **fields), handle)
    return path
