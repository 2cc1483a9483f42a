"""Robust accuracy: attacks run batch by batch, worst case over restarts."""

import numpy as np
import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import losses as losses_lib
from keras_bidir.policies.base import resolve_attack_loss


def with_epsilon(policy, epsilon):
    """A copy of `policy` at radius `epsilon`, step sizes scaled alike."""
    config = policy.get_config()
    ratio = epsilon / config["epsilon"]
    config["epsilon"] = float(epsilon)
    if config.get("step_size") is not None:
        config["step_size"] = config["step_size"] * ratio
    return policy.__class__.from_config(config)


def _single_restart(policy):
    config = policy.get_config()
    if config.get("restarts", 1) == 1:
        return policy, 1
    restarts = config["restarts"]
    config["restarts"] = 1
    return policy.__class__.from_config(config), restarts


def predicted_labels(outputs, model=None):
    """Class predictions from model outputs (logits or probabilities)."""
    outputs = np.asarray(outputs)
    if outputs.ndim >= 2 and outputs.shape[-1] > 1:
        return outputs.argmax(axis=-1)
    outputs = outputs.reshape(outputs.shape[0], -1)[:, 0]
    threshold = 0.5 if model is not None and _ends_in_probability(model) else 0.0
    return (outputs > threshold).astype("int64")


def _ends_in_probability(model):
    base = getattr(model, "base_model", model)
    last = getattr(base, "layers", [None])[-1]
    name = getattr(getattr(last, "activation", None), "__name__", "")
    return name in ("sigmoid", "softmax")


def true_labels(y):
    """Integer labels from sparse or one-hot targets."""
    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] > 1:
        return y.argmax(axis=-1)
    return y.reshape(y.shape[0])


class AttackRunner:
    """Runs one attack against one model, compiled once, batch by batch.

    Args:
        model: a Keras classifier (BidirectionalModel or plain).
        attack: an `InputPolicy` used as the attack.
        loss: loss to ascend (default: the model's compiled loss, else
            cross-entropy matched to the labels and the output activation).
        seed: seed of the random starts.
    """

    def __init__(self, model, attack, loss=None, seed=0):
        self.model = model
        self.attack = attack
        self.loss = loss
        self._seed = keras.random.SeedGenerator(seed)
        self._function = None

    def _build(self, y_example):
        per_example = (
            losses_lib.per_example_loss_fn(self.loss)
            if self.loss is not None
            else resolve_attack_loss(self.model, y_example)
        )

        def run(x, y):
            return self.attack.perturb(
                self.model, x, y, loss=per_example, seed=self._seed
            )

        self._function = backend.function(run)

    def __call__(self, x, y):
        """Adversarial version of the batch `(x, y)`."""
        if self._function is None:
            self._build(y)
        return self._function(x, y)


def _batches(x, y, batch_size):
    count = len(true_labels(y))
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        yield keras.tree.map_structure(lambda a: a[start:stop], x), y[start:stop]


def correct_under_attack(model, x, y, attack, batch_size=256, loss=None, seed=0, verbose=0):
    """Per-example correctness under `attack`, worst case over its restarts.

    A PGD with `restarts=r` is run as r independent single-restart attacks and
    an example counts as robust only if it is classified correctly under all
    of them (stronger than picking the restart with the highest loss).

    Args:
        model: the classifier.
        x, y: arrays (x may be a list / dict of arrays).
        attack: an `InputPolicy`, or None for clean accuracy.
        batch_size: examples per attack batch.
        loss: optional loss to ascend instead of the model's.
        seed: seed of the random starts.
        verbose: 1 shows a progress bar.

    Returns:
        A boolean NumPy array, one entry per example.
    """
    labels = true_labels(y)
    correct = np.ones(len(labels), dtype=bool)
    if attack is None:
        runs, runner = 1, None
    else:
        single, runs = _single_restart(attack)
        runner = AttackRunner(model, single, loss=loss, seed=seed)
    steps = runs * int(np.ceil(len(labels) / batch_size))
    progress = keras.utils.Progbar(steps, verbose=verbose) if verbose else None
    for _ in range(runs):
        offset = 0
        for xb, yb in _batches(x, y, batch_size):
            if runner is not None:
                xb = runner(
                    keras.tree.map_structure(ops.convert_to_tensor, xb),
                    ops.convert_to_tensor(yb),
                )
            outputs = model.predict_on_batch(xb)
            stop = offset + len(yb)
            correct[offset:stop] &= predicted_labels(
                keras.ops.convert_to_numpy(outputs), model
            ) == true_labels(yb)
            offset = stop
            if progress is not None:
                progress.add(1)
    return correct


def robust_accuracy(model, x, y, attack, **kwargs):
    """Fraction of examples classified correctly under `attack` (see
    `correct_under_attack` for the arguments)."""
    return float(np.mean(correct_under_attack(model, x, y, attack, **kwargs)))
