"""`evaluate_robustness`: the suites, the robustness loop, the checks and the report in one call."""

import itertools
import warnings

import keras
import numpy as np

from keras_bidir.evaluation.cascade import fold
from keras_bidir.evaluation.cascade import run_cascade
from keras_bidir.evaluation.cascade import run_independent
from keras_bidir.evaluation.checks import masking_checks
from keras_bidir.evaluation.judge import Judge
from keras_bidir.evaluation.pictures import ExampleFinder
from keras_bidir.evaluation.report import RobustnessReport
from keras_bidir.evaluation.runner import materialize
from keras_bidir.evaluation.runner import num_examples
from keras_bidir.evaluation.scores import scores_under_attack
from keras_bidir.evaluation.shards import ShardedState
from keras_bidir.evaluation.shards import resolve_shard
from keras_bidir.evaluation.state import EvaluationState
from keras_bidir.evaluation.state import fingerprint
from keras_bidir.evaluation.suites import check_restarts
from keras_bidir.evaluation.suites import suite_attacks


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
    state=None,
    shard=None,
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
        data: `(x, y)` arrays, or a `tf.data.Dataset`, `keras.utils.PyDataset`
            or generator of `(x, y)` batches: read once, its inputs kept on disk
            and read back a batch at a time (memory does not grow with the
            number of examples).
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
        verbose: 1 shows a progress bar per attack run: examples done, the
            share still robust (classifiers) and the time left.
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
        state: optional path of a file that keeps every batch's per-example
            results as they finish. Started again with the same arguments
            after a kill, the evaluation resumes where it stopped (losing at
            most the batch in flight) and gives the report an uninterrupted
            run gives; a file from another evaluation is refused.
        shard: share the evaluation among processes (one per device, or per
            host): this process's `evaluation.Shard(index, count)`, `"i/n"`,
            or `"auto"` (from `jax.distributed` or TF_CONFIG). Shard i
            attacks every n-th batch and reads the others' results from their
            state files (`state` + `.<i>-of-<n>`, on storage all shards see);
            each shard returns the full report, the per-example results those
            of one process. Needs `state`.

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

    x, y = materialize(data, on_disk=True)
    epsilons = [float(e) for e in epsilons]
    if not epsilons or any(not np.isfinite(e) or e <= 0 for e in epsilons):
        raise ValueError(f"epsilons must be a non-empty list of finite numbers > 0, got {epsilons!r}.")
    judge = Judge.describe(model, x, y, output, from_logits, batch_size)
    policy = getattr(model, "policy", None)
    if clip_min is None and clip_max is None and policy is not None:
        clip_min, clip_max = policy.clip_min, policy.clip_max
    common = {"norm": norm, "clip_min": clip_min, "clip_max": clip_max}
    attacks, suite_name = suite_attacks(suite, attacks, max(epsilons), common, judge)
    cascade = suite_name == "standard" if cascade is None else bool(cascade)
    if cascade and not judge.kind.is_classification:
        raise ValueError("A cascade runs each attack on the examples still classified "
                         "correctly; a regression model has none: pass cascade=False.")
    restarts = check_restarts(restarts)
    shard = resolve_shard(shard)
    if shard is not None and state is None:
        raise ValueError("A sharded evaluation exchanges its results through state files: "
                         "pass state=<a path every shard sees> (a local disk for processes "
                         "on one machine, a shared file system across hosts).")
    store = None if state is None else _open_state(
        state, shard, model, x, y, attacks, sorted(epsilons), suite=suite_name,
        cascade=cascade, checks=bool(checks), seed=seed, restarts=restarts,
        batch_size=batch_size, output=output, norm=norm)
    try:
        names = {id(a): n for n, a in attacks.items()}
        runners, units = {}, itertools.count()

        def run(attack, epsilon=None, rows=None, restart=0):
            """One attack run (or the clean pass), unit after unit: their order is fixed."""
            unit = next(units)
            count = num_examples(y) if rows is None else len(rows)
            if rows is not None and not count:
                return np.zeros(0, bool)
            label = "clean" if attack is None else names.get(id(attack), type(attack).__name__)
            on_batch = _progress(label, epsilon, restart, count, judge) if verbose else None
            return scores_under_attack(
                model, x, y, attack, judge, batch_size, seed=seed + restart, epsilon=epsilon,
                runners=runners, rows=rows, on_batch=on_batch,
                store=None if store is None else store.unit(unit))

        clean = run(None)
        sweep = run_cascade if cascade else run_independent
        by_attack, held, free_check = sweep(run, attacks, sorted(epsilons), clean, judge, restarts)
        results = []
        if checks:
            results, check_scores = masking_checks(model, x, y, judge, run, epsilons, by_attack,
                                                    common, batch_size,
                                                    max(0.01, 2.0 / num_examples(y)))
            # The report is the per-example worst case over every attack this call ran.
            fold(held, check_scores, judge, by_attack if cascade else None)
            if free_check is not None:
                results.append(free_check)
            for check in results:
                if not check.passed:
                    warnings.warn(f"Gradient-masking check '{check.name}' failed: {check.message}", stacklevel=2)
        worst_case = {e: judge.summary(held[e]) for e in sorted(epsilons)}
        report = RobustnessReport(judge.summary(clean), sorted(epsilons), by_attack, worst_case,
                                  results, num_examples(y), norm, measure=judge.measure,
                                  output=output, suite=suite_name, cascade=cascade,
                                  restarts=restarts)
        if judge.kind.is_classification and judge.output is None:
            report.example_finder = ExampleFinder(model, x, y, attacks, clean, held, judge, seed)
        report.resumed_batches = 0 if store is None else store.reused
        if verbose and report.resumed_batches:
            print(f"Resumed from {store.path}: {store.reused} batch(es) read back, not attacked again.")
        return report
    except BaseException as error:
        if store is not None:
            store.fail(f"{type(error).__name__}: {error}")  # the other shards stop too
        raise


def _open_state(path, shard, model, x, y, attacks, epsilons, **settings):
    """The `EvaluationState` at `path` for this evaluation (its fingerprint: weights, data,
    settings), or this shard's `ShardedState`."""
    settings |= {"epsilons": epsilons, "attacks": {n: a.get_config() for n, a in attacks.items()}}
    description = {"examples": num_examples(y), "epsilons": epsilons, "suite": settings["suite"],
                   "attacks": list(attacks), "model": model.name}
    digest = fingerprint(model, x, y, settings)
    if shard is None:
        return EvaluationState(path, digest, description)
    return ShardedState(path, digest, description, shard)


def _progress(label, epsilon, restart, count, judge):
    """`on_batch` for one attack run: a Keras progress bar of examples, robust so far, ETA.

    An attack with restarts runs once per restart: the bar counts `runs × count` examples
    and "robust" is the worst case so far over the runs, among the current run's examples.
    """
    title = label if epsilon is None else f"{label} at ε={epsilon:g}"
    print(title + (f" (run {restart + 1})" if restart else ""))
    bar, held = None, {"run": None, "robust": 0.0, "seen": 0}

    def on_batch(run, runs, done, scores, start):
        nonlocal bar
        if bar is None:
            bar = keras.utils.Progbar(runs * count, unit_name="example",
                                      stateful_metrics=["robust"])
        if run != held["run"]:
            held.update(run=run, robust=0.0, seen=0)
        if judge.kind.is_classification:
            held["robust"] += float(np.sum(scores))
            held["seen"] += len(scores)
            bar.update(run * count + done, values=[("robust", held["robust"] / max(held["seen"], 1))])
        else:
            bar.update(run * count + done)

    return on_batch
