"""Robustness evaluation: attacks run batch by batch, worst case per example, checks, report.

The modules, in the order data flows through them:

- `runner`: one attack against one model, compiled once (`AttackRunner`), and
  the data slicing the others share;
- `judge`: what the outputs mean for scoring (`Judge`: correct or not, or a loss);
- `scores`: per-example scores under one attack (`scores_under_attack`,
  `robust_accuracy`);
- `suites`: the fast set and AutoAttack's standard version;
- `checks`: the gradient-masking checks;
- `cascade`: the robustness loop (every attack, or the cascade on survivors);
- `robustness`: `evaluate_robustness`, which runs all of the above;
- `report` and `pictures`: what it returns (`RobustnessReport`, flipped examples);
  `robustbench` writes a report as RobustBench's model-info JSON;
- `state`: the file that lets a killed evaluation resume; `shards` shares one
  evaluation among processes through such files.
"""

from keras_bidir.evaluation import robustbench
from keras_bidir.evaluation.cascade import CHECK_ATTACKS
from keras_bidir.evaluation.judge import Judge
from keras_bidir.evaluation.pictures import picture_radius
from keras_bidir.evaluation.report import Check
from keras_bidir.evaluation.report import RobustnessReport
from keras_bidir.evaluation.robustness import evaluate_robustness
from keras_bidir.evaluation.runner import AttackRunner
from keras_bidir.evaluation.runner import head
from keras_bidir.evaluation.runner import materialize
from keras_bidir.evaluation.runner import output_names
from keras_bidir.evaluation.scores import correct_under_attack
from keras_bidir.evaluation.scores import robust_accuracy
from keras_bidir.evaluation.scores import scores_under_attack
from keras_bidir.evaluation.shards import Shard
from keras_bidir.evaluation.suites import SUITES
from keras_bidir.evaluation.suites import default_attacks
from keras_bidir.evaluation.suites import standard_attacks

__all__ = [
    "AttackRunner", "CHECK_ATTACKS", "Check", "Judge", "RobustnessReport", "SUITES",
    "correct_under_attack", "default_attacks", "evaluate_robustness", "head", "materialize",
    "output_names", "picture_radius", "robust_accuracy", "robustbench", "scores_under_attack",
    "Shard", "standard_attacks",
]
