"""Robust accuracy: attacks run batch by batch, worst case over restarts."""

import numpy as np
import keras
from keras import ops

from keras_bidir import backend
from keras_bidir.policies.base import resolve_attack_loss
from keras_bidir.sites import Sites


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
        loss = self.loss if self.loss is not None else self.attack.attack_loss()
        per_example = resolve_attack_loss(self.model, y_example, loss)

        def run(x, y, scale):
            return self.attack.attack_outputs(
                self.model, x, y, loss=per_example, seed=self._seed, scale=scale
            )

        self._function = backend.function(run)

    def __call__(self, x, y, epsilon=None):
        """Model outputs under attack for the batch `(x, y)`, at `epsilon` if given.

        The radius is a runtime argument: one compiled function serves all.
        """
        if self._function is None:
            self._build(y)
        scale = 1.0 if epsilon is None else float(epsilon) / self.attack.epsilon
        return self._function(x, y, ops.convert_to_tensor(scale, "float32"))


def _batches(x, y, batch_size):
    count = len(true_labels(y))
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        yield keras.tree.map_structure(lambda a: a[start:stop], x), y[start:stop]


def correct_under_attack(model, x, y, attack, batch_size=512, loss=None, seed=0, verbose=0,
                         epsilon=None, runners=None):
    """Per-example correctness under `attack`, worst case over its restarts.

    A PGD with `restarts=r` is run as r independent single-restart attacks and
    an example counts as robust only if it is classified correctly under all
    of them (stronger than picking the restart with the highest loss).

    Args:
        model: the classifier.
        x: input arrays (a list / dict of arrays for multi-input models).
        y: labels.
        attack: an `InputPolicy`, or None for clean accuracy.
        batch_size: examples per attack batch.
        loss: optional loss to ascend instead of the model's.
        seed: seed of the random starts.
        verbose: 1 shows a progress bar.
        epsilon: run the attack at this radius instead of its own (its step
            size scales along).
        runners: optional dict caching compiled attacks between calls.

    Returns:
        A boolean NumPy array, one entry per example.
    """
    labels = true_labels(y)
    correct = np.ones(len(labels), dtype=bool)
    if attack is None:
        runs, runner = 1, None
    else:
        single, runs = _single_restart(attack)
        key = (id(model), repr(single), seed, repr(loss))
        if runners is not None and key in runners:
            runner = runners[key]
        else:
            runner = AttackRunner(model, single, loss=loss, seed=seed)
            if runners is not None:
                runners[key] = runner
    steps = runs * int(np.ceil(len(labels) / batch_size))
    progress = keras.utils.Progbar(steps, verbose=verbose) if verbose else None
    for _ in range(runs):
        offset = 0
        for xb, yb in _batches(x, y, batch_size):
            if runner is not None:
                outputs = runner(
                    keras.tree.map_structure(ops.convert_to_tensor, xb),
                    ops.convert_to_tensor(yb),
                    epsilon,
                )
            else:
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


# -- evaluate_robustness ---------------------------------------------------------------

def default_attacks(epsilon, clip_min=None, clip_max=None, norm="linf"):
    """The default attack set at one radius, weakest first.

    FGSM; PGD-20 with 2 restarts (step 2.5ε/20); APGD-CE and APGD-DLR with 100
    steps (Croce and Hein, 2020): an automatic step-size schedule, and a loss
    that does not depend on the cross-entropy's scale.
    """
    from keras_bidir import policies

    common = {"norm": norm, "clip_min": clip_min, "clip_max": clip_max}
    return {
        "FGSM": policies.FGSM(epsilon, **common),
        "PGD-20x2": policies.PGD(epsilon, steps=20, restarts=2, **common),
        "APGD-CE": policies.APGD(epsilon, steps=100, loss="ce", **common),
        "APGD-DLR": policies.APGD(epsilon, steps=100, loss="dlr", **common),
    }


class Check:
    """One gradient-masking check: its name, verdict and explanation."""

    def __init__(self, name, passed, message, details=None):
        self.name = name
        self.passed = bool(passed)
        self.message = message
        self.details = details or {}

    def to_dict(self):
        return {"name": self.name, "passed": self.passed, "message": self.message,
                "details": self.details}

    def __repr__(self):
        return f"Check({self.name!r}, {'passed' if self.passed else 'FAILED'})"


