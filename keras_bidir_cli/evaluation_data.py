"""The data `keras-bidir evaluate --data` reads: a bundled name, an `.npz` file, or `module:function`.

Each source gives the test examples as `(x, y)` (arrays, or a dataset of `(x, y)`
batches), and what is known of their range (bundled sets are scaled to [0, 1]).
"""

import importlib
import os
import sys

import numpy as np

BUNDLED = ("digits", "mnist_5k", "mnist", "fashion_mnist", "cifar10")
_NPZ_KEYS = (("x", "y"), ("x_test", "y_test"))


class DataError(ValueError):
    """Data the command cannot read; its message says what to pass instead."""


def describe_sources():
    return (f"a bundled name ({', '.join(BUNDLED)}), an .npz file with arrays x and y "
            "(or x_test and y_test), or module:function returning (x, y) or a dataset of "
            "(x, y) batches")


def load(spec, limit=None):
    """`(data, known_range)`: the test data `spec` names, and its `(min, max)` if known.

    Args:
        spec: see `describe_sources`.
        limit: keep only the first `limit` examples (arrays only).
    """
    if spec in BUNDLED:
        from keras_bidir import datasets

        _, data = datasets.load(spec)
        known = (0.0, 1.0)
    elif spec.endswith(".npz"):
        data, known = _from_npz(spec), None
    elif ":" in spec:
        data, known = _from_function(spec), None
    else:
        raise DataError(f"--data {spec!r} is not {describe_sources()}.")
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
        if limit:
            x, y = x[:limit], y[:limit]
        data = (x, y)
    elif limit:
        raise DataError("--limit applies to arrays; take the examples in your function instead.")
    return data, known


def _from_npz(path):
    if not os.path.exists(path):
        raise DataError(f"--data: no such file: {path}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DataError(f"--data: {path} is not a NumPy .npz archive ({error}).") from None
    with archive:
        for x_key, y_key in _NPZ_KEYS:
            if x_key in archive.files and y_key in archive.files:
                x, y = archive[x_key], archive[y_key]
                break
        else:
            raise DataError(f"--data: {path} holds {sorted(archive.files)}; it needs arrays "
                            "named x and y (or x_test and y_test): np.savez(path, x=x, y=y).")
    if len(x) != len(y):
        raise DataError(f"--data: {path} has {len(x)} inputs but {len(y)} labels.")
    if not len(x):
        raise DataError(f"--data: {path} holds no examples.")
    return x, y


def _from_function(spec):
    module_name, _, function_name = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a module beside the user, as `python -m` finds it
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise DataError(f"--data: cannot import {module_name!r} ({error}).") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise DataError(f"--data: {module_name} has no function {function_name!r}.")
    data = function()
    if isinstance(data, tuple) and len(data) == 2 and hasattr(data[0], "__len__") and not hasattr(
            data[0], "element_spec"):
        return data
    if hasattr(data, "__iter__"):
        return data  # a tf.data.Dataset, PyDataset or iterable of (x, y) batches
    raise DataError(f"--data: {spec}() returned {type(data).__name__}; it must return (x, y) "
                    "arrays or a dataset of (x, y) batches.")


def check_shapes(model, data):
    """One clear line when the examples do not fit the model's inputs, instead of a traceback
    (`keras_bidir.data_utils.validate_arrays`, which `fit` uses too)."""
    from keras_bidir import data_utils

    if isinstance(data, tuple) and len(data) == 2:
        try:
            data_utils.validate_arrays(data[0], getattr(model, "base_model", model))
        except ValueError as error:
            raise DataError(str(error)) from None
