"""Robust accuracy: attacks run batch by batch, worst case over restarts."""

import numpy as np
import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import data_utils
from keras_bidir import losses as losses_lib
from keras_bidir import outputs as outputs_lib
from keras_bidir.policies.base import resolve_attack_loss
from keras_bidir.report import Check
from keras_bidir.report import RobustnessReport
from keras_bidir.sites import Sites


def _single_restart(policy):
    config = policy.get_config()
    if config.get("restarts", 1) == 1:
        return policy, 1
    restarts = config["restarts"]
    config["restarts"] = 1
    return policy.__class__.from_config(config), restarts


def head(structure, output, model=None):
    """One output head (or its labels) from a nested structure.

    Args:
        structure: model outputs or labels: one array, or a dict / list of them.
        output: a head name (dict key or model output name), an index, or
            None for single-output structures.
        model: consulted for its output names when `structure` is a list.
    """
    if not isinstance(structure, (dict, list, tuple)):
        return structure
    if output is None:
        if len(structure) == 1:
            return next(iter(structure.values())) if isinstance(structure, dict) else structure[0]
        names = list(structure) if isinstance(structure, dict) else output_names(model, len(structure))
        raise ValueError(
            f"This model has {len(structure)} outputs {names}: pass output=<name> to say which "
            "head's accuracy to report (the attack ascends the total compiled loss)."
        )
    if isinstance(structure, dict):
        if output not in structure:
            raise ValueError(f"Unknown output {output!r}; the outputs are {sorted(structure)}.")
        return structure[output]
    if isinstance(output, str):
        names = output_names(model, len(structure))
        if output not in names:
            raise ValueError(f"Unknown output {output!r}; the outputs are {names}.")
        output = names.index(output)
    return structure[output]


def output_names(model, count):
    base = getattr(model, "base_model", model)
    names = list(getattr(base, "output_names", None) or [])
    return names if len(names) == count else list(range(count))


class _AttackStep:
    """One attack against one model as a callable object.

    TensorFlow counts the traces of a compiled Python function per code
    object; as an object of its own, each distinct attack is compiled (and
    counted) separately instead of looking like retraces of one function.
    """

    def __init__(self, model, attack, loss, seed, from_logits, keep_misclassified):
        self.model, self.attack, self.loss, self.seed = model, attack, loss, seed
        self.from_logits, self.keep_misclassified = from_logits, keep_misclassified

    def __call__(self, x, y, scale):
        return self.attack.attack_outputs(
            self.model, x, y, loss=self.loss, seed=self.seed, scale=scale,
            from_logits=self.from_logits, keep_misclassified=self.keep_misclassified,
        )


class AttackRunner:
    """Runs one attack against one model, compiled once, batch by batch.

    Args:
        model: a Keras model (BidirectionalModel or plain).
        attack: an `InputPolicy` used as the attack.
        loss: loss to ascend (default: the attack's own, else the model's
            compiled loss, else `fallback_loss`).
        seed: seed of the random starts.
        fallback_loss: loss for models compiled without one (derived from
            what the outputs are: see `keras_bidir.outputs`).
        select: for multi-output models, picks the evaluated head from labels
            and outputs; an attack's own loss (DLR) is taken on that head.
        from_logits: False when the evaluated head outputs probabilities:
            attacks that read logits (margins, DLR) get its logits.
        keep_misclassified: the attacks keep the misclassified points they
            find (a single-output classifier's evaluation).
    """

    def __init__(self, model, attack, loss=None, seed=0, fallback_loss=None, select=None,
                 from_logits=None, keep_misclassified=False):
        self.model = model
        self.from_logits = from_logits
        self.keep_misclassified = keep_misclassified
        self.attack = attack
        self.loss = loss
        self.fallback_loss = fallback_loss
        self.select = select
        self._seed = keras.random.SeedGenerator(seed)
        self._function = None

    def _build(self, y_example):
        own = self.attack.attack_loss() if self.loss is None else None
        loss = self.loss if self.loss is not None else own
        if loss is None and not _has_compiled_loss(self.model):
            loss = self.fallback_loss
        per_example = resolve_attack_loss(self.model, y_example, loss, self.from_logits)
        if own is not None and self.select is not None:
            on_all = per_example
            per_example = lambda y, outputs: on_all(self.select(y), self.select(outputs))  # noqa: E731
        self._function = backend.function(
            _AttackStep(self.model, self.attack, per_example, self._seed, self.from_logits,
                        self.keep_misclassified),
            state=lambda: list(self.model.variables) + [self._seed.state])

    def __call__(self, x, y, epsilon=None):
        """Model outputs under attack for the batch `(x, y)`, at `epsilon` if given.

        The radius is a runtime argument: one compiled function serves all.
        """
        if self._function is None:
            self._build(y)
        scale = 1.0 if epsilon is None else float(epsilon) / self.attack.epsilon
        return self._function(x, y, ops.convert_to_tensor(scale, "float32"))


