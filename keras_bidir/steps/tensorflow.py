"""The TensorFlow step: `data` in, logs out; replays in a graph loop."""

import keras
import tensorflow as tf

from keras_bidir.trainer import run_step


def train_step(model, data):
    """The TensorFlow training step: `keras_bidir.trainer.run_step` with a graph replay loop."""
    return run_step(model, data, _replay)


def _replay(step, adversarial, state, finite, gradients):
    """Weight updates 2..m of a replay policy."""
    total = step.collect(None, gradients)
    if tf.distribute.has_strategy():
        # The weight update synchronizes the replicas, which a graph loop may
        # not contain: unroll the replays.
        for _ in range(1, step.policy.replays):
            adversarial, state, ok, grads, _ = step.weight_update(adversarial, state)
            finite, total = tf.logical_and(finite, ok), step.collect(total, grads)
    elif step.policy.replays > 1:
        # A graph loop, so that the traced graph does not grow with the replays.
        def body(_, carry):
            adv, st, finite_so_far, acc = carry
            adv, st, ok, grads, _ = step.weight_update(list(adv), list(st))
            return adv, st, tf.logical_and(finite_so_far, ok), step.collect(list(acc), grads)

        _, state, finite, total = keras.ops.fori_loop(
            1, step.policy.replays, body, (adversarial, state, finite, total))
    step.apply_collected(total, finite)
    return list(state), finite


def test_step(model, data, run):
    """The TensorFlow test step: `run()`, the backend-neutral test step."""
    del model, data
    return run()
