"""The JAX step: `(state, data)` in, `(logs, state)` out, as Keras' JAX trainer."""

from jax import numpy as jnp

from keras_bidir.backend import jax as jax_backend
from keras_bidir.trainer import run_step


def train_step(model, state, data):
    """The JAX training step: `(logs, state)` from `(state, data)`, as Keras' JAX trainer.

    `keras_bidir.trainer.run_step`, as on TensorFlow, inside the state's scope;
    replay policies' extra updates run in a `fori_loop` that threads the state.
    """
    return jax_backend.stateful(model, state, lambda: run_step(model, data, _replay))


def _replay(step, adversarial, state, finite, gradients):
    """Weight updates 2..m of a replay policy."""
    total = step.collect(None, gradients)
    if step.policy.replays > 1:
        def body(_, carry):
            adv, st, finite_so_far, acc = carry
            adv, st, ok, grads, _ = step.weight_update(list(adv), list(st))
            return adv, st, jnp.logical_and(finite_so_far, ok), step.collect(list(acc), grads)

        _, state, finite, total = jax_backend.fori_loop(
            1, step.policy.replays, body, (adversarial, state, finite, total))
    step.apply_collected(total, finite)
    return list(state), finite


def test_step(model, state, data, run):
    """The JAX test step: `run()` (the backend-neutral test step) with the model's state."""
    return jax_backend.stateful(model, state, run, optimizer=False)
