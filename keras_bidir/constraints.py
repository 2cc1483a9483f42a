"""Perturbation geometry in pure `keras.ops`: norms, ε-ball projection, clipping.

Every function works per example: axis 0 is the batch axis and the norm is
taken over all remaining axes.
"""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_bidir import backend

NORMS = ("linf", "l2")
_TINY = 1e-12


def standardize_norm(norm):
    """Returns `"linf"` or `"l2"` for the accepted spellings of a norm.

    Args:
        norm: `"linf"`, `"inf"`, `math.inf`, `numpy.inf`, `"l2"` or `2`.

    Returns:
        `"linf"` or `"l2"`.
    """
    if isinstance(norm, str):
        key = norm.lower().replace("_", "").replace("-", "")
        if key in ("linf", "inf", "linfinity"):
            return "linf"
        if key in ("l2", "2"):
            return "l2"
    elif isinstance(norm, numbers.Real) and not isinstance(norm, (bool, np.bool_)):
        if math.isinf(norm) and norm > 0:
            return "linf"
        if norm == 2:
            return "l2"
    raise ValueError(
        f"Unsupported norm {norm!r}. Use 'linf' (or numpy.inf) for an L∞ ball "
        "or 'l2' (or 2) for an L2 ball."
    )


def as_dtype(value, dtype):
    """`value` as a tensor of `dtype`; Python numbers are converted directly in
    that dtype (not through float32, which would round ε for float64 data)."""
    if isinstance(value, (int, float)):
        return ops.convert_to_tensor(value, dtype=dtype)
    return ops.cast(value, dtype)


def _reduce_axes(x):
    return tuple(range(1, len(x.shape)))


def _expand_per_example(values, like):
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


def per_example_norm(x, norm):
    """Per-example norm of `x` over all non-batch axes, shape `(batch,)`."""
    norm = standardize_norm(norm)
    axes = _reduce_axes(x)
    if not axes:
        return ops.abs(x)
    if norm == "linf":
        return ops.max(ops.abs(x), axis=axes)
    return ops.sqrt(ops.sum(ops.square(x), axis=axes))


def project(delta, epsilon, norm):
    """Projects each example's perturbation onto the ε-ball of `norm`."""
    norm = standardize_norm(norm)
    epsilon = as_dtype(epsilon, delta.dtype)
    if norm == "linf":
        return ops.clip(delta, -epsilon, epsilon)
    length = per_example_norm(delta, "l2")
    factor = ops.minimum(1.0, epsilon / ops.maximum(length, _TINY))
    return delta * ops.cast(_expand_per_example(factor, delta), delta.dtype)


def ascent_direction(gradient, norm):
    """The steepest-ascent unit step for `norm`: sign(g) for L∞, g/‖g‖₂ for L2."""
    norm = standardize_norm(norm)
    if norm == "linf":
        return ops.sign(gradient)
    # Normalise in at least float32 (float16 squares of small gradients underflow)
    # and in float64 for float64 inputs, so a unit step has the inputs' precision.
    wide = "float64" if keras.backend.standardize_dtype(gradient.dtype) == "float64" else "float32"
    g = ops.cast(gradient, wide)
    length = per_example_norm(g, "l2")
    unit = g / _expand_per_example(ops.maximum(length, _TINY), g)
    return ops.cast(unit, gradient.dtype)


def random_in_ball(shape, epsilon, norm, dtype, seed):
    """Samples perturbations uniformly from the ε-ball of `norm`.

    Args:
        shape: shape of the perturbation, batch axis first.
        epsilon: radius (scalar or scalar tensor).
        norm: `"linf"` or `"l2"`.
        dtype: float dtype of the result.
        seed: a `keras.random.SeedGenerator` or an integer.

    Returns:
        A tensor of `shape` whose rows lie inside the ball. Under
        `tf.distribute` these are this replica's rows of one draw for the
        global batch, as single-device training would draw them.
    """
    norm = standardize_norm(norm)
    epsilon = ops.cast(epsilon, "float32")
    return backend.replica_rows(lambda s: _random_in_ball(s, epsilon, norm, dtype, seed), shape)


def _random_in_ball(shape, epsilon, norm, dtype, seed):
    if norm == "linf":
        sample = keras.random.uniform(shape, -1.0, 1.0, seed=seed) * epsilon
        return ops.cast(sample, dtype)
    # Uniform in the L2 ball: a Gaussian direction, radius ε·u^(1/d).
    direction = keras.random.normal(shape, seed=seed)
    direction = direction / _expand_per_example(
        ops.maximum(per_example_norm(direction, "l2"), _TINY), direction
    )
    dims = 1
    for size in shape[1:]:
        dims *= size
    radius = keras.random.uniform((shape[0],), seed=seed) ** (1.0 / dims)
    sample = direction * _expand_per_example(radius * epsilon, direction)
    return ops.cast(sample, dtype)


def clip_to_range(x, clip_min=None, clip_max=None):
    """Clips `x` to the data range `[clip_min, clip_max]`; `None` leaves a side open."""
    if clip_min is None and clip_max is None:
        return x
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ops.clip(x, as_dtype(float(low), x.dtype), as_dtype(float(high), x.dtype))


def perturbed(x, delta, epsilon, norm, clip_min=None, clip_max=None):
    """Returns `x + delta` with delta projected onto the ball and the data range.

    Clipping to the data range moves each coordinate towards `x` (when `x` is
    itself inside the range), so the result stays inside the ε-ball.
    """
    delta = project(delta, epsilon, norm)
    return clip_to_range(x + delta, clip_min, clip_max)
