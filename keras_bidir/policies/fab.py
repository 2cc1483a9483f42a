"""FAB-T: the targeted Fast Adaptive Boundary attack (Croce and Hein, 2020), minimum-norm."""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import constraints
from keras_bidir import losses as losses_lib
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.base import single_site
from keras_bidir.policies.base import BallPolicy

_BIG = 1e10


def boundary_step(w, c, lower, upper, norm):
    """The smallest step δ with w·δ = c inside the box lower ≤ δ ≤ upper, per example.

    The minimum-norm projection onto a hyperplane intersected with a box,
    solved exactly: the reach max{w·δ : ‖δ‖ ≤ τ, box} is piecewise linear in
    τ with one breakpoint per coordinate (where it reaches its bound), so
    sorting the breakpoints gives the τ where it meets |c|. Where no point
    of the box reaches the plane, the box's farthest point towards it.

    Args:
        w: `(batch, d)` normals (float32).
        c: `(batch,)` required values of w·δ.
        lower: `(batch, d)` lower bounds of δ (≤ 0; -inf allowed).
        upper: `(batch, d)` upper bounds of δ (≥ 0; +inf allowed).
        norm: `"linf"` or `"l2"`.

    Returns:
        `(batch, d)` steps.
    """
    sign = ops.where(c >= 0, 1.0, -1.0)[:, None]
    toward = sign * ops.sign(w)  # +1 where raising δ_i moves w·δ towards c
    room = ops.minimum(ops.where(toward > 0, upper, -lower), _BIG)  # how far δ_i may go
    size = ops.abs(w)
    if norm == "linf":  # δ_i = ±min(τ, room_i)
        breaks, slope = room, size
    else:  # L2: δ_i = ±min(τ·|w_i|, room_i)
        breaks = ops.where(size > 0, ops.minimum(room / ops.maximum(size, 1e-30), _BIG), _BIG)
        slope = ops.square(size)
    saturated = size * room
    order = ops.argsort(breaks, axis=-1)
    breaks_s = ops.take_along_axis(breaks, order, axis=-1)
    saturated_s = ops.take_along_axis(saturated, order, axis=-1)
    slope_s = ops.take_along_axis(slope, order, axis=-1)
    before = ops.cumsum(saturated_s, axis=-1) - saturated_s  # Σ_{k<j} saturated
    after = ops.flip(ops.cumsum(ops.flip(slope_s, -1), axis=-1), -1)  # Σ_{k≥j} slope
    reach = before + breaks_s * after
    target = ops.abs(c)[:, None]
    feasible = reach >= target
    first = ops.argmax(ops.cast(feasible, "int32"), axis=-1)[:, None]
    tau = (target - ops.take_along_axis(before, first, -1)) / ops.maximum(
        ops.take_along_axis(after, first, -1), 1e-30)
    tau = ops.where(ops.any(feasible, axis=-1, keepdims=True), tau, _BIG)
    reach_i = tau if norm == "linf" else tau * size
    return toward * ops.minimum(reach_i, room) * ops.cast(size > 0, w.dtype)


