"""Recipes: a measured training configuration for a compute budget and a radius.

A recipe bundles what the fast adversarial-training literature found decides
the result, beyond the policy: the number of epochs, a one-cycle learning rate
and an optional weight perturbation. Each recipe here is a point of the
robustness-versus-compute frontier measured by `keras-bidir bench --quality`
(docs/benchmarks.md); `budget` is training time relative to the plain `fit`
the user would otherwise run (same model, data, batch size and `epochs`).

Example:

>>> recipe = keras_bidir.recipes.fast(epsilon=0.2, clip_min=0.0, clip_max=1.0)
>>> model = recipe.wrap(base_model)
>>> model.compile(optimizer=recipe.optimizer(steps_per_epoch=len(x) // 128),
...               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
...               metrics=["accuracy"])
>>> model.fit(x, y, batch_size=128, epochs=recipe.epochs,
...           callbacks=recipe.callbacks(steps_per_epoch=len(x) // 128))
"""

import dataclasses

import keras

from keras_bidir import policies as policies_lib
from keras_bidir.callbacks import EpsilonSchedule
from keras_bidir import weight_policies as weight_policies_lib
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.schedules import OneCycle


@dataclasses.dataclass(frozen=True)
class FrontierPoint:
    """One measured configuration of the frontier (ε and data range filled in later).

    Attributes:
        name: the configuration's name in the benchmark.
        cost: training time / plain `fit`, measured on the digits protocol.
        policy: `(epsilon, norm, clip_min, clip_max) -> InputPolicy`.
        epochs_factor: epochs relative to the plain run's epochs.
        peak_learning_rate: the one-cycle peak (Adam).
        epsilon_ramp: the fraction of the weight updates over which ε rises
            from 0 (`callbacks.EpsilonSchedule`, per step).
        weight_policy: `() -> WeightPolicy` or None.
        measured: the figures behind the choice (docs/benchmarks.md).
    """

    name: str
    cost: float
    policy: object
    epochs_factor: float
    peak_learning_rate: float
    epsilon_ramp: float = 0.0
    weight_policy: object = None
    measured: str = ""


def _free8(epsilon, norm, clip_min, clip_max):
    return policies_lib.FreeAdversarial(epsilon, replays=8, norm=norm, clip_min=clip_min,
                                        clip_max=clip_max)