def _has_compiled_loss(model):
    return getattr(model, "_bidir_attack_loss", None) is not None or getattr(model, "loss", None) is not None


def _num_examples(y):
    return len(keras.tree.flatten(y)[0])


def _batches(x, y, batch_size):
    count = _num_examples(y)
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        take = lambda a: a[start:stop]  # noqa: E731
        yield keras.tree.map_structure(take, x), keras.tree.map_structure(take, y)


class Judge:
    """How a model's outputs are scored against the labels, per example.

    Classifiers: correct or not (an example is robust when correct under
    every attack). Regression: the per-example loss (its worst case is the
    largest over the attacks).

    Args:
        model: the model.
        kind: an `OutputKind` (see `describe`).
        output: the head scored, for multi-output models.
        classes: the scored head's outputs per example (1 for a single logit).
    """

    def __init__(self, model, kind, output=None, classes=None):
        self.model, self.kind, self.output = model, kind, output
        #: Logits (or probabilities) per example of the scored head.
        self.classes = classes
        self.measure = "accuracy"
        if not kind.is_classification:
            loss = outputs_lib.compiled_loss(model, _loss_key(model, output))
            loss = loss if loss is not None else "mean_squared_error"
            self.measure = outputs_lib.loss_name(loss) or "loss"
            self._loss = losses_lib.per_example_loss_fn(loss)

    @classmethod
    def describe(cls, model, x, y, output=None, from_logits=None, batch_size=512):
        """A judge for `model`, deciding what its outputs are from the first batch.

        Raises:
            ValueError: for empty data, or labels that are no class of the model.
        """
        if _num_examples(y) == 0:
            raise ValueError("The evaluation data is empty: (x, y) holds no example. Pass the "
                             "test set, e.g. (x_test, y_test).")
        xb, yb = next(_batches(x, y, batch_size))
        outputs = head(model.predict_on_batch(xb), output, model)
        kind = outputs_lib.describe_outputs(
            model, outputs, head(yb, output, model), from_logits,
            loss=outputs_lib.compiled_loss(model, _loss_key(model, output)),
        )
        shape = np.shape(ops.convert_to_numpy(outputs))
        judge = cls(model, kind, output, int(shape[-1]) if len(shape) > 1 else 1)
        judge.check_labels(head(y, output, model))
        return judge

    def check_labels(self, y):
        """Refuses labels that are no class of the model, naming them."""
        y = np.asarray(y)
        if self.kind.task == outputs_lib.MULTICLASS and (y.ndim == 1 or y.shape[-1] == 1):
            values = y[np.isfinite(y)] if np.issubdtype(y.dtype, np.floating) else y
            if values.size and np.any(values != np.round(values)):
                raise ValueError("Sparse labels must be class indices (integers); y holds "
                                 "fractions. Pass integer labels or one-hot rows.")
            data_utils.check_label_range(values.astype("int64"), self.classes)
        elif self.kind.task == outputs_lib.BINARY:
            if y.size and (np.nanmin(y) < 0 or np.nanmax(y) > 1):
                raise ValueError(f"A binary classifier's labels must lie in [0, 1] (0/1 or "
                                 f"probabilities), but y ranges over [{np.nanmin(y):g}, "
                                 f"{np.nanmax(y):g}].")

    @property
    def attack_from_logits(self):
        """`from_logits` for the attacks: a multi-class output nothing declares is read as
        logits (its argmax, and so the margins' sign, is the same for probabilities)."""
        if self.kind.from_logits is None and self.kind.task == outputs_lib.MULTICLASS:
            return True
        return self.kind.from_logits

    @property
    def single_classifier(self):
        """Whether the model is a classifier scored on its only output."""
        return self.kind.is_classification and self.output is None

    def head(self, structure):
        """The scored head of outputs or labels."""
        return head(structure, self.output, self.model)

    def fallback_loss(self, y):
        """The attack loss for a model compiled without one."""
        if isinstance(y, (dict, list, tuple)):
            raise ValueError("Compile the multi-output model with its loss (or pass loss=) to attack it.")
        return self.kind.default_loss(self.model, y)

    def score(self, outputs, y):
        """Per-example scores of one batch: bool correct, or float loss."""
        outputs = ops.convert_to_numpy(head(outputs, self.output, self.model))
        y = head(y, self.output, self.model)
        if self.kind.is_classification:
            return self.kind.predict(outputs) == self.kind.labels(y)
        return np.asarray(ops.convert_to_numpy(self._loss(y, outputs)), dtype="float64")

    def worst(self, a, b):
        """The per-example worst case of two score arrays."""
        return a & b if self.kind.is_classification else np.maximum(a, b)

    def summary(self, scores):
        return float(np.mean(scores))

    def stronger(self, a, b, tolerance):
        """Whether summary `a` is worse for the model than `b` beyond `tolerance`."""
        if self.kind.is_classification:
            return a < b - tolerance
        return a > b + tolerance * max(abs(a), abs(b), 1e-12)