@keras.saving.register_keras_serializable(package="keras_bidir")
class FABTargeted(BallPolicy):
    """FAB-T: the targeted minimum-norm Fast Adaptive Boundary attack (AutoAttack's version).

    For each target class (the clean input's 2nd, 3rd, ... highest logit),
    FAB linearises z_t − z_y at the current point and steps to the nearest
    point of that linearised boundary, mixed with the projection of the
    original input onto it (weight α ≤ `alpha_max`), overshooting by `eta`;
    once the point is misclassified it records it (if closer than the best
    so far) and steps back towards the input by `beta`. It searches the
    smallest perturbation that changes the class, so it finds adversarial
    examples close to the input that fixed-radius attacks may step over.
    The attack returns, per example, its closest misclassified point when
    that lies in the ε-ball (projected onto it), else the input itself.

    Reference: Croce and Hein, "Minimally distorted adversarial examples with
    a fast adaptive boundary attack", ICML 2020.

    Args:
        epsilon: radius of the ball the result must lie in.
        steps: iterations per target (AutoAttack uses 100).
        targets: target classes tried (AutoAttack uses 9; at most classes − 1).
        alpha_max: the largest weight of the original input's projection.
        eta: overshoot of each step beyond the linearised boundary.
        beta: backward step towards the input after a success.
        norm: `"linf"` or `"l2"`.
        targets_per_pass: how many targets share one pass, the batch stacked
            once per target (default: all of them, the fastest; lower it when
            `targets` × the batch does not fit in the accelerator's memory).
        **kwargs: `clip_min`, `clip_max` (the valid data range) and `seed`.

    Example:

    >>> attack = keras_bidir.policies.FABTargeted(0.2, targets=9, clip_min=0.0, clip_max=1.0)
    >>> x_adv = attack.perturb(model, x, y)
    """

    requires_labels = True

    def __init__(self, epsilon, steps=100, targets=9, alpha_max=0.1, eta=1.05, beta=0.9,
                 norm="linf", targets_per_pass=None, **kwargs):
        if kwargs.get("direction", 1) != 1:
            raise ValueError("FABTargeted searches misclassified points; direction must be +1.")
        super().__init__(epsilon, norm=norm, **kwargs)
        self.steps = check_count("steps", steps)
        self.targets = check_count("targets", targets)
        self.alpha_max = check_positive("alpha_max", alpha_max)
        self.eta = check_positive("eta", eta)
        self.beta = check_positive("beta", beta)
        if self.alpha_max > 1 or self.beta > 1:
            raise ValueError("alpha_max and beta must lie in (0, 1].")
        self.targets_per_pass = None if targets_per_pass is None else check_count(
            "targets_per_pass", targets_per_pass)

    def attack_loss(self):
        return losses_lib.margin_loss

    def generate(self, context, inputs, state):
        x, clip = single_site(self, context, inputs)
        clean = keras.tree.flatten(context.outputs(inputs))
        if len(clean) != 1 or clean[0].shape[-1] is None or clean[0].shape[-1] < 2:
            raise ValueError("FABTargeted needs one output of at least 2 class logits; for a "
                             "single-logit binary model use APGD or Square.")
        classes = clean[0].shape[-1]
        ranked = ops.argsort(clean[0], axis=-1)
        targets = [ranked[:, classes - rank] for rank in range(2, min(self.targets, classes - 1) + 2)]
        chunk = self.targets_per_pass or len(targets)
        best = x
        best_norm = ops.full((ops.shape(x)[0],), _BIG, "float32")
        for first in range(0, len(targets), chunk):
            for point, length in self._run_targets(context, x, clip, targets[first:first + chunk]):
                closer = length < best_norm
                best = ops.where(ops.reshape(closer, (-1,) + (1,) * (len(x.shape) - 1)), point, best)
                best_norm = ops.minimum(best_norm, length)
        return [self._project(x, best, self.epsilon * context.scale, clip)], state

    def _run_targets(self, context, x, clip, targets):
        """One FAB run per target, all in one pass over the batch stacked once per target.

        Returns:
            Per target, `(closest misclassified point, its norm)`.
        """
        count, batch = len(targets), ops.shape(x)[0]
        if count == 1:
            return [self._run(context, x, clip, targets[0])]
        points, lengths = self._run(context.repeated(count), ops.concatenate([x] * count, axis=0),
                                    clip, ops.concatenate(targets, axis=0))
        return [(points[i * batch:(i + 1) * batch], lengths[i * batch:(i + 1) * batch])
                for i in range(count)]

    def _run(self, context, x, clip, target):
        """One FAB run towards `target`: the closest misclassified point and its norm."""
        batch = ops.shape(x)[0]
        flat = lambda t: ops.reshape(ops.cast(t, "float32"), (batch, -1))  # noqa: E731
        x0 = flat(x)
        low, high = self.data_range(clip)
        low = ops.full(ops.shape(x0), -_BIG if low is None else low, "float32")
        high = ops.full(ops.shape(x0), _BIG if high is None else high, "float32")
        labels = context.labels

        def gap(outputs):  # z_t − z_y: positive once the target class wins
            logits = context.logits(outputs)
            return (ops.sum(logits * losses_lib.one_hot_like(target, logits), -1)
                    - ops.sum(logits * losses_lib.one_hot_like(labels, logits), -1))

        def body(k, carry):
            current, best, best_norm = carry
            value, grads, _ = context.loss_and_gradients([self._shape(current, x)], gap)
            w, value = flat(grads[0]), ops.cast(value, "float32")
            step = boundary_step(w, -value, low - current, high - current, self.norm)
            to_origin = -(value + ops.sum(w * (x0 - current), -1))
            step0 = boundary_step(w, to_origin, low - x0, high - x0, self.norm)
            n1 = constraints.per_example_norm(step, self.norm)
            n0 = constraints.per_example_norm(step0, self.norm)
            alpha = ops.minimum(n1 / ops.maximum(n1 + n0, 1e-12), self.alpha_max)[:, None]
            moved = ((1 - alpha) * (current + self.eta * step)
                     + alpha * (x0 + self.eta * step0))
            moved = ops.clip(moved, low, high)
            margin = ops.cast(context.loss([self._shape(moved, x)]), "float32")
            length = constraints.per_example_norm(moved - x0, self.norm)
            wins = margin > 0
            closer = wins & (length < best_norm)
            best = ops.where(closer[:, None], moved, best)
            best_norm = ops.where(closer, length, best_norm)
            moved = ops.where(wins[:, None], x0 + self.beta * (moved - x0), moved)
            return moved, best, best_norm

        start = (x0, x0, ops.full((batch,), _BIG, "float32"))
        _, best, best_norm = backend.fori_loop(0, self.steps, body, start)
        return self._shape(best, x), best_norm

    @staticmethod
    def _shape(flat, like):
        return ops.cast(ops.reshape(flat, ops.shape(like)), like.dtype)

    def get_config(self):
        config = super().get_config()
        config.pop("direction")
        return {"steps": self.steps, "targets": self.targets, "alpha_max": self.alpha_max,
                "eta": self.eta, "beta": self.beta, "targets_per_pass": self.targets_per_pass,
                **config}