class RobustnessReport:
    """Result of `evaluate_robustness`.

    Attributes:
        clean_accuracy: accuracy on unperturbed inputs.
        epsilons: the radii evaluated.
        accuracy: `{attack_name: {epsilon: accuracy}}`.
        robust_accuracy: `{epsilon: accuracy}`, the per-example worst case
            over all attacks (an example counts only if it survives every one).
        checks: list of `Check` (gradient-masking checks).
        num_examples: examples evaluated.
    """

    def __init__(self, clean_accuracy, epsilons, accuracy, robust_accuracy, checks, num_examples, norm):
        self.clean_accuracy = clean_accuracy
        self.epsilons = list(epsilons)
        self.accuracy = accuracy
        self.robust_accuracy = robust_accuracy
        self.checks = checks
        self.num_examples = num_examples
        self.norm = norm

    @property
    def passed_checks(self):
        """True when every gradient-masking check passed."""
        return all(check.passed for check in self.checks)

    def to_dict(self):
        return {
            "num_examples": self.num_examples,
            "norm": self.norm,
            "clean_accuracy": self.clean_accuracy,
            "epsilons": self.epsilons,
            "accuracy": {a: {str(e): v for e, v in r.items()} for a, r in self.accuracy.items()},
            "robust_accuracy": {str(e): v for e, v in self.robust_accuracy.items()},
            "checks": [check.to_dict() for check in self.checks],
        }

    def to_markdown(self):
        header = ["attack"] + [f"ε={e:g}" for e in self.epsilons]
        lines = [
            f"Clean accuracy: {self.clean_accuracy:.1%} ({self.num_examples} examples, {self.norm})",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
        ]
        for name, row in self.accuracy.items():
            lines.append("| " + " | ".join([name] + [f"{row[e]:.1%}" for e in self.epsilons]) + " |")
        lines.append(
            "| **worst case** | "
            + " | ".join(f"**{self.robust_accuracy[e]:.1%}**" for e in self.epsilons)
            + " |"
        )
        lines.append("")
        lines.append("Gradient-masking checks:")
        for check in self.checks:
            mark = "pass" if check.passed else "FAIL"
            lines.append(f"- [{mark}] {check.name}: {check.message}")
        return "\n".join(lines)

    def plot(self, path=None):
        """Accuracy against ε, one curve per attack plus the worst case.

        Args:
            path: where to save a PNG; None returns the figure unsaved.

        Returns:
            The matplotlib figure.
        """
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("plot() needs matplotlib: pip install 'keras-bidir[plot]'.") from error
        figure, axis = plt.subplots(figsize=(5.5, 3.8))
        xs = [0.0] + self.epsilons
        for name, row in self.accuracy.items():
            axis.plot(xs, [100 * self.clean_accuracy] + [100 * row[e] for e in self.epsilons],
                      marker="o", label=name, alpha=0.8)
        axis.plot(xs, [100 * self.clean_accuracy] + [100 * self.robust_accuracy[e] for e in self.epsilons],
                  marker="s", color="black", linewidth=2, label="worst case")
        axis.set_xlabel(f"ε ({self.norm})")
        axis.set_ylabel("accuracy (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
        axis.legend()
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
            plt.close(figure)
        return figure

    def __repr__(self):
        worst = ", ".join(f"ε={e:g}: {v:.1%}" for e, v in self.robust_accuracy.items())
        return f"RobustnessReport(clean={self.clean_accuracy:.1%}, worst case {worst})"


def _input_gradient_health(model, x, y, batch_size, loss=None):
    """Fraction of examples whose input gradient is all zero / non-finite."""
    zero = nonfinite = 0
    total = 0
    for xb, yb in _batches(x, y, batch_size):
        xb_t = keras.tree.map_structure(ops.convert_to_tensor, xb)
        yb_t = ops.convert_to_tensor(yb)
        per_example = resolve_attack_loss(model, yb_t, loss)
        sites = Sites(model, xb_t, getattr(model, "perturb_names", None))
        clean, masks, _ = sites.record(model, xb_t, training=False)

        def value(tensors):
            outputs = sites.forward(model, xb_t, tensors, clean, masks, training=False)
            return ops.sum(per_example(yb_t, outputs)), None

        _, _, grads = backend.input_gradients(value, clean)
        flat = np.concatenate(
            [ops.convert_to_numpy(g).reshape(len(yb), -1).astype("float64") for g in grads], axis=1
        )
        finite = np.isfinite(flat).all(axis=1)
        nonfinite += int((~finite).sum())
        zero += int((finite & (np.abs(flat).max(axis=1) == 0)).sum())
        total += len(yb)
    return zero / total, nonfinite / total


def evaluate_robustness(
    model,
    data,
    epsilons,
    attacks=None,
    norm="linf",
    clip_min=None,
    clip_max=None,
    batch_size=512,
    checks=True,
    seed=0,
    verbose=1,
):
    """Clean and robust accuracy of a classifier under a set of attacks.

    Robust accuracy per ε is the per-example worst case over all attacks (and
    over each attack's restarts). Gradient-masking checks (Athalye, Carlini
    and Wagner 2018; the flags of AutoAttack, Croce and Hein 2020) are run
    and every failure is also issued as a warning naming the likely cause:

    - `more_steps`: PGD with 4× the steps must not be less effective;
    - `single_vs_multi_step`: FGSM must not beat PGD;
    - `large_epsilon`: at an ε covering the whole data range (or 10× the
      largest ε when the range is open) accuracy must fall towards 0;
    - `input_gradients`: input gradients must be finite and mostly non-zero.

    Args:
        model: a `BidirectionalModel`, its base model or any Keras classifier.
        data: `(x, y)` arrays, or a `tf.data.Dataset` / iterable of `(x, y)` batches.
        epsilons: list of radii.
        attacks: None for `default_attacks`, or `{name: policy_at_any_epsilon}`;
            each is re-scaled to every ε (step sizes scale along).
        norm: `"linf"` or `"l2"` for the default attacks.
        clip_min: lower end of the valid data range. Defaults to that of a
            BidirectionalModel's policy, else open.
        clip_max: upper end of the valid data range (same default).
        batch_size: examples per attack batch.
        checks: run the gradient-masking checks.
        seed: seed of the attacks' random starts.
        verbose: 1 shows a progress bar.

    Returns:
        A `RobustnessReport`.

    Example:

    >>> report = keras_bidir.evaluate_robustness(model, (x_test, y_test),
    ...                                          epsilons=[0.1, 0.2, 0.3],
    ...                                          clip_min=0.0, clip_max=1.0)
    >>> print(report.to_markdown())
    """
    import warnings

    from keras_bidir import policies

    x, y = _materialize(data)
    epsilons = [float(e) for e in epsilons]
    if not epsilons or any(not np.isfinite(e) or e <= 0 for e in epsilons):
        raise ValueError(f"epsilons must be a non-empty list of finite numbers > 0, got {epsilons!r}.")
    policy = getattr(model, "policy", None)
    if clip_min is None and clip_max is None and policy is not None:
        clip_min, clip_max = policy.clip_min, policy.clip_max
    if attacks is None:
        attacks = default_attacks(max(epsilons), clip_min, clip_max, norm)
    names = list(attacks)
    runners = {}
    total = len(epsilons) * len(names) + (3 if checks else 0) + 1
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="attack") if verbose else None

    def tick(label):
        if progress is not None:
            progress.add(1, values=None)

    labels_correct = correct_under_attack(model, x, y, None, batch_size=batch_size)
    clean = float(labels_correct.mean())
    tick("clean")
    accuracy = {name: {} for name in names}
    robust = {}
    for eps in epsilons:
        worst = labels_correct.copy()
        for name, attack in attacks.items():
            correct = correct_under_attack(model, x, y, attack, batch_size=batch_size, seed=seed,
                                           epsilon=eps, runners=runners)
            accuracy[name][eps] = float(correct.mean())
            worst &= correct
            tick(name)
        robust[eps] = float(worst.mean())

    results = []
    if checks:
        n = len(true_labels(y))
        tolerance = max(0.01, 2.0 / n)
        mid = epsilons[len(epsilons) // 2]
        common = {"norm": norm, "clip_min": clip_min, "clip_max": clip_max}
        weak = correct_under_attack(model, x, y, policies.PGD(mid, steps=5, **common),
                                    batch_size=batch_size, seed=seed).mean()
        strong = correct_under_attack(model, x, y, policies.PGD(mid, steps=20, **common),
                                      batch_size=batch_size, seed=seed).mean()
        tick("steps")
        results.append(Check(
            "more_steps", strong <= weak + tolerance,
            f"PGD-5 {weak:.1%} vs PGD-20 {strong:.1%} at ε={mid:g}"
            + ("" if strong <= weak + tolerance else
               ": more steps made the attack weaker, a sign of a noisy or masked gradient "
               "(stochastic layers active at inference, non-differentiable operations)."),
            {"epsilon": mid, "pgd5": float(weak), "pgd20": float(strong)},
        ))
        fgsm_name = next((k for k in names if k.upper().startswith("FGSM")), None)
        multi = [k for k in names if k != fgsm_name]
        if fgsm_name is not None and multi:
            bad = {e: (accuracy[fgsm_name][e], min(accuracy[k][e] for k in multi))
                   for e in epsilons if accuracy[fgsm_name][e] < min(accuracy[k][e] for k in multi) - tolerance}
            results.append(Check(
                "single_vs_multi_step", not bad,
                "FGSM is never stronger than the iterative attacks" if not bad else
                f"FGSM beats every iterative attack at ε={sorted(bad)}: iterative attacks are "
                "stuck, typically because gradients vanish near the data (gradient masking).",
                {str(e): v for e, v in bad.items()},
            ))
        if clip_min is not None and clip_max is not None:
            big = float(clip_max - clip_min)
        else:
            big = 10.0 * max(epsilons)
        huge = correct_under_attack(
            model, x, y, policies.PGD(big, steps=50, step_size=big / 10, **common),
            batch_size=batch_size, seed=seed).mean()
        tick("large ε")
        results.append(Check(
            "large_epsilon", huge <= 0.1,
            f"accuracy {huge:.1%} at ε={big:g}"
            + ("" if huge <= 0.1 else
               ": an attack that may change the input almost arbitrarily should reach ~0%. "
               "The gradient does not lead the attack (masked, saturated or shattered gradients)."),
            {"epsilon": big, "accuracy": float(huge)},
        ))
        zero, nonfinite = _input_gradient_health(model, x, y, batch_size)
        tick("gradients")
        healthy = nonfinite == 0 and zero <= 0.05
        results.append(Check(
            "input_gradients", healthy,
            f"{zero:.1%} of examples have an all-zero input gradient, {nonfinite:.1%} a non-finite one"
            + ("" if healthy else
               ": the loss gradient carries no signal; look for rounding/quantisation, argmax, "
               "saturated softmax outputs (use logits with from_logits=True), or NaNs."),
            {"zero_fraction": zero, "nonfinite_fraction": nonfinite},
        ))
        for check in results:
            if not check.passed:
                warnings.warn(f"Gradient-masking check '{check.name}' failed: {check.message}", stacklevel=2)
    return RobustnessReport(clean, epsilons, accuracy, robust, results, len(true_labels(y)), norm)


def _materialize(data):
    """`(x, y)` NumPy arrays from arrays or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not hasattr(data[0], "element_spec"):
        x, y = data
        return x, np.asarray(y)
    xs, ys = [], []
    for batch in data:
        bx, by, _ = keras.utils.unpack_x_y_sample_weight(batch)
        if by is None:
            raise ValueError("evaluate_robustness needs labelled data: batches of (x, y).")
        xs.append(keras.tree.map_structure(ops.convert_to_numpy, bx))
        ys.append(ops.convert_to_numpy(by))
    if not xs:
        raise ValueError("The evaluation data is empty.")
    x = keras.tree.map_structure(lambda *parts: np.concatenate(parts), *xs)
    return x, np.concatenate(ys)