def _loss_key(model, output):
    """`output` as the compiled loss indexes it (names stay names for dict losses)."""
    if isinstance(output, str) and isinstance(getattr(model, "_bidir_loss_spec", None) or getattr(model, "loss", None), (list, tuple)):
        base = getattr(model, "base_model", model)
        names = list(getattr(base, "output_names", None) or [])
        return names.index(output) if output in names else output
    return output


def scores_under_attack(model, x, y, attack, judge=None, batch_size=512, loss=None, seed=0,
                        verbose=0, epsilon=None, runners=None, rows=None):
    """Per-example scores under `attack`, worst case over its restarts.

    A PGD with `restarts=r` is run as r independent single-restart attacks and
    the worst case is taken per example (stronger than picking the restart
    with the highest loss).

    Args:
        model: the model.
        x: input arrays (a list / dict of arrays for multi-input models).
        y: labels (a dict / list for multi-output models).
        attack: an `InputPolicy`, or None for clean scores.
        judge: a `Judge` (default: decided from the first batch).
        batch_size: examples per attack batch.
        loss: optional loss to ascend instead of the attack's / model's.
        seed: seed of the random starts.
        verbose: 1 shows a progress bar.
        epsilon: run the attack at this radius instead of its own (its step
            size scales along).
        runners: optional dict caching compiled attacks between calls.
        rows: optional indices of the examples to score (a cascade's survivors).

    Returns:
        A NumPy array, one entry per example (per row): bool (classifiers)
        or the loss.
    """
    judge = judge or Judge.describe(model, x, y, batch_size=batch_size)
    if rows is not None:
        return _scores_of_rows(model, x, y, attack, judge, batch_size, loss, seed, verbose,
                               epsilon, runners, np.asarray(rows))
    runs, runner = 1, None
    if attack is not None:
        single, runs = _single_restart(attack)
        key = (id(model), repr(single), seed, repr(loss), judge.output, judge.kind.from_logits)
        runner = (runners or {}).get(key)
        if runner is None:
            fallback = None if _has_compiled_loss(model) else judge.fallback_loss(y)
            runner = AttackRunner(model, single, loss=loss, seed=seed, fallback_loss=fallback,
                                  select=judge.head, from_logits=judge.attack_from_logits,
                                  keep_misclassified=judge.single_classifier)
            if runners is not None:
                runners[key] = runner
    steps = runs * int(np.ceil(_num_examples(y) / batch_size))
    progress = keras.utils.Progbar(steps, verbose=verbose) if verbose else None
    result = None
    for _ in range(runs):
        parts = []
        for xb, yb in _batches(x, y, batch_size):
            if runner is None:
                outputs = model.predict_on_batch(xb)
            else:
                outputs = runner(
                    keras.tree.map_structure(ops.convert_to_tensor, xb),
                    keras.tree.map_structure(ops.convert_to_tensor, yb),
                    epsilon,
                )
            parts.append(judge.score(outputs, yb))
            if progress is not None:
                progress.add(1)
        run = np.concatenate(parts)
        result = run if result is None else judge.worst(result, run)
    return result


