"""Pictures of attacks: clean and adversarial inputs side by side, and the tokens that moved."""

import keras
import numpy as np
from keras import ops

from keras_bidir import backend
from keras_bidir import outputs as outputs_lib
from keras_bidir.evaluation.runner import has_compiled_loss
from keras_bidir.evaluation.runner import single_restart
from keras_bidir.evaluation.spill import take_rows
from keras_bidir.sites import Sites


class FlippedExamples:
    """Examples whose prediction an attack changed, with their perturbation.

    Attributes:
        clean: the clean inputs `(n, ...)` (the perturbed input of the model).
        adversarial: the adversarial inputs, same shape.
        labels: the true labels `(n,)`.
        clean_predictions: the predictions on `clean` `(n,)`.
        adversarial_predictions: the predictions on `adversarial` `(n,)`.
        attack: the name of the attack(s) that found them.
        epsilon: the radius.
        index: the examples' positions in the batch they were found in.
    """

    def __init__(self, clean, adversarial, labels, clean_predictions, adversarial_predictions,
                 attack, epsilon, index=None, radius_note=None):
        self.clean, self.adversarial = np.asarray(clean), np.asarray(adversarial)
        self.labels = np.asarray(labels)
        self.clean_predictions = np.asarray(clean_predictions)
        self.adversarial_predictions = np.asarray(adversarial_predictions)
        self.attack, self.epsilon = attack, epsilon
        self.index = np.arange(len(self.labels)) if index is None else np.asarray(index)
        #: Why this radius was shown (e.g. "the training ε"), for the title; or None.
        self.radius_note = radius_note

    def __len__(self):
        return len(self.labels)

    @classmethod
    def concatenate(cls, parts):
        """One `FlippedExamples` from several (e.g. found by different attacks)."""
        parts = [p for p in parts if len(p)] or parts[:1]
        join = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        names = list(dict.fromkeys(p.attack for p in parts))
        return cls(join("clean"), join("adversarial"), join("labels"), join("clean_predictions"),
                   join("adversarial_predictions"), " / ".join(names), parts[0].epsilon)

    def plot(self, path=None, count=8, class_names=None):
        """A grid: per example the clean input, the adversarial input and the perturbation.

        Args:
            path: where to save a PNG; None returns the figure unsaved.
            count: at most this many examples (rows).
            class_names: optional names of the classes, for the titles.

        Returns:
            The matplotlib figure.
        """
        if not len(self):
            raise ValueError(f"No example flipped under {self.attack} at ε={self.epsilon:g}: "
                             "nothing to show (the model is robust on these examples).")
        plt = _pyplot(path)
        name = (lambda k: str(class_names[k])) if class_names is not None else str
        rows = min(count, len(self))
        figure, axes = plt.subplots(rows, 3, figsize=(6.0, 2.0 * rows + 0.4), squeeze=False)
        pictures = is_picture(self.clean[0])
        for i in range(rows):
            delta = self.adversarial[i] - self.clean[i]
            limit = float(np.abs(delta).max()) or 1.0
            low = min(self.clean[i].min(), self.adversarial[i].min())
            high = max(self.clean[i].max(), self.adversarial[i].max())
            panels = [
                (self.clean[i], f"label {name(self.labels[i])}, "
                                f"predicted {name(self.clean_predictions[i])}", (low, high), "gray"),
                (self.adversarial[i], f"adversarial: predicted "
                                      f"{name(self.adversarial_predictions[i])}", (low, high), "gray"),
                (delta, f"perturbation (max {limit:.3g})", (-limit, limit), "RdBu_r"),
            ]
            for axis, (values, title, (vmin, vmax), colors) in zip(axes[i], panels):
                if pictures:
                    axis.imshow(_as_picture(values), cmap=colors, vmin=vmin, vmax=vmax,
                                interpolation="nearest")
                    axis.axis("off")
                else:
                    _draw_bars(axis, values, (vmin, vmax), colors == "RdBu_r")
                axis.set_title(title, fontsize=8)
        note = f" ({self.radius_note})" if self.radius_note else ""
        figure.suptitle(f"{self.attack}, ε={self.epsilon:g}{note}: {len(self)} flipped",
                        fontsize=9)
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / (2.0 * rows + 0.4)))  # room for the title
        if path is not None:
            figure.savefig(path, dpi=100)
            plt.close(figure)
        return figure

    def to_image(self, count=8, class_names=None):
        """The grid of `plot` as a `(height, width, 4)` uint8 RGBA array (for TensorBoard)."""
        plt = _pyplot("")
        figure = self.plot(count=count, class_names=class_names)
        figure.canvas.draw()
        image = np.asarray(figure.canvas.buffer_rgba()).copy()
        plt.close(figure)
        return image


