"""The training and test steps per backend: the order of `keras_bidir.trainer`'s calls.

`keras_bidir.trainer` describes one step backend-neutrally; each backend's
module here orders its calls the way that backend's Keras trainer runs a step
(`data` on TensorFlow; `state, data` on JAX). It sits above the gradient
primitives of `keras_bidir.backend`, which never import the trainer.
"""

import keras

_BACKEND = keras.backend.backend()

if _BACKEND == "tensorflow":
    from keras_bidir.steps.tensorflow import test_step
    from keras_bidir.steps.tensorflow import train_step
elif _BACKEND == "jax":
    from keras_bidir.steps.jax import test_step
    from keras_bidir.steps.jax import train_step
else:  # pragma: no cover - exercised only under other backends.
    from keras_bidir.backend import check_supported

    def train_step(*args):
        check_supported()

    test_step = train_step

__all__ = ["train_step", "test_step"]