def _scores_of_rows(model, x, y, attack, judge, batch_size, loss, seed, verbose, epsilon,
                    runners, rows):
    """`scores_under_attack` on `rows` only, padded to a batch size the backend compiles once."""
    last = len(rows) % batch_size or batch_size
    padded = np.concatenate([rows, np.repeat(rows[-1:], backend.batch_bucket(last) - last)])
    take = lambda a: np.asarray(a)[padded]  # noqa: E731
    scores = scores_under_attack(model, keras.tree.map_structure(take, x),
                                 keras.tree.map_structure(take, y), attack, judge, batch_size,
                                 loss, seed, verbose, epsilon, runners)
    return scores[:len(rows)]


def correct_under_attack(model, x, y, attack, batch_size=512, loss=None, seed=0, verbose=0,
                         epsilon=None, runners=None, output=None, from_logits=None):
    """Per-example correctness of a classifier under `attack`, worst case over restarts.

    The arguments are those of `scores_under_attack`, plus `output` (the head
    of a multi-output model) and `from_logits` (when the outputs cannot tell).

    Returns:
        A boolean NumPy array, one entry per example.

    Raises:
        ValueError: for a regression model (it has no accuracy; use
            `evaluate_robustness`, which reports its loss under attack).
    """
    judge = Judge.describe(model, x, y, output, from_logits, batch_size)
    if not judge.kind.is_classification:
        raise ValueError(
            "This is a regression model (regression loss or continuous targets): it has no "
            "accuracy. Use keras_bidir.evaluate_robustness, which reports its loss under attack."
        )
    return scores_under_attack(model, x, y, attack, judge, batch_size, loss, seed, verbose,
                               epsilon, runners)


def robust_accuracy(model, x, y, attack, **kwargs):
    """Fraction of examples classified correctly under `attack` (see
    `correct_under_attack` for the arguments)."""
    return float(np.mean(correct_under_attack(model, x, y, attack, **kwargs)))


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