def _pyplot(path):
    try:
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("Pictures need matplotlib: pip install 'keras-bidir[plot]'.") from error
    return plt


def is_picture(x):
    """Whether one example's input is an image (drawn as one) rather than features (bars):
    `(h, w)`, `(h, w, 1 or 3)`, or a flat vector of a square number (≥ 16) of pixels."""
    x = np.asarray(x)
    if x.ndim == 3:
        return x.shape[-1] in (1, 3)
    if x.ndim == 2:
        return True
    side = int(round(np.sqrt(x.size)))
    return x.ndim == 1 and x.size >= 16 and side * side == x.size


def _draw_bars(axis, values, limits, signed):
    """One example's features as bars (tabular inputs); the perturbation red / blue by sign."""
    values = np.asarray(values, dtype="float32").reshape(-1)
    colors = (np.where(values >= 0, "tab:red", "tab:blue") if signed else "tab:gray")
    axis.bar(np.arange(values.size), values, color=colors, width=0.8)
    low, high = limits
    pad = 0.05 * ((high - low) or 1.0)
    axis.set_ylim(min(low, 0.0) - pad, max(high, 0.0) + pad)
    axis.set_xlabel("feature", fontsize=7)
    axis.tick_params(labelsize=6)


def _as_picture(x):
    """An array `imshow` draws: images as they are, vectors as a square or a strip."""
    x = np.asarray(x, dtype="float32")
    if x.ndim == 3 and x.shape[-1] in (1, 3):
        return x[..., 0] if x.shape[-1] == 1 else x
    flat = x.reshape(-1)
    side = int(round(np.sqrt(flat.size)))
    if side * side == flat.size:
        return flat.reshape(side, side)
    return flat.reshape(1, -1)


class _PerturbStep:
    """`attack.perturb` as a callable object, compiled once per attack (as `_AttackStep`)."""

    def __init__(self, model, attack, loss, seed, from_logits):
        self.model, self.attack, self.loss, self.seed = model, attack, loss, seed
        self.from_logits = from_logits

    def __call__(self, x, y, scale):
        return self.attack.perturb(self.model, x, y, loss=self.loss, seed=self.seed, scale=scale,
                                   from_logits=self.from_logits, keep_misclassified=True)


def flipped_examples(model, x, y, attack, epsilon=None, count=8, kind=None, name=None, seed=0,
                     loss=None):
    """The examples of `(x, y)` a classifier gets right that `attack` makes it get wrong.

    Args:
        model: a classifier with one output, perturbed at one input.
        x: a batch of inputs.
        y: its labels.
        attack: an `InputPolicy` used as the attack.
        epsilon: the radius (default: the attack's own).
        count: keep at most this many.
        kind: an `OutputKind` (default: decided from the outputs and labels).
        name: the attack's name in titles (default: its class name).
        seed: seed of the attack's random start.
        loss: loss to ascend (default: the attack's, else the model's compiled one).

    Returns:
        A `FlippedExamples`.

    Example:

    >>> flipped = keras_bidir.gallery.flipped_examples(model, x_test[:64], y_test[:64],
    ...                                                policies.PGD(0.2, steps=20))
    >>> flipped.plot("flipped.png")
    """
    x = keras.tree.map_structure(ops.convert_to_tensor, x)
    sites = Sites(model, x, getattr(model, "perturb_names", None))
    if sites.point_names or len(sites.input_indices) != 1:
        raise ValueError(
            "Pictures of inputs need a model perturbed at exactly one input; this one is "
            f"perturbed at inputs {sites.input_indices} and PerturbationPoints "
            f"{sites.point_names}. For embeddings use keras_bidir.gallery.token_shifts.")
    clean_outputs = model.predict_on_batch(x)
    if keras.tree.is_nested(clean_outputs):
        raise ValueError("Pictures of flipped predictions need a model with one output.")
    kind = kind or outputs_lib.describe_outputs(model, clean_outputs, y)
    if not kind.is_classification:
        raise ValueError("A regression model has no prediction to flip: nothing to picture.")
    scale = 1.0 if epsilon is None else float(epsilon) / attack.epsilon
    generator = keras.random.SeedGenerator(seed)
    step = backend.function(_PerturbStep(model, attack, loss, generator, kind.from_logits),
                            state=lambda: list(model.variables) + [generator.state])
    adversarial = step(x, ops.convert_to_tensor(y), ops.convert_to_tensor(scale, "float32"))
    labels = kind.labels(y)
    before = kind.predict(ops.convert_to_numpy(clean_outputs))
    after = kind.predict(ops.convert_to_numpy(model.predict_on_batch(adversarial)))
    keep = np.flatnonzero((before == labels) & (after != labels))[:count]
    index = sites.input_indices[0]
    pick = lambda structure: ops.convert_to_numpy(keras.tree.flatten(structure)[index])[keep]  # noqa: E731
    return FlippedExamples(pick(x), pick(adversarial), labels[keep], before[keep], after[keep],
                           name or type(attack).__name__,
                           attack.epsilon if epsilon is None else float(epsilon), keep)


