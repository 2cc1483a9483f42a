"""Square Attack: a query-efficient, gradient-free attack (Andriushchenko et al. 2020)."""

import keras
import numpy as np
from keras import ops

from keras_bidir import backend
from keras_bidir import losses as losses_lib
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.base import single_site
from keras_bidir.policies.base import BallPolicy

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
class Square(BallPolicy):
    """Square Attack: random square updates, no gradients (L∞ and L2).

    L∞: starts from vertical stripes of ±ε; each query draws, for every
    example not yet misclassified, a square window at a random position and
    sets it to ±ε (one random sign per channel). L2: starts from tiles of
    a pseudo-Gaussian pattern scaled to norm ε; each query moves the norm of
    a second random window into the first, redrawn as the pattern (+ the
    window's old content), and rescales the whole perturbation to norm ε.
    Either way the change is kept only if the margin loss
    max_{k≠y} z_k − z_y rises. The window covers a `p_init`
    share of the input at first and shrinks on the paper's schedule. Because
    it never reads a gradient, it finds adversarial examples that gradient
    masking hides from PGD and APGD: the gradient-free check of
    `evaluate_robustness` compares the two.

    Images `(batch, height, width, channels)` get square windows; other
    inputs are searched as one long column (windows are runs of coordinates).

    Reference: Andriushchenko, Croce, Flammarion and Hein, "Square Attack: a
    query-efficient black-box adversarial attack via random search", ECCV 2020.

    Args:
        epsilon: radius of the ball.
        queries: model evaluations per example (AutoAttack uses 5000).
        p_init: the initial share of the input a window covers (AutoAttack: 0.8).
        norm: `"linf"` or `"l2"`.
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
        self.queries = check_count("queries", queries, minimum=2)
        self.p_init = check_positive("p_init", p_init)
        if self.p_init > 1:
            raise ValueError(f"p_init must lie in (0, 1], got {p_init!r}.")

    def attack_loss(self):
        return losses_lib.margin_loss

    def generate(self, context, inputs, state):
        x, clip = single_site(self, context, inputs)
        epsilon = ops.cast(self.epsilon * context.scale, x.dtype)
        height, width, channels = _as_image(x.shape[1:])
        image = ops.reshape(x, (ops.shape(x)[0], height, width, channels))
        search = _SearchL2(self, context, image, epsilon, clip) if self.norm == "l2" else \
            _SearchLinf(self, context, image, epsilon, clip)
        as_input = lambda point: [ops.reshape(point, ops.shape(x))]  # noqa: E731
        best = search.start()
        best_loss = ops.cast(context.loss(as_input(best)), "float32")

        def body(k, carry):
            best, best_loss = carry
            candidate = search.candidate(k, best)
            loss = ops.cast(context.loss(as_input(candidate)), "float32")
            # Only examples still classified correctly search on; keep strict improvements.
            better = (loss > best_loss) & (best_loss <= 0.0)
            best = ops.where(ops.reshape(better, (-1, 1, 1, 1)), candidate, best)
            return best, ops.where(better, loss, best_loss)

        best, _ = backend.fori_loop(1, self.queries, body, (best, best_loss))
        return as_input(best), state

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"queries": self.queries, "p_init": self.p_init, **config}


class _Search:
    """What one Square query changes: shared randomness and windows."""

    def __init__(self, attack, context, image, epsilon, clip):
        self.attack, self.context, self.image = attack, context, image
        self.epsilon, self.clip = epsilon, clip
        self.batch = ops.shape(image)[0]
        self.height, self.width, self.channels = (int(d) for d in image.shape[1:])
        self.rows = ops.reshape(ops.arange(self.height), (1, self.height, 1, 1))
        self.columns = ops.reshape(ops.arange(self.width), (1, 1, self.width, 1))

    def signs(self, shape):
        """±1 per entry of `shape`, in the input's dtype."""
        seed = self.context.seed
        draw = lambda rows: ops.sign(keras.random.uniform(rows, -1.0, 1.0, seed=seed))  # noqa: E731
        return ops.cast(backend.replica_rows(draw, shape), self.image.dtype)

    def positions(self, count):
        """`(batch, 1, 1, 1)` uniform integers in [0, count)."""
        seed = self.context.seed
        draw = lambda rows: keras.random.uniform(rows, 0.0, 1.0, seed=seed)  # noqa: E731
        u = backend.replica_rows(draw, (self.batch, 1, 1, 1))
        return ops.minimum(ops.cast(u * ops.cast(count, "float32"), "int32"), count - 1)

    def window(self, side):
        """A random window of `side` (a run of coordinates for vectors): mask and corner."""
        top = self.positions(self.height - side + 1)
        if self.width == 1:
            return (self.rows >= top) & (self.rows < top + side) & (self.columns >= 0), top, 0
        left = self.positions(self.width - side + 1)
        mask = ((self.rows >= top) & (self.rows < top + side)
                & (self.columns >= left) & (self.columns < left + side))
        return mask, top, left

    def fraction(self, k):
        return window_fraction(self.attack.p_init, k, self.attack.queries)


class _SearchLinf(_Search):
    """L∞: windows set to a corner of the ε-box."""

    def start(self):
        stripes = self.epsilon * self.signs((self.batch, 1, self.width, self.channels))
        return self.attack._clip(self.image + stripes, self.clip)

    def candidate(self, k, best):
        fraction = self.fraction(k)
        if self.width == 1:  # a run of coordinates covering the fraction
            side = ops.clip(ops.cast(ops.round(fraction * self.height), "int32"), 1, self.height)
        else:  # a square of side √(fraction · height · width)
            side = ops.cast(ops.round(ops.sqrt(fraction * self.height * self.width)), "int32")
            side = ops.clip(side, 1, min(self.height, self.width))
        window, _, _ = self.window(side)
        corner = self.epsilon * self.signs((self.batch, 1, 1, self.channels))
        return self.attack._clip(ops.where(window, self.image + corner, best), self.clip)