def _input_gradient_health(model, x, y, batch_size, loss=None):
    """Fraction of examples whose input gradient is all zero / non-finite."""
    zero = nonfinite = 0
    total = 0
    for xb, yb in _batches(x, y, batch_size):
        xb_t = keras.tree.map_structure(ops.convert_to_tensor, xb)
        yb_t = keras.tree.map_structure(ops.convert_to_tensor, yb)
        per_example = resolve_attack_loss(model, yb_t, loss)
        sites = Sites(model, xb_t, getattr(model, "perturb_names", None))
        clean, masks, _ = sites.record(model, xb_t, training=False)

        def value(tensors):
            outputs = sites.forward(model, xb_t, tensors, clean, masks, training=False)
            return ops.sum(per_example(yb_t, outputs)), None

        _, _, grads = backend.input_gradients(value, clean)
        count = _num_examples(yb)
        flat = np.concatenate(
            [ops.convert_to_numpy(g).reshape(count, -1).astype("float64") for g in grads], axis=1
        )
        finite = np.isfinite(flat).all(axis=1)
        nonfinite += int((~finite).sum())
        zero += int((finite & (np.abs(flat).max(axis=1) == 0)).sum())
        total += count
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
    output=None,
    from_logits=None,
    suite="fast",
    cascade=None,
    restarts=1,
):
    """Clean and robust accuracy (or loss, for regression) under a set of attacks.

    Two suites: `"standard"`, AutoAttack's standard version (APGD-CE, APGD-T,
    FAB-T, Square; see `standard_attacks`), the set reviewers and RobustBench
    accept and the one to report; and `"fast"` (the default: FGSM, PGD-20×2,
    APGD-CE, APGD-DLR; see `default_attacks`), a quicker check while
    developing. In a cascade (the standard suite's way) each attack runs only
    on the examples every earlier attack, and the smaller radii, left
    robust: the per-attack figures are then the robust accuracy after that
    attack, and the last one is the worst case.

    Robust accuracy per ε is the per-example worst case over all attacks (and
    over each attack's restarts). What the outputs are is decided from what
    is known for sure (see `keras_bidir.outputs.describe_outputs`): a binary
    model with a sigmoid is thresholded at 0.5, one with a logit at 0; a
    regression model (regression loss or continuous targets) is reported by
    its loss under attack, the worst case being each example's largest loss;
    when that cannot be decided it refuses and names the argument to pass.
    Gradient-masking checks (Athalye, Carlini and Wagner 2018; the flags of
    AutoAttack, Croce and Hein 2020) are run and every failure is also issued
    as a warning naming the likely cause:

    - `more_steps`: PGD with 4× the steps must not be less effective;
    - `single_vs_multi_step`: FGSM must not beat PGD;
    - `large_epsilon` (classifiers): at an ε covering the whole data range
      (or 10× the largest ε when the range is open) accuracy must fall
      towards 0;
    - `input_gradients`: input gradients must be finite and mostly non-zero;
    - `gradient_free` (classifiers, when the attacks hold a gradient-free
      one such as `policies.Square` beside gradient ones): its robust
      accuracy must not be more than 2 points below the gradient attacks'
      worst case (in a cascade: it must not break more than 2% of the
      examples the gradient attacks left robust).

    Args:
        model: a `BidirectionalModel`, its base model or any Keras model.
        data: `(x, y)` arrays, or a `tf.data.Dataset` / iterable of `(x, y)` batches.
        epsilons: list of radii.
        attacks: None for the suite's attacks, or your own
            `{name: policy_at_any_epsilon}`; each is re-scaled to every ε
            (step sizes scale along).
        norm: `"linf"` or `"l2"` for the default attacks.
        clip_min: lower end of the valid data range. Defaults to that of a
            BidirectionalModel's policy, else open.
        clip_max: upper end of the valid data range (same default).
        batch_size: examples per attack batch.
        checks: run the gradient-masking checks.
        seed: seed of the attacks' random starts.
        verbose: 1 shows a progress bar.
        output: for multi-output models, the head whose accuracy (or loss)
            is reported; the attacks ascend the total compiled loss.
        from_logits: whether a classifier's outputs are logits (True) or
            probabilities (False), when neither its loss nor its output
            layer says.
        suite: `"fast"` or `"standard"` (classifiers), when `attacks` is None.
        cascade: run each attack only on the examples still robust (default:
            True for the standard suite, else False; classifiers only).
        restarts: how many times each attack runs, with seeds `seed`,
            `seed + 1`, ...; an example is robust only if it holds under
            every run (in a cascade each run attacks the survivors of the
            runs before). A single standard-suite run varies by about ±0.5
            points with the seed on the digits models; `restarts=3` narrows
            that at up to 3× the attack cost.

    Returns:
        A `RobustnessReport`.

    Example:

    >>> report = keras_bidir.evaluate_robustness(model, (x_test, y_test),
    ...                                          epsilons=[0.1, 0.2, 0.3],
    ...                                          clip_min=0.0, clip_max=1.0)
    >>> print(report.to_markdown())
    >>> standard = keras_bidir.evaluate_robustness(model, (x_test, y_test), [0.2],
    ...                                            clip_min=0.0, clip_max=1.0,
    ...                                            suite="standard")
    >>> standard.summary()
    """
    import warnings

    x, y = _materialize(data)
    epsilons = [float(e) for e in epsilons]
    if not epsilons or any(not np.isfinite(e) or e <= 0 for e in epsilons):
        raise ValueError(f"epsilons must be a non-empty list of finite numbers > 0, got {epsilons!r}.")
    judge = Judge.describe(model, x, y, output, from_logits, batch_size)
    policy = getattr(model, "policy", None)
    if clip_min is None and clip_max is None and policy is not None:
        clip_min, clip_max = policy.clip_min, policy.clip_max
    common = {"norm": norm, "clip_min": clip_min, "clip_max": clip_max}
    attacks, suite_name = _suite_attacks(suite, attacks, max(epsilons), common, judge)
    cascade = suite_name == "standard" if cascade is None else bool(cascade)
    if cascade and not judge.kind.is_classification:
        raise ValueError("A cascade runs each attack on the examples still classified "
                         "correctly; a regression model has none: pass cascade=False.")
    total = len(epsilons) * len(attacks) + (3 if checks else 0) + 1
    progress = keras.utils.Progbar(total, verbose=verbose, unit_name="attack") if verbose else None
    runners = {}

    restarts = _check_restarts(restarts)

    def run(attack, epsilon=None, rows=None, restart=0):
        scores = np.zeros(0, bool) if rows is not None and not len(rows) else \
            scores_under_attack(model, x, y, attack, judge, batch_size, seed=seed + restart,
                                epsilon=epsilon, runners=runners, rows=rows)
        if progress is not None:
            progress.add(1)
        return scores

    clean = run(None)
    sweep = _cascade if cascade else _independent
    by_attack, held, free_check = sweep(run, attacks, sorted(epsilons), clean, judge, restarts)
    results = []
    if checks:
        results, check_scores = _masking_checks(model, x, y, judge, run, epsilons, by_attack,
                                                common, batch_size,
                                                max(0.01, 2.0 / _num_examples(y)))
        # The report is the per-example worst case over every attack this call ran.
        _fold(held, check_scores, judge, by_attack if cascade else None)
        if free_check is not None:
            results.append(free_check)
        for check in results:
            if not check.passed:
                warnings.warn(f"Gradient-masking check '{check.name}' failed: {check.message}", stacklevel=2)
    worst_case = {e: judge.summary(held[e]) for e in sorted(epsilons)}
    report = RobustnessReport(judge.summary(clean), sorted(epsilons), by_attack, worst_case,
                              results, _num_examples(y), norm, measure=judge.measure,
                              output=output, suite=suite_name, cascade=cascade,
                              restarts=restarts)
    if judge.kind.is_classification and judge.output is None:
        report.example_finder = _ExampleFinder(model, x, y, attacks, clean, held, judge, seed)
    return report