#: The measured frontier, cheapest first (see docs/benchmarks.md for every figure).
FRONTIER = (
    FrontierPoint(
        "recipe_fast", 1.42, _free8, 6 / 30, 4e-3, epsilon_ramp=0.05,
        measured="AutoAttack (standard suite): digits, L∞ ε = 0.2, 3 seeds: 98.4 % clean, "
                 "64.8 % robust, 1.67x plain fit (median; 1.42x when chosen on the fast set's "
                 "65.6 %); MNIST-5k, ε = 0.3, 1 seed: 96.9 % clean, 79.1 % robust, 1.73x"),
    FrontierPoint(
        "recipe_strong", 1.83, _free8, 10 / 30, 4e-3, epsilon_ramp=0.05,
        measured="AutoAttack (standard suite): digits, L∞ ε = 0.2, 3 seeds: 99.2 % clean, "
                 "69.8 % robust, 2.27x plain fit (median; 1.83x when chosen on the fast set's "
                 "71.2 %); MNIST-5k, ε = 0.3, 1 seed: 97.5 % clean, 77.1 % robust, 2.71x"),
    FrontierPoint(
        "recipe_thorough", 3.14, _free8, 15 / 30, 4e-3, epsilon_ramp=0.05,
        measured="the fast set's worst case (not re-measured under the standard suite): "
                 "digits, L∞ ε = 0.2, 3 seeds: 99.4 % clean, 72.5 %, 3.14x plain fit (median); "
                 "MNIST-5k, ε = 0.3, 1 seed: 97.2 % clean, 78.6 %, 3.29x"),
)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A ready configuration: policy, weight policy, epochs and learning-rate schedule.

    Attributes:
        name: the frontier point it comes from.
        policy: the input policy, for the requested ε and data range.
        weight_policy: the weight policy, or None.
        epochs: the number of epochs to train.
        peak_learning_rate: the peak of the one-cycle schedule (Adam).
        epsilon_ramp: the fraction of training over which ε rises from 0.
        expected_cost: training time / plain `fit`, as measured.
        measured: the figures behind the choice.
    """

    name: str
    policy: object
    weight_policy: object
    epochs: int
    peak_learning_rate: float
    epsilon_ramp: float
    expected_cost: float
    measured: str

    def wrap(self, model, **kwargs):
        """A `BidirectionalModel` training `model` with this recipe's policies.

        Args:
            model: the Keras model to train.
            **kwargs: more `BidirectionalModel` arguments (`seed`, `clean_weight`, ...).
        """
        from keras_bidir.model import BidirectionalModel

        return BidirectionalModel(model, self.policy, weight_policy=self.weight_policy, **kwargs)

    def learning_rate(self, steps_per_epoch):
        """The one-cycle schedule over all of the recipe's weight updates.

        Args:
            steps_per_epoch: batches per epoch (`ceil(len(x) / batch_size)`).
        """
        steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch)
        updates = steps_per_epoch * self.epochs * self.policy.replays
        return OneCycle(self.peak_learning_rate, updates)

    def optimizer(self, steps_per_epoch):
        """Adam with `learning_rate(steps_per_epoch)`."""
        return keras.optimizers.Adam(self.learning_rate(steps_per_epoch))

    def callbacks(self, steps_per_epoch):
        """The recipe's callbacks for `fit`: the ε warm-up, when it has one.

        Args:
            steps_per_epoch: batches per epoch (`ceil(len(x) / batch_size)`).
        """
        steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch)
        ramp = round(self.epsilon_ramp * steps_per_epoch * self.epochs)
        return [EpsilonSchedule(ramp=ramp, unit="step")] if ramp else []


def for_budget(epsilon, budget, epochs=30, norm="linf", clip_min=None, clip_max=None):
    """The most robust measured recipe whose training time fits `budget`.

    Args:
        epsilon: the radius to be robust at.
        budget: allowed training time relative to plain `fit` (>= 1).
        epochs: the epochs of the plain run the budget refers to.
        norm: `"linf"` or `"l2"`.
        clip_min: lower bound of the valid data range, or None.
        clip_max: upper bound of the valid data range, or None.

    Returns:
        A `Recipe`.
    """
    budget = check_positive("budget", budget)
    epochs = check_count("epochs", epochs)
    fitting = [point for point in FRONTIER if point.cost <= budget]
    if not fitting:
        cheapest = FRONTIER[0]
        raise ValueError(
            f"No measured recipe trains within {budget}× plain fit; the cheapest, "
            f"{cheapest.name!r}, costs {cheapest.cost}×. Pass budget >= {cheapest.cost}.")
    point = fitting[-1]
    return Recipe(
        name=point.name,
        policy=point.policy(check_positive("epsilon", epsilon), norm, clip_min, clip_max),
        weight_policy=None if point.weight_policy is None else weight_policies_lib.get(
            point.weight_policy()),
        epochs=max(1, round(epochs * point.epochs_factor)),
        peak_learning_rate=point.peak_learning_rate,
        epsilon_ramp=point.epsilon_ramp,
        expected_cost=point.cost,
        measured=point.measured,
    )


def fast(epsilon, budget=1.5, **kwargs):
    """The best measured recipe within 1.5× plain training time (see `for_budget`).

    Example:

    >>> recipe = keras_bidir.recipes.fast(0.2, clip_min=0.0, clip_max=1.0)
    >>> recipe.name, recipe.epochs
    ('recipe_fast', 6)
    """
    return for_budget(epsilon, budget, **kwargs)


def strong(epsilon, budget=3.0, **kwargs):
    """The best measured recipe within 3× plain training time (see `for_budget`).

    Example:

    >>> recipe = keras_bidir.recipes.strong(0.2, clip_min=0.0, clip_max=1.0)
    >>> recipe.name, recipe.epochs
    ('recipe_strong', 10)
    """
    return for_budget(epsilon, budget, **kwargs)