def token_shifts(clean, adversarial, token_ids, top=5, vocabulary=None, mask=None):
    """The tokens whose embeddings a perturbation moved most, per example.

    Args:
        clean: embeddings `(batch, time, features)` at a `PerturbationPoint`.
        adversarial: the perturbed embeddings, same shape.
        token_ids: the token ids `(batch, time)` (the model's integer input).
        top: how many tokens per example.
        vocabulary: optional list mapping ids to strings.
        mask: optional `(batch, time)` padding mask (False where padded).

    Returns:
        Per example, a list of `(position, token, shift)` with the L2 norm
        of the embedding's change, largest first.
    """
    shift = np.sqrt(np.sum(np.square(np.asarray(adversarial, "float64")
                                     - np.asarray(clean, "float64")), axis=-1))
    if shift.ndim != 2:
        raise ValueError("token_shifts needs embeddings of shape (batch, time, features), got "
                         f"{np.shape(clean)}.")
    if mask is not None:
        shift = np.where(np.asarray(mask, bool), shift, -np.inf)
    ids = np.asarray(token_ids)
    result = []
    for row in range(shift.shape[0]):
        order = [t for t in np.argsort(-shift[row], kind="stable") if np.isfinite(shift[row, t])]
        result.append([(int(t), vocabulary[ids[row, t]] if vocabulary is not None
                        else int(ids[row, t]), float(shift[row, t])) for t in order[:top]])
    return result


def format_token_shifts(shifts):
    """`token_shifts` as Markdown lines, one per example."""
    return "\n".join(
        f"- example {i}: " + ", ".join(f"`{token}` (position {p}, moved {s:.3g})"
                                       for p, token, s in row)
        for i, row in enumerate(shifts))


def picture_radius(model, epsilons):
    """`(ε, why)`: the radius pictures show by default, the training ε where the report has it,
    else the middle radius (the largest breaks nearly everything)."""
    policy = getattr(model, "policy", None)
    trained = getattr(policy, "epsilon", None)
    if trained is not None and any(np.isclose(trained, e) for e in epsilons):
        return min(epsilons, key=lambda e: abs(e - trained)), "the training ε"
    ordered = sorted(epsilons)
    if len(ordered) == 1:
        return ordered[0], "the only radius"
    return ordered[len(ordered) // 2], "the middle radius"


class ExampleFinder:
    """Finds, on demand, examples the attacks flip at a radius (for `plot_examples`)."""

    def __init__(self, model, x, y, attacks, clean, held, judge, seed):
        self.model, self.x, self.y, self.attacks = model, x, y, attacks
        self.clean, self.held, self.judge, self.seed = clean, held, judge, seed

    def __call__(self, count, epsilon=None):
        if epsilon is None:
            epsilon, why = picture_radius(self.model, list(self.held))
        else:
            matches = [e for e in self.held if np.isclose(e, epsilon)]
            if not matches:
                raise ValueError(f"The report has no radius {epsilon:g}; it has "
                                 f"{sorted(self.held)}.")
            epsilon, why = matches[0], None
        self.epsilon = epsilon
        broken = np.flatnonzero(np.asarray(self.clean, bool) & ~np.asarray(self.held[epsilon], bool))
        fallback = None if has_compiled_loss(self.model) else self.judge.fallback_loss(self.y)
        rows = broken[:4 * count]
        parts = []
        for name, attack in self.attacks.items():
            if not rows.size or sum(len(p) for p in parts) >= count:
                break
            take = lambda a: take_rows(a, rows)  # noqa: E731
            found = flipped_examples(
                self.model, keras.tree.map_structure(take, self.x), take(self.y),
                single_restart(attack)[0], self.epsilon, count, self.judge.kind, name, self.seed,
                fallback)
            parts.append(found)
            rows = np.delete(rows, found.index)
        if not parts:
            return FlippedExamples(np.zeros((0,)), np.zeros((0,)), [], [], [], "none",
                                           self.epsilon, radius_note=why)
        found = FlippedExamples.concatenate(parts)
        found.radius_note = why
        return found