def picture_radius(model, epsilons):
    """`(ε, why)`: the radius pictures show by default, the training ε where the report has it,
    else the middle radius (the largest breaks nearly everything)."""
    policy = getattr(model, "policy", None)
    trained = getattr(policy, "epsilon", None)
    if trained is not None and any(np.isclose(trained, e) for e in epsilons):
        return min(epsilons, key=lambda e: abs(e - trained)), "the training ε"
    ordered = sorted(epsilons)
    if len(ordered) == 1:
        return ordered[0], "the only radius"
    return ordered[len(ordered) // 2], "the middle radius"


class _ExampleFinder:
    """Finds, on demand, examples the attacks flip at a radius (for `plot_examples`)."""

    def __init__(self, model, x, y, attacks, clean, held, judge, seed):
        self.model, self.x, self.y, self.attacks = model, x, y, attacks
        self.clean, self.held, self.judge, self.seed = clean, held, judge, seed

    def __call__(self, count, epsilon=None):
        from keras_bidir import gallery

        if epsilon is None:
            epsilon, why = picture_radius(self.model, list(self.held))
        else:
            matches = [e for e in self.held if np.isclose(e, epsilon)]
            if not matches:
                raise ValueError(f"The report has no radius {epsilon:g}; it has "
                                 f"{sorted(self.held)}.")
            epsilon, why = matches[0], None
        self.epsilon = epsilon
        broken = np.flatnonzero(np.asarray(self.clean, bool) & ~np.asarray(self.held[epsilon], bool))
        fallback = None if _has_compiled_loss(self.model) else self.judge.fallback_loss(self.y)
        rows = broken[:4 * count]
        parts = []
        for name, attack in self.attacks.items():
            if not rows.size or sum(len(p) for p in parts) >= count:
                break
            take = lambda a: np.asarray(a)[rows]  # noqa: E731
            found = gallery.flipped_examples(
                self.model, keras.tree.map_structure(take, self.x), take(self.y),
                _single_restart(attack)[0], self.epsilon, count, self.judge.kind, name, self.seed,
                fallback)
            parts.append(found)
            rows = np.delete(rows, found.index)
        if not parts:
            return gallery.FlippedExamples(np.zeros((0,)), np.zeros((0,)), [], [], [], "none",
                                           self.epsilon, radius_note=why)
        found = gallery.FlippedExamples.concatenate(parts)
        found.radius_note = why
        return found


def _suite_attacks(suite, attacks, epsilon, common, judge):
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


def _check_restarts(restarts):
    if isinstance(restarts, bool) or not isinstance(restarts, (int, np.integer)) or restarts < 1:
        raise ValueError(f"restarts must be an integer >= 1 (runs of every attack, seeds "
                         f"seed, seed + 1, ...), got {restarts!r}.")
    return int(restarts)


def _independent(run, attacks, epsilons, clean, judge, restarts=1):
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
        check = _gradient_free_check(epsilons, by_attack, free, gradient_worst)
    return by_attack, held, check


def _cascade(run, attacks, epsilons, clean, judge, restarts=1):
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
        check = _cascade_gradient_free_check(shares, free)
    return by_attack, held, check


CHECK_ATTACKS = "the checks' PGD"


def _fold(held, extra, judge, by_attack=None):
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


def _cascade_gradient_free_check(shares, names, margin=0.02):
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


def _gradient_free_check(epsilons, by_attack, names, gradient_worst, margin=0.02):
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


def _masking_checks(model, x, y, judge, run, epsilons, by_attack, common, batch_size, tolerance):
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
    loss = None if _has_compiled_loss(model) else judge.fallback_loss(y)
    zero, nonfinite = _input_gradient_health(model, x, y, batch_size, loss)
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


def _materialize(data):
    """`(x, y)` NumPy arrays (or structures of them) from arrays or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and not hasattr(data[0], "element_spec"):
        x, y = data
        return x, keras.tree.map_structure(np.asarray, y)
    xs, ys = [], []
    for batch in data:
        bx, by, _ = keras.utils.unpack_x_y_sample_weight(batch)
        if by is None:
            raise ValueError("evaluate_robustness needs labelled data: batches of (x, y).")
        xs.append(keras.tree.map_structure(ops.convert_to_numpy, bx))
        ys.append(keras.tree.map_structure(ops.convert_to_numpy, by))
    if not xs:
        raise ValueError("The evaluation data is empty.")
    concat = lambda *parts: np.concatenate(parts)  # noqa: E731
    return keras.tree.map_structure(concat, *xs), keras.tree.map_structure(concat, *ys)
