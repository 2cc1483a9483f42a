"""Auto-PGD: PGD with an automatic step-size schedule and momentum."""

import math

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir import constraints
from keras_bidir import losses as losses_lib
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive
from keras_bidir.policies.base import BallPolicy

LOSSES = ("ce", "dlr")


def checkpoints(steps):
    """The iterations where APGD may halve its step size (Croce and Hein, 2020)."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1.0:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    marks = {math.ceil(round(p * steps, 6)) for p in fractions if 0 < p <= 1.0}
    return sorted(m for m in marks if m < steps)


def _expand(values, like):
    return ops.reshape(values, (-1,) + (1,) * (len(like.shape) - 1))


def _fooled(context, outputs, batch, direction=1):
    """Per example, whether `outputs` misclassify it (all False where the context cannot tell)."""
    fooled = context.misclassified(outputs) if direction == 1 else None
    return ops.zeros((batch,), "bool") if fooled is None else fooled


@keras.saving.register_keras_serializable(package="keras_bidir")
class APGD(BallPolicy):
    """Auto-PGD: an attack that needs no step-size tuning (Croce and Hein, 2020).

    Starts with step 2ε, adds momentum (α = 0.75), and halves the step size
    at fixed checkpoints whenever fewer than ρ of the steps since the last
    checkpoint increased the loss (or nothing improved), restarting from the
    best point found. With `loss="dlr"` it ascends the difference-of-logits
    ratio, which is invariant to the scale of the logits and so breaks
    defences that only flatten the cross-entropy (gradient masking).

    Reference: Croce and Hein, "Reliable evaluation of adversarial robustness
    with an ensemble of diverse parameter-free attacks", ICML 2020.

    Args:
        epsilon: radius of the perturbation ball.
        steps: iterations per restart (AutoAttack uses 100).
        loss: `"ce"` (the model's compiled loss / cross-entropy) or `"dlr"`.
        restarts: random restarts; each example keeps its best.
        rho: the success fraction below which the step size is halved.
        momentum: α of the momentum update.
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min` and `clip_max` (the valid data range, or None),
            `direction` (+1 ascends the loss, -1 descends it) and `seed`.

    Example:

    >>> attack = keras_bidir.policies.APGD(0.2, steps=100, loss="dlr",
    ...                                    clip_min=0.0, clip_max=1.0)
    """

    def __init__(self, epsilon, steps=100, loss="ce", restarts=1, rho=0.75, momentum=0.75,
                 norm="linf", **kwargs):
        super().__init__(epsilon, norm=norm, **kwargs)
        self.steps = check_count("steps", steps, minimum=2)
        self.restarts = check_count("restarts", restarts)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}.")
        self.loss = loss
        self.rho = check_positive("rho", rho)
        self.momentum = check_positive("momentum", momentum)
        if self.rho > 1 or self.momentum > 1:
            raise ValueError("rho and momentum must lie in (0, 1].")

    def attack_loss(self):
        return losses_lib.dlr_loss if self.loss == "dlr" else None

    def _run(self, context, inputs, epsilon, loss_fn=None):
        """One APGD run; `loss_fn(outputs)` replaces the attack loss when given.

        As AutoAttack's `attack_single_run`: a halving restarts from the best
        point with the best point's gradient (keeping the momentum), the first
        checkpoint halves only for too few successes, and, when the context
        can tell (`context.misclassified`, evaluation), the last iterate that
        was misclassified is returned, else the point of highest loss.

        Returns:
            `(points, scores)`: per example the point and a score to compare
            runs by (its loss; +inf where a misclassified point was found).
        """
        steps = self.steps
        marks = checkpoints(steps)
        is_mark = ops.convert_to_tensor([k in marks for k in range(steps + 1)])
        previous = [0] + marks
        since = [0] * (steps + 1)
        for before, mark in zip(previous, marks):
            since[mark] = mark - before
        interval = ops.convert_to_tensor(since, dtype="float32")
        batch = ops.shape(inputs[0])[0]
        clip = context.clip(len(inputs))
        start = [self._random_start(context, x, epsilon, c) for x, c in zip(inputs, clip)]
        eta = ops.ones((batch,), "float32") * 2.0 * ops.cast(epsilon, "float32")
        loss0, grads0, outputs0 = context.loss_and_gradients(start, loss_fn)
        loss0 = ops.cast(loss0, "float32") * self.direction
        found = _fooled(context, outputs0, batch, self.direction)
        first = [self._move(x, a, g, eta, epsilon, c) for x, a, g, c in zip(inputs, start, grads0, clip)]
        state = (
            first,            # x_k
            start,            # x_{k-1}
            start,            # best point
            grads0,           # the gradient at the best point
            loss0,            # best loss
            loss0,            # loss at x_{k-1}
            eta,              # step size per example
            ops.zeros((batch,), "float32"),  # successes since the last checkpoint
            loss0,            # best loss at the last checkpoint
            ops.ones((batch,), "bool"),  # halved at the last checkpoint (none before the first)
            found,            # a misclassified iterate was found
            start,            # the last misclassified iterate
        )

        def body(k, carry):
            (current, prior, best, best_grads, best_loss, last_loss, eta, wins, mark_loss,
             halved_last, found, fooling) = carry
            loss, grads, outputs = context.loss_and_gradients(list(current), loss_fn)
            loss = ops.cast(loss, "float32") * self.direction
            fooled = _fooled(context, outputs, batch, self.direction)
            fooling = [ops.where(_expand(fooled, f), c, f) for f, c in zip(fooling, current)]
            found = found | fooled
            wins = wins + ops.cast(loss > last_loss, "float32")
            improved = loss > best_loss
            best = [ops.where(_expand(improved, b), c, b) for b, c in zip(best, current)]
            best_grads = [ops.where(_expand(improved, b), g, b) for b, g in zip(best_grads, grads)]
            best_loss = ops.where(improved, loss, best_loss)
            at_mark = ops.take(is_mark, k)
            length = ops.take(interval, k)
            # Halve where too few steps since the last checkpoint raised the loss,
            # or where nothing improved and the step was not just halved.
            halve = at_mark & (
                (wins <= self.rho * length)
                | (ops.logical_not(halved_last) & (mark_loss >= best_loss))
            )
            eta = ops.where(halve, eta / 2.0, eta)
            # After halving, continue from the best point with its gradient.
            restart = [ops.where(_expand(halve, c), b, c) for b, c in zip(best, current)]
            grads = [ops.where(_expand(halve, g), b, g) for b, g in zip(best_grads, grads)]
            nxt = []
            for x, c, p, g, site_clip in zip(inputs, restart, prior, grads, clip):
                z = self._move(x, c, g, eta, epsilon, site_clip)
                a = ops.cast(self.momentum, x.dtype)
                mixed = c + a * (z - c) + (1 - a) * (c - p)
                nxt.append(self._project(x, mixed, epsilon, site_clip))
            wins = ops.where(at_mark, ops.zeros_like(wins), wins)
            mark_loss = ops.where(at_mark, best_loss, mark_loss)
            halved_last = ops.where(at_mark, halve, halved_last)
            return (nxt, restart, best, best_grads, best_loss, loss, eta, wins, mark_loss,
                    halved_last, found, fooling)

        state = backend.fori_loop(1, steps, body, state)
        final, best, best_loss, found, fooling = state[0], state[2], state[4], state[10], state[11]
        final_loss, outputs = context.loss_and_outputs(list(final), loss_fn)
        final_loss = ops.cast(final_loss, "float32") * self.direction
        fooled = _fooled(context, outputs, batch, self.direction)
        fooling = [ops.where(_expand(fooled, f), c, f) for f, c in zip(fooling, final)]
        found = found | fooled
        improved = final_loss > best_loss
        best = [ops.where(_expand(improved, b), f, b) for b, f in zip(best, final)]
        points = [ops.where(_expand(found, b), f, b) for b, f in zip(best, fooling)]
        scores = ops.where(found, float("inf"), ops.maximum(best_loss, final_loss))
        return points, scores

    def _move(self, x, current, gradient, eta, epsilon, clip=True):
        step = _expand(ops.cast(eta, x.dtype), x) * self.direction
        moved = current + step * constraints.ascent_direction(gradient, self.norm)
        return self._project(x, moved, epsilon, clip)

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        best, best_loss = self._run(context, inputs, epsilon)
        for _ in range(self.restarts - 1):
            candidate, loss = self._run(context, inputs, epsilon)
            better = loss > best_loss
            best = [ops.where(_expand(better, b), c, b) for b, c in zip(best, candidate)]
            best_loss = ops.maximum(best_loss, loss)
        return best, state

    def get_config(self):
        return {"steps": self.steps, "loss": self.loss, "restarts": self.restarts,
                "rho": self.rho, "momentum": self.momentum, **super().get_config()}


def targeted_dlr_loss(y_true, target, logits):
    """Targeted DLR (Croce and Hein, 2020): −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2), per example.

    Ascending it moves the logit of class `target` above the true class's.
    Needs at least four classes.
    """
    logits = ops.cast(logits, "float32")
    true = ops.sum(logits * losses_lib.one_hot_like(y_true, logits), axis=-1)
    aimed = ops.sum(logits * losses_lib.one_hot_like(target, logits), axis=-1)
    ordered = ops.sort(logits, axis=-1)
    scale = ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12
    return -(true - aimed) / scale


@keras.saving.register_keras_serializable(package="keras_bidir")
class APGDTargeted(APGD):
    """APGD-T: APGD on the targeted DLR loss, once per target class (AutoAttack's version).

    The targets are, per example, the classes with the 2nd, 3rd, ... highest
    logit at the clean input (`targets` of them; AutoAttack uses 9). Each
    target gets one APGD run of `steps` iterations from a random start; each
    example keeps the point with the highest untargeted margin
    max_{k≠y} z_k − z_y over the runs, so it is misclassified if any run
    succeeded.

    Reference: Croce and Hein, "Reliable evaluation of adversarial robustness
    with an ensemble of diverse parameter-free attacks", ICML 2020.

    Args:
        epsilon: radius of the perturbation ball.
        steps: iterations per target (AutoAttack uses 100).
        targets: how many target classes to try (at most classes − 1).
        norm: `"linf"` or `"l2"`.
        targets_per_pass: how many targets share one pass, the batch stacked
            once per target (default: all of them, the fastest; lower it when
            `targets` × the batch does not fit in the accelerator's memory).
        **kwargs: `clip_min`, `clip_max`, `rho`, `momentum` and `seed`, as for `APGD`.

    Example:

    >>> attack = keras_bidir.policies.APGDTargeted(0.2, targets=9, clip_min=0.0, clip_max=1.0)
    """

    def __init__(self, epsilon, steps=100, targets=9, norm="linf", targets_per_pass=None,
                 **kwargs):
        if kwargs.pop("restarts", 1) != 1 or kwargs.pop("loss", "dlr") != "dlr":
            raise ValueError("APGDTargeted runs one targeted-DLR run per target class; "
                             "use `targets`, not `restarts` or `loss`.")
        if kwargs.get("direction", 1) != 1:
            raise ValueError("APGDTargeted ascends its loss; direction must be +1.")
        super().__init__(epsilon, steps=steps, loss="dlr", norm=norm, **kwargs)
        self.targets = check_count("targets", targets)
        self.targets_per_pass = None if targets_per_pass is None else check_count(
            "targets_per_pass", targets_per_pass)

    def attack_loss(self):
        return losses_lib.margin_loss

    def generate(self, context, inputs, state):
        epsilon = self.epsilon * context.scale
        clean = keras.tree.flatten(context.outputs(inputs))
        if len(clean) != 1 or clean[0].shape[-1] is None or clean[0].shape[-1] < 4:
            raise ValueError("APGDTargeted needs one output of at least 4 class logits; "
                             "use APGD(loss='dlr') for fewer classes.")
        classes = clean[0].shape[-1]
        ranked = ops.argsort(clean[0], axis=-1)  # ascending
        targets = [ranked[:, classes - rank] for rank in range(2, min(self.targets, classes - 1) + 2)]
        chunk = self.targets_per_pass or len(targets)
        best, best_margin = None, None
        for first in range(0, len(targets), chunk):
            for candidate, margin in self._run_targets(context, inputs, epsilon,
                                                       targets[first:first + chunk]):
                if best is None:
                    best, best_margin = candidate, margin
                    continue
                better = margin > best_margin
                best = [ops.where(_expand(better, b), c, b) for b, c in zip(best, candidate)]
                best_margin = ops.maximum(best_margin, margin)
        return best, state

    def _run_targets(self, context, inputs, epsilon, targets):
        """One APGD run per target, all in one pass over the batch stacked once per target.

        Returns:
            Per target, `(points, untargeted margin at them)`.
        """
        count, batch = len(targets), ops.shape(inputs[0])[0]
        if count == 1:
            stacked_context, stacked_inputs = context, list(inputs)
        else:
            stacked_context = context.repeated(count)
            stacked_inputs = [ops.concatenate([x] * count, axis=0) for x in inputs]
        target = ops.concatenate(targets, axis=0)
        y = stacked_context.labels
        loss_fn = lambda outputs: targeted_dlr_loss(  # noqa: E731
            y, target, stacked_context.logits(outputs))
        points, _ = self._run(stacked_context, stacked_inputs, epsilon, loss_fn)
        margins = ops.cast(stacked_context.loss(points), "float32")
        return [([p[i * batch:(i + 1) * batch] for p in points], margins[i * batch:(i + 1) * batch])
                for i in range(count)]

    def get_config(self):
        config = super().get_config()
        for key in ("loss", "restarts", "direction"):
            config.pop(key)
        return {"targets": self.targets, "targets_per_pass": self.targets_per_pass, **config}
