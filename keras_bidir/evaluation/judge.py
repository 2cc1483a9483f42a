"""What a model's outputs mean for scoring: correct or not (classifiers), loss (regression)."""

import numpy as np
from keras import ops

from keras_bidir import data_utils
from keras_bidir import losses as losses_lib
from keras_bidir import outputs as outputs_lib
from keras_bidir.evaluation.runner import batches
from keras_bidir.evaluation.runner import head
from keras_bidir.evaluation.runner import num_examples


class Judge:
    """How a model's outputs are scored against the labels, per example.

    Classifiers: correct or not (an example is robust when correct under
    every attack). Regression: the per-example loss (its worst case is the
    largest over the attacks).

    Args:
        model: the model.
        kind: an `OutputKind` (see `describe`).
        output: the head scored, for multi-output models.
        classes: the scored head's outputs per example (1 for a single logit).
    """

    def __init__(self, model, kind, output=None, classes=None):
        self.model, self.kind, self.output = model, kind, output
        #: Logits (or probabilities) per example of the scored head.
        self.classes = classes
        self.measure = "accuracy"
        if not kind.is_classification:
            loss = outputs_lib.compiled_loss(model, _loss_key(model, output))
            loss = loss if loss is not None else "mean_squared_error"
            self.measure = outputs_lib.loss_name(loss) or "loss"
            self._loss = losses_lib.per_example_loss_fn(loss)

    @classmethod
    def describe(cls, model, x, y, output=None, from_logits=None, batch_size=512):
        """A judge for `model`, deciding what its outputs are from the first batch.

        Raises:
            ValueError: for empty data, or labels that are no class of the model.
        """
        if num_examples(y) == 0:
            raise ValueError("The evaluation data is empty: (x, y) holds no example. Pass the "
                             "test set, e.g. (x_test, y_test).")
        xb, yb = next(batches(x, y, batch_size))
        outputs = head(model.predict_on_batch(xb), output, model)
        kind = outputs_lib.describe_outputs(
            model, outputs, head(yb, output, model), from_logits,
            loss=outputs_lib.compiled_loss(model, _loss_key(model, output)),
        )
        shape = np.shape(ops.convert_to_numpy(outputs))
        judge = cls(model, kind, output, int(shape[-1]) if len(shape) > 1 else 1)
        judge.check_labels(head(y, output, model))
        return judge

    def check_labels(self, y):
        """Refuses labels that are no class of the model, naming them."""
        y = np.asarray(y)
        if self.kind.task == outputs_lib.MULTICLASS and (y.ndim == 1 or y.shape[-1] == 1):
            values = y[np.isfinite(y)] if np.issubdtype(y.dtype, np.floating) else y
            if values.size and np.any(values != np.round(values)):
                raise ValueError("Sparse labels must be class indices (integers); y holds "
                                 "fractions. Pass integer labels or one-hot rows.")
            data_utils.check_label_range(values.astype("int64"), self.classes)
        elif self.kind.task == outputs_lib.BINARY:
            if y.size and (np.nanmin(y) < 0 or np.nanmax(y) > 1):
                raise ValueError(f"A binary classifier's labels must lie in [0, 1] (0/1 or "
                                 f"probabilities), but y ranges over [{np.nanmin(y):g}, "
                                 f"{np.nanmax(y):g}].")

    @property
    def attack_from_logits(self):
        """`from_logits` for the attacks: a multi-class output nothing declares is read as
        logits (its argmax, and so the margins' sign, is the same for probabilities)."""
        if self.kind.from_logits is None and self.kind.task == outputs_lib.MULTICLASS:
            return True
        return self.kind.from_logits

    @property
    def single_classifier(self):
        """Whether the model is a classifier scored on its only output."""
        return self.kind.is_classification and self.output is None

    def head(self, structure):
        """The scored head of outputs or labels."""
        return head(structure, self.output, self.model)

    def fallback_loss(self, y):
        """The attack loss for a model compiled without one."""
        if isinstance(y, (dict, list, tuple)):
            raise ValueError("Compile the multi-output model with its loss (or pass loss=) to attack it.")
        return self.kind.default_loss(self.model, y)

    def score(self, outputs, y):
        """Per-example scores of one batch: bool correct, or float loss."""
        outputs = ops.convert_to_numpy(head(outputs, self.output, self.model))
        y = head(y, self.output, self.model)
        if self.kind.is_classification:
            return self.kind.predict(outputs) == self.kind.labels(y)
        return np.asarray(ops.convert_to_numpy(self._loss(y, outputs)), dtype="float64")

    def worst(self, a, b):
        """The per-example worst case of two score arrays."""
        return a & b if self.kind.is_classification else np.maximum(a, b)

    def summary(self, scores):
        return float(np.mean(scores))

    def stronger(self, a, b, tolerance):
        """Whether summary `a` is worse for the model than `b` beyond `tolerance`."""
        if self.kind.is_classification:
            return a < b - tolerance
        return a > b + tolerance * max(abs(a), abs(b), 1e-12)


def _loss_key(model, output):
    """`output` as the compiled loss indexes it (names stay names for dict losses)."""
    if isinstance(output, str) and isinstance(getattr(getattr(model, "step_state", None), "loss_spec", None) or getattr(model, "loss", None), (list, tuple)):
        base = getattr(model, "base_model", model)
        names = list(getattr(base, "output_names", None) or [])
        return names.index(output) if output in names else output
    return output
