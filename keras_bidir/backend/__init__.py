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
- `function(fn, jit_compile=False, state=None)`: compile a Python function (on
  JAX `state()` lists the variables it reads and writes).
- `fori_loop(lower, upper, body, init)`: a graph loop whose body may assign
  variables.
- `accumulate(total, gradients, weight)`: running weighted sum of gradients
  (whatever sparse form the backend produces).
- `gather_rows(variable, index)` / `scatter_rows(variable, index, rows)`: read and
  write the batch's rows of a per-example memory, at the batch's cost (in place).
- `sync_state(model)` writes a running JAX fit's state back into the
  variables (callbacks that read or set them). The steps that order the
  trainer's calls per backend sit above this package, in `keras_bidir.steps`:
  these primitives never import the trainer.

and the distribution helpers (no-ops without a strategy): `distributed`,
`replica_position`, `num_replicas`, `replica_rows` (this replica's rows of a
global random draw), `replica_block` / `gather_blocks` (per-replica policy
state), `local_batch` (one replica's part of a distributed batch),
`step_logs` (step outputs Keras can reduce over workers), `all_replicas` (replicas agree on a flag), `apply_if` (an optimizer
update taken only when a flag holds, on every replica alike) and
`strategy_scope`; `is_symbolic(tensor)` (traced: its values cannot be read).
"""

import keras

_BACKEND = keras.backend.backend()
SUPPORTED_BACKENDS = ("tensorflow", "jax")
_NAMES = (
    "accelerators",
    "framework",
    "peak_memory_mib",
    "reset_peak_memory",
    "accumulate",
    "all_replicas",
    "apply_if",
    "apply_loss_scaled",
    "batch_bucket",
    "distributed",
    "fit_guard",
    "fori_loop",
    "function",
    "gather_rows",
    "scatter_rows",
    "gather_blocks",
    "input_gradients",
    "is_symbolic",
    "local_batch",
    "num_replicas",
    "replica_block",
    "replica_position",
    "replica_rows",
    "step_logs",
    "strategy_scope",
    "switch",
    "sync_state",
    "value_and_gradients",
    "variable_gradients",
)


def check_supported():
    """Raises a clear error when the active Keras backend is not supported."""
    if _BACKEND not in SUPPORTED_BACKENDS:
        raise RuntimeError(
            f"keras-bidir trains on the TensorFlow and JAX backends; the active Keras backend "
            f"is {_BACKEND!r}. Set the environment variable KERAS_BACKEND=jax (or tensorflow) "
            "before Python imports keras (e.g. `KERAS_BACKEND=jax python train.py`). PyTorch "
            "support is planned: docs/design-decisions.md, 'Backends'."
        )


if _BACKEND == "tensorflow":
    from keras_bidir.backend import tensorflow as _module
elif _BACKEND == "jax":
    from keras_bidir.backend import jax as _module
else:  # pragma: no cover - exercised only under other backends.
    _module = None

for _name in _NAMES:
    if _module is not None:
        globals()[_name] = getattr(_module, _name)
    else:  # pragma: no cover

        def _unsupported(*args, **kwargs):
            check_supported()

        globals()[_name] = _unsupported
