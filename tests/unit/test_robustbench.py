"""A standard-suite report as RobustBench's model-info JSON."""

import json

import pytest

from keras_bidir.evaluation import RobustnessReport
from keras_bidir.evaluation import robustbench


def _report(suite="standard", epsilons=(8 / 255,), examples=10000, norm="linf"):
    return RobustnessReport(0.8334, list(epsilons), {"APGD-CE": {e: 0.45 for e in epsilons}},
                            {e: 0.4321 for e in epsilons}, [], examples, norm, suite=suite,
                            cascade=True)


def test_model_info_has_robustbench_fields_and_its_formats(tmp_path):
    info = _report().to_robustbench("cifar10", "PreActResNet-18", name="Fast AT",
                                    authors="A. Author", reported=0.4606)
    assert info == {"link": "", "name": "Fast AT", "authors": "A. Author",
                    "additional_data": False, "number_forward_passes": 1, "dataset": "cifar10",
                    "venue": "", "architecture": "PreActResNet-18", "eps": "8/255",
                    "clean_acc": "83.34", "reported": "46.06", "autoattack_acc": "43.21"}
    path = robustbench.save_model_info(_report(norm="l2", epsilons=[0.5]), tmp_path, "Mine",
                                       "cifar10", architecture="ResNet-18")
    assert path.endswith("cifar10/L2/Mine.json") and json.load(open(path))["eps"] == "0.5"


def test_a_subset_is_said_in_a_footnote():
    info = _report(examples=1000).to_robustbench("cifar10", "ResNet-18")
    assert info["footnote"] == ("Evaluated on 1000 of the 10000 test examples; the leaderboard "
                                "uses all of them.")


@pytest.mark.parametrize("report, kwargs, message", [
    (_report(suite="fast"), {}, "suite='standard'"),
    (_report(epsilons=[0.1, 0.2]), {}, r"radii \[0.1, 0.2\]: pass epsilon="),
    (_report(), {"epsilon": 0.1}, "no radius 0.1"),
])
def test_reports_robustbench_cannot_take_are_refused(report, kwargs, message):
    with pytest.raises(ValueError, match=message):
        report.to_robustbench("cifar10", "ResNet-18", **kwargs)


def test_epsilons_are_written_as_robustbench_writes_them():
    assert [robustbench.epsilon_text(e) for e in (8 / 255, 4 / 255, 0.5, 0.3)] == [
        "8/255", "4/255", "0.5", "0.3"]
