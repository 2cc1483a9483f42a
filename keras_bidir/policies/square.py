"""Square Attack: a query-efficient, gradient-free attack (Andriushchenko et al. 2020)."""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import losses as losses_lib
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.gradient import _BallPolicy

#: The reference schedule of the window's share of the image: `p_init` is halved after
#: these iterations of a 10,000-query run (rescaled to other budgets).
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def window_fraction(p_init, iteration, queries):
    """The fraction of the input a window covers at `iteration` (a tensor or int)."""
    scaled = ops.cast(iteration, "float32") * (10000.0 / float(queries))
    halvings = sum(ops.cast(scaled > mark, "float32") for mark in _HALVINGS)
    return p_init * ops.power(0.5, halvings)


def _as_image(shape):
    """`(height, width, channels)` an input of `shape` (batch axis excluded) is searched as."""
    if len(shape) == 3:
        return tuple(int(d) for d in shape)
    size = 1
    for d in shape:
        size *= int(d)
    return (size, 1, 1)  # vectors and sequences: windows are runs of coordinates


@keras.saving.register_keras_serializable(package="keras_bidir")
class Square(_BallPolicy):
    """Square Attack (L∞): random square updates at the ε-ball's corners, no gradients.

    Starts from vertical stripes of ±ε; each query draws, for every example
    not yet misclassified, a square window at a random position and sets it
    to ±ε (one random sign per channel), keeping the change only if the
    margin loss max_{k≠y} z_k − z_y rises. The window covers a `p_init`
    share of the input at first and shrinks on the paper's schedule. Because
    it never reads a gradient, it finds adversarial examples that gradient
    masking hides from PGD and APGD: the gradient-free check of
    `evaluate_robustness` compares the two.

    Images `(batch, height, width, channels)` get square windows; other
    inputs are searched as one long column (windows are runs of coordinates).
    Only L∞ is implemented; the L2 version is not.

    Reference: Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a
    query-efficient black-box adversarial attack via random search", ECCV 2020.

    Args:
        epsilon: radius of the L∞ ball.
        queries: model evaluations per example (AutoAttack uses 5000).
        p_init: the initial share of the input a window covers (AutoAttack: 0.8).
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None) and `seed`.

    Example:

    >>> attack = keras_bidir.policies.Square(0.2, queries=1000, clip_min=0.0, clip_max=1.0)
    >>> x_adv = attack.perturb(model, x, y)
    """

    requires_labels = True
    uses_gradients = False

    def __init__(self, epsilon, queries=5000, p_init=0.8, norm="linf", **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("Square ascends the margin loss; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        if self.norm != "linf":
            raise ValueError("Square is implemented for the L∞ norm only (norm='linf').")
        self.queries = check_count("queries", queries, minimum=2)
        self.p_init = check_positive("p_init", p_init)
        if self.p_init > 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}.")

    def attack_loss(self):
        return losses_lib.margin_loss

    def _signs(self, context, shape, dtype):
        draw = lambda rows: ops.sign(keras.random.uniform(rows, -1.0, 1.0, seed=context.seed))  # noqa: E731
        return ops.cast(backend.replica_rows(draw, shape), dtype)

    def generate(self, context, inputs, state):
        if len(inputs) != 1:
            raise ValueError("Square searches one input tensor; this model is perturbed at "
                             f"{len(inputs)} sites. Use perturb=[<input name>].")
        x, clip = inputs[0], context.clip(1)[0]
        epsilon = ops.cast(self.epsilon * context.scale, x.dtype)
        height, width, channels = _as_image(x.shape[1:])
        batch = ops.shape(x)[0]
        image = ops.reshape(x, (batch, height, width, channels))
        stripes = epsilon * self._signs(context, (batch, 1, width, channels), x.dtype)
        best = self._clip(image + stripes, clip)
        best_loss = ops.cast(context.loss([ops.reshape(best, ops.shape(x))]), "float32")
        rows = ops.reshape(ops.arange(height), (1, height, 1, 1))
        columns = ops.reshape(ops.arange(width), (1, 1, width, 1))

        def body(k, carry):
            best, best_loss = carry
            fraction = window_fraction(self.p_init, k, self.queries)
            if width == 1:  # a run of `side` coordinates covering the fraction
                side = ops.clip(ops.cast(ops.round(fraction * height), "int32"), 1, height)
                top = self._positions(context, batch, height - side + 1)
                window = (rows >= top) & (rows < top + side) & (columns >= 0)
            else:  # a square of side √(fraction · height · width)
                side = ops.cast(ops.round(ops.sqrt(fraction * height * width)), "int32")
                side = ops.clip(side, 1, min(height, width))
                top = self._positions(context, batch, height - side + 1)
                left = self._positions(context, batch, width - side + 1)
                window = ((rows >= top) & (rows < top + side)
                          & (columns >= left) & (columns < left + side))
            corner = epsilon * self._signs(context, (batch, 1, 1, channels), x.dtype)
            candidate = self._clip(ops.where(window, image + corner, best), clip)
            loss = ops.cast(context.loss([ops.reshape(candidate, ops.shape(x))]), "float32")
            # Only examples still classified correctly search on; keep strict improvements.
            better = (loss > best_loss) & (best_loss <= 0.0)
            best = ops.where(ops.reshape(better, (-1, 1, 1, 1)), candidate, best)
            return best, ops.where(better, loss, best_loss)

        best, _ = backend.fori_loop(1, self.queries, body, (best, best_loss))
        return [ops.reshape(best, ops.shape(x))], state

    def _positions(self, context, batch, count):
        """`(batch, 1, 1, 1)` uniform integers in [0, count)."""
        draw = lambda rows: keras.random.uniform(rows, 0.0, 1.0, seed=context.seed)  # noqa: E731
        u = backend.replica_rows(draw, (batch, 1, 1, 1))
        return ops.minimum(ops.cast(u * ops.cast(count, "float32"), "int32"), count - 1)

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"queries": self.queries, "p_init": self.p_init, **config}