def _bumps(rows, columns):
    """Nested rectangles weighted 1/(r+1)² around the centre, unit norm (the paper's η)."""
    pattern = np.zeros((rows, columns))
    centre_r, centre_c = rows // 2, columns // 2
    for r in range(max(rows, columns) // 2 + 1):
        pattern[max(centre_r - r, 0):centre_r + r + 1, max(centre_c - r, 0):centre_c + r + 1] \
            += 1.0 / (r + 1) ** 2
    return pattern / max(np.linalg.norm(pattern), 1e-12)


def pseudo_gaussian(rows, columns):
    """The L2 update's pattern: bumps of opposite sign in the two halves, unit norm."""
    pattern = np.zeros((rows, columns))
    half = rows // 2
    if half:
        pattern[:half] = _bumps(half, columns)
    pattern[half:] = -_bumps(rows - half, columns)
    return pattern / np.linalg.norm(pattern)


class _SearchL2(_Search):
    """L2: pseudo-Gaussian windows, the perturbation kept at norm ε."""

    def __init__(self, *args):
        super().__init__(*args)
        self.vector = self.width == 1
        self.largest = self.height if self.vector else min(self.height, self.width)
        self.largest -= 1 - self.largest % 2  # windows have odd sides
        table = np.zeros((self.largest // 2 + 1, 2, self.height, self.width), "float32")
        for i, side in enumerate(range(1, self.largest + 1, 2)):
            pattern = pseudo_gaussian(side, 1 if self.vector else side)
            table[i, 0, :side, :pattern.shape[1]] = pattern
            table[i, 1, :side, :pattern.shape[1]] = pattern if self.vector else pattern.T
        self.table = ops.convert_to_tensor(table.reshape(len(table), 2, -1))

    def _norm(self, delta, axes=(1, 2, 3)):
        return ops.sqrt(ops.sum(ops.square(delta), axis=axes, keepdims=True))

    def _rescale(self, delta):
        return delta * (self.epsilon / ops.maximum(self._norm(delta), 1e-12))

    def start(self):
        side = max((self.height if self.vector else min(self.height, self.width)) // 5, 1)
        tile = pseudo_gaussian(side, 1 if self.vector else side)
        tiles_h, tiles_w = self.height // side, (1 if self.vector else self.width // side)
        pattern = np.zeros((self.height, self.width), "float32")
        which = np.zeros((self.height, self.width), "int32")
        for i in range(tiles_h):
            for j in range(tiles_w):
                r, c = i * side, j * tile.shape[1]
                pattern[r:r + side, c:c + tile.shape[1]] = tile
                which[r:r + side, c:c + tile.shape[1]] = i * tiles_w + j
        signs = self.signs((self.batch, tiles_h * tiles_w, self.channels))
        signs = ops.take(signs, ops.convert_to_tensor(which.reshape(-1)), axis=1)
        delta = ops.reshape(signs, ops.shape(self.image)) * ops.convert_to_tensor(
            pattern[None, :, :, None], self.image.dtype)
        return self.attack._clip(self.image + self._rescale(delta), self.clip)

    def _pattern(self, side, top, left):
        """`(batch, height, width, 1)`: the side's pattern, randomly transposed, at (top, left)."""
        flip = ops.reshape(self.positions(2), (-1,))
        rows = ops.take(self.table, (side - 1) // 2, axis=0)  # (2, height·width)
        chosen = ops.take(rows, flip, axis=0)  # (batch, height·width)
        r = ops.mod(self.rows - top, self.height)
        c = ops.mod(self.columns - left, self.width)
        index = ops.reshape(r * self.width + c, (self.batch, -1))
        placed = ops.take_along_axis(chosen, index, axis=1)
        return ops.cast(ops.reshape(placed, (self.batch, self.height, self.width, 1)),
                        self.image.dtype)

    def candidate(self, k, best):
        cells = self.height * (1 if self.vector else self.width)
        side = ops.cast(ops.round(ops.sqrt(self.fraction(k) * cells)), "int32")
        if self.vector:
            side = ops.cast(ops.round(self.fraction(k) * cells), "int32")
        side = ops.clip(side, min(3, self.largest), self.largest)
        side = side + 1 - ops.mod(side, 2)  # odd
        side = ops.minimum(side, self.largest)
        delta = best - self.image
        first, top, left = self.window(side)
        second, _, _ = self.window(side)
        spatial = (1, 2)
        inside = ops.where(first, delta, 0.0)
        old = inside / (1e-10 + self._norm(inside, spatial))
        fresh = ops.where(first, self._pattern(side, top, left), 0.0)
        fresh = fresh * self.signs((self.batch, 1, 1, self.channels)) + old
        budget = (ops.maximum(ops.square(self.epsilon) - ops.square(self._norm(delta)), 0.0)
                  / self.channels + ops.square(self._norm(ops.where(first | second, delta, 0.0))))
        fresh = fresh / ops.maximum(self._norm(fresh, spatial), 1e-12) * ops.sqrt(budget)
        delta = ops.where(first, fresh, ops.where(second, 0.0, delta))
        return self.attack._clip(self.image + self._rescale(delta), self.clip)
