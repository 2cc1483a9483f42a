"""Per-example scores under one attack (worst case over its restarts), and robust accuracy."""

import keras
import numpy as np
from keras import ops

from keras_bidir import backend
from keras_bidir.evaluation.judge import Judge
from keras_bidir.evaluation.runner import AttackRunner
from keras_bidir.evaluation.runner import batch_at
from keras_bidir.evaluation.runner import has_compiled_loss
from keras_bidir.evaluation.runner import num_examples
from keras_bidir.evaluation.runner import single_restart
from keras_bidir.evaluation.spill import take_rows
from keras_bidir.evaluation.state import batch_seed


def scores_under_attack(model, x, y, attack, judge=None, batch_size=512, loss=None, seed=0,
                        verbose=0, epsilon=None, runners=None, rows=None, store=None,
                        on_batch=None):
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
        store: optional place for per-batch results (`EvaluationState.unit`):
            batches it holds are read back, not attacked again.
        on_batch: optional `on_batch(run, runs, examples_done, batch_scores, start)`
            (progress): `run` of `runs` (one per restart), the examples done in
            it, the batch's scores (worst case over this and earlier runs) and
            its first row.

    Each batch draws its random starts from its own seed (`state.batch_seed`),
    so a batch's result does not depend on which batches ran before it.

    Returns:
        A NumPy array, one entry per example (per row): bool (classifiers)
        or the loss.
    """
    judge = judge or Judge.describe(model, x, y, batch_size=batch_size)
    if rows is not None:
        return _scores_of_rows(model, x, y, attack, judge, batch_size, loss, seed, verbose,
                               epsilon, runners, np.asarray(rows), store, on_batch)
    runs, runner = 1, None
    if attack is not None:
        single, runs = single_restart(attack)
        key = (id(model), repr(single), seed, repr(loss), judge.output, judge.kind.from_logits)
        runner = (runners or {}).get(key)
        if runner is None:
            fallback = None if has_compiled_loss(model) else judge.fallback_loss(y)
            runner = AttackRunner(model, single, loss=loss, seed=seed, fallback_loss=fallback,
                                  select=judge.head, from_logits=judge.attack_from_logits,
                                  keep_misclassified=judge.single_classifier)
            if runners is not None:
                runners[key] = runner
    per_run = int(np.ceil(num_examples(y) / batch_size))
    progress = keras.utils.Progbar(runs * per_run, verbose=verbose) if verbose else None
    result = None
    for run_index in range(runs):
        parts, done, theirs = [], 0, []
        for batch in range(per_run):
            key, number = f"{run_index}/{batch}", run_index * per_run + batch
            if store is not None and not store.owns(number):  # another shard attacks it
                theirs.append((len(parts), key, number))
                parts.append(None)
                continue
            scores = None if store is None else store.get(key)
            if scores is None:  # read and attacked only now: not for stored or others' batches
                xb, yb = batch_at(x, y, batch_size, batch)
                scores = _score_batch(model, runner, judge, xb, yb, epsilon,
                                      batch_seed(seed, run_index, batch))
                if store is not None:
                    store.put(key, scores)
            parts.append(scores)
            done += len(scores)
            _report(on_batch, progress, judge, result, run_index, runs, done, batch_size, scores,
                    batch)
        for position, key, number in theirs:  # after this shard's own: they ran meanwhile
            parts[position] = store.fetch(key, number)
            done += len(parts[position])
            _report(on_batch, progress, judge, result, run_index, runs, done, batch_size,
                    parts[position], position)
        run = np.concatenate(parts)
        result = run if result is None else judge.worst(result, run)
    return result


def _report(on_batch, progress, judge, result, run, runs, done, batch_size, scores, position):
    """Progress after batch `position` of a run: `on_batch` gets its worst case so far."""
    if on_batch is not None:
        start = position * batch_size
        seen = scores if result is None else judge.worst(result[start:start + len(scores)], scores)
        on_batch(run, runs, done, seen, start)
    if progress is not None:
        progress.add(1)


def _score_batch(model, runner, judge, xb, yb, epsilon, seed):
    """One batch's scores: clean (`runner` None) or under the runner's attack, seeded by `seed`."""
    if runner is None:
        return judge.score(model.predict_on_batch(xb), yb)
    runner.reseed(seed)
    outputs = runner(keras.tree.map_structure(ops.convert_to_tensor, xb),
                     keras.tree.map_structure(ops.convert_to_tensor, yb), epsilon)
    return judge.score(outputs, yb)


def _scores_of_rows(model, x, y, attack, judge, batch_size, loss, seed, verbose, epsilon,
                    runners, rows, store=None, on_batch=None):
    """`scores_under_attack` on `rows` only, padded to a batch size the backend compiles once."""
    last = len(rows) % batch_size or batch_size
    padded = np.concatenate([rows, np.repeat(rows[-1:], backend.batch_bucket(last) - last)])
    take = lambda a: take_rows(a, padded)  # noqa: E731
    count = len(rows)

    def progress(run, runs, done, scores, start):  # the padding repeats the last row: drop it
        real = scores[:max(0, count - start)]
        on_batch(run, runs, min(done, count), real, start)

    scores = scores_under_attack(model, keras.tree.map_structure(take, x),
                                 keras.tree.map_structure(take, y), attack, judge, batch_size,
                                 loss, seed, verbose, epsilon, runners, store=store,
                                 on_batch=None if on_batch is None else progress)
    return scores[:count]


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
