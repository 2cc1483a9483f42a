"""The only package that knows how gradients are taken.

Everything else in keras-bidir is written in `keras.ops`. Each Keras backend
gets one module here exposing the same small set of functions:

- `value_and_gradients(fn, variables, tensors)`: one gradient computation that
  returns the value of `fn(tensors)` and its gradients with respect to both the
  variables (weights) and the tensors (inputs or activations).
- `input_gradients(fn, tensors)`: gradients with respect to tensors only
  (used by attack steps that must not touch the weights).
- `function(fn, jit_compile=False)`: compile a Python function into a graph.
- `accumulate(total, gradients, weight)`: running weighted sum of gradients
  (whatever sparse form the backend produces).
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from keras_bidir.backend.tensorflow import accumulate  # noqa: F401
    from keras_bidir.backend.tensorflow import function  # noqa: F401
    from keras_bidir.backend.tensorflow import input_gradients  # noqa: F401
    from keras_bidir.backend.tensorflow import value_and_gradients  # noqa: F401
else:  # pragma: no cover - exercised only under other backends.

    def _unsupported(*args, **kwargs):
        raise NotImplementedError(
            f"keras-bidir supports the TensorFlow backend only for now; the "
            f"active Keras backend is {_BACKEND!r}. Set the environment "
            "variable KERAS_BACKEND=tensorflow before importing keras."
        )

    accumulate = function = input_gradients = value_and_gradients = _unsupported
