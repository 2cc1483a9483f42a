"""The only package that knows how gradients are taken.

Everything else in keras-bidir is written in `keras.ops`. Each Keras backend
gets one module here exposing the same small set of functions:

- `value_and_gradients(fn, variables, tensors)`: one gradient computation that
  returns the value of `fn(tensors)` and its gradients with respect to both the
  variables (weights) and the tensors (inputs or activations).
- `input_gradients(fn, tensors)`: gradients with respect to tensors only
  (used by attack steps that must not touch the weights).
- `variable_gradients(fn, variables, tensors)`: gradients with respect to the
  variables only, dense (the ascent of a weight policy: SAM, AWP).
- `function(fn, jit_compile=False)`: compile a Python function into a graph.
- `accumulate(total, gradients, weight)`: running weighted sum of gradients
  (whatever sparse form the backend produces).
- `train_step(model, data)`: the training step, ordering the calls of the
  backend-neutral `keras_bidir.trainer.Step`.

and the distribution helpers (no-ops without a strategy): `distributed`,
`replica_position`, `num_replicas`, `replica_rows` (this replica's rows of a
global random draw), `replica_block` / `gather_blocks` (per-replica policy
state), `local_batch` (one replica's part of a distributed batch),
`step_logs` (step outputs Keras can reduce over workers), `all_replicas` (replicas agree on a flag), `apply_if` (an optimizer
update taken only when a flag holds, on every replica alike) and
`strategy_scope`.
"""

import keras

_BACKEND = keras.backend.backend()
SUPPORTED_BACKENDS = ("tensorflow",)


def check_supported():
    """Raises a clear error when the active Keras backend is not supported."""
    if _BACKEND not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            f"keras-bidir trains on the TensorFlow backend only for now; the active Keras "
            f"backend is {_BACKEND!r}. Set the environment variable KERAS_BACKEND=tensorflow "
            "before Python imports keras (e.g. `KERAS_BACKEND=tensorflow python train.py`). "
            "JAX support is planned."
        )

if _BACKEND == "tensorflow":
    from keras_bidir.backend.tensorflow import accumulate  # noqa: F401
    from keras_bidir.backend.tensorflow import all_replicas  # noqa: F401
    from keras_bidir.backend.tensorflow import apply_if  # noqa: F401
    from keras_bidir.backend.tensorflow import distributed  # noqa: F401
    from keras_bidir.backend.tensorflow import function  # noqa: F401
    from keras_bidir.backend.tensorflow import gather_blocks  # noqa: F401
    from keras_bidir.backend.tensorflow import input_gradients  # noqa: F401
    from keras_bidir.backend.tensorflow import local_batch  # noqa: F401
    from keras_bidir.backend.tensorflow import num_replicas  # noqa: F401
    from keras_bidir.backend.tensorflow import replica_block  # noqa: F401
    from keras_bidir.backend.tensorflow import replica_position  # noqa: F401
    from keras_bidir.backend.tensorflow import replica_rows  # noqa: F401
    from keras_bidir.backend.tensorflow import step_logs  # noqa: F401
    from keras_bidir.backend.tensorflow import strategy_scope  # noqa: F401
    from keras_bidir.backend.tensorflow import train_step  # noqa: F401
    from keras_bidir.backend.tensorflow import value_and_gradients  # noqa: F401
    from keras_bidir.backend.tensorflow import variable_gradients  # noqa: F401
else:  # pragma: no cover - exercised only under other backends.

    def _unsupported(*args, **kwargs):
        raise NotImplementedError(
            f"keras-bidir supports the TensorFlow backend only for now; the "
            f"active Keras backend is {_BACKEND!r}. Set the environment "
            "variable KERAS_BACKEND=tensorflow before importing keras."
        )

    for _name in (
        "accumulate",
        "all_replicas",
        "apply_if",
        "distributed",
        "function",
        "gather_blocks",
        "input_gradients",
        "local_batch",
        "num_replicas",
        "replica_block",
        "replica_position",
        "replica_rows",
        "step_logs",
        "strategy_scope",
        "train_step",
        "value_and_gradients",
        "variable_gradients",
    ):
        globals()[_name] = _unsupported
