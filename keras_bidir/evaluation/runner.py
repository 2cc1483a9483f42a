"""The attack runner: one attack against one model, compiled once, batch by batch.

The bottom of `keras_bidir.evaluation`: what the other modules run (`AttackRunner`),
how they slice the data (`batches`, `head`) and read it (`materialize`).
"""

import keras
import numpy as np
from keras import ops

from keras_bidir import backend
from keras_bidir.evaluation import spill
from keras_bidir.policies.base import resolve_attack_loss


def single_restart(policy):
    config = policy.get_config()
    if config.get("restarts", 1) == 1:
        return policy, 1
    restarts = config["restarts"]
    config["restarts"] = 1
    return policy.__class__.from_config(config), restarts


def head(structure, output, model=None):
    """One output head (or its labels) from a nested structure.

    Args:
        structure: model outputs or labels: one array, or a dict / list of them.
        output: a head name (dict key or model output name), an index, or
            None for single-output structures.
        model: consulted for its output names when `structure` is a list.
    """
    if not isinstance(structure, (dict, list, tuple)):
        return structure
    if output is None:
        if len(structure) == 1:
            return next(iter(structure.values())) if isinstance(structure, dict) else structure[0]
        names = list(structure) if isinstance(structure, dict) else output_names(model, len(structure))
        raise ValueError(
            f"This model has {len(structure)} outputs {names}: pass output=<name> to say which "
            "head's accuracy to report (the attack ascends the total compiled loss)."
        )
    if isinstance(structure, dict):
        if output not in structure:
            raise ValueError(f"Unknown output {output!r}; the outputs are {sorted(structure)}.")
        return structure[output]
    if isinstance(output, str):
        names = output_names(model, len(structure))
        if output not in names:
            raise ValueError(f"Unknown output {output!r}; the outputs are {names}.")
        output = names.index(output)
    return structure[output]


def output_names(model, count):
    base = getattr(model, "base_model", model)
    names = list(getattr(base, "output_names", None) or [])
    return names if len(names) == count else list(range(count))


class _AttackStep:
    """One attack against one model as a callable object.

    TensorFlow counts the traces of a compiled Python function per code
    object; as an object of its own, each distinct attack is compiled (and
    counted) separately instead of looking like retraces of one function.
    """

    def __init__(self, model, attack, loss, seed, from_logits, keep_misclassified):
        self.model, self.attack, self.loss, self.seed = model, attack, loss, seed
        self.from_logits, self.keep_misclassified = from_logits, keep_misclassified

    def __call__(self, x, y, scale):
        return self.attack.attack_outputs(
            self.model, x, y, loss=self.loss, seed=self.seed, scale=scale,
            from_logits=self.from_logits, keep_misclassified=self.keep_misclassified,
        )


class AttackRunner:
    """Runs one attack against one model, compiled once, batch by batch.

    Args:
        model: a Keras model (BidirectionalModel or plain).
        attack: an `InputPolicy` used as the attack.
        loss: loss to ascend (default: the attack's own, else the model's
            compiled loss, else `fallback_loss`).
        seed: seed of the random starts.
        fallback_loss: loss for models compiled without one (derived from
            what the outputs are: see `keras_bidir.outputs`).
        select: for multi-output models, picks the evaluated head from labels
            and outputs; an attack's own loss (DLR) is taken on that head.
        from_logits: False when the evaluated head outputs probabilities:
            attacks that read logits (margins, DLR) get its logits.
        keep_misclassified: the attacks keep the misclassified points they
            find (a single-output classifier's evaluation).
    """

    def __init__(self, model, attack, loss=None, seed=0, fallback_loss=None, select=None,
                 from_logits=None, keep_misclassified=False):
        self.model = model
        self.from_logits = from_logits
        self.keep_misclassified = keep_misclassified
        self.attack = attack
        self.loss = loss
        self.fallback_loss = fallback_loss
        self.select = select
        self._seed = keras.random.SeedGenerator(seed)
        self._function = None

    def _build(self, y_example):
        own = self.attack.attack_loss() if self.loss is None else None
        loss = self.loss if self.loss is not None else own
        if loss is None and not has_compiled_loss(self.model):
            loss = self.fallback_loss
        per_example = resolve_attack_loss(self.model, y_example, loss, self.from_logits)
        if own is not None and self.select is not None:
            on_all = per_example
            per_example = lambda y, outputs: on_all(self.select(y), self.select(outputs))  # noqa: E731
        self._function = backend.function(
            _AttackStep(self.model, self.attack, per_example, self._seed, self.from_logits,
                        self.keep_misclassified),
            state=lambda: list(self.model.variables) + [self._seed.state])

    def reseed(self, value):
        """Starts the random stream afresh from `value` (each batch draws from its own seed)."""
        state = self._seed.state
        state.assign(ops.cast(ops.convert_to_tensor([value, 0]), state.dtype))

    def __call__(self, x, y, epsilon=None):
        """Model outputs under attack for the batch `(x, y)`, at `epsilon` if given.

        The radius is a runtime argument: one compiled function serves all.
        """
        if self._function is None:
            self._build(y)
        scale = 1.0 if epsilon is None else float(epsilon) / self.attack.epsilon
        return self._function(x, y, ops.convert_to_tensor(scale, "float32"))


def has_compiled_loss(model):
    return getattr(getattr(model, "step_state", None), "attack_loss", None) is not None or getattr(model, "loss", None) is not None


def num_examples(y):
    return len(keras.tree.flatten(y)[0])


def batches(x, y, batch_size):
    """`(xb, yb)` batch after batch."""
    for index in range(-(-num_examples(y) // batch_size)):
        yield batch_at(x, y, batch_size, index)


def batch_at(x, y, batch_size, index):
    """`(xb, yb)` of batch `index` alone (inputs on disk are read for it only)."""
    start = index * batch_size
    take = lambda a: a[start:start + batch_size]  # noqa: E731
    return keras.tree.map_structure(take, x), keras.tree.map_structure(take, y)


def materialize(data, on_disk=False):
    """`(x, y)` from arrays or an iterable of `(x, y)` batches.

    Arrays are returned as they are. Batches (a `tf.data.Dataset`, a
    `keras.utils.PyDataset`, a generator) are read once; with `on_disk` their
    inputs are kept in files and read back a batch at a time (`spill`), so
    memory does not grow with the number of examples; otherwise they are
    concatenated in memory. Labels are always in memory.
    """
    if isinstance(data, (tuple, list)) and len(data) == 2 and not hasattr(data[0], "element_spec"):
        x, y = data
        return x, keras.tree.map_structure(np.asarray, y)
    if on_disk:
        return spill.spill(data)
    xs, ys = [], []
    for batch in data:
        bx, by, _ = keras.utils.unpack_x_y_sample_weight(batch)
        if by is None:
            raise ValueError("evaluate_robustness needs labelled data: batches of (x, y).")
        xs.append(keras.tree.map_structure(ops.convert_to_numpy, bx))
        ys.append(keras.tree.map_structure(ops.convert_to_numpy, by))
    if not xs:
        raise ValueError("The evaluation data is empty.")
    concat = lambda *parts: np.concatenate(parts)  # noqa: E731
    return keras.tree.map_structure(concat, *xs), keras.tree.map_structure(concat, *ys)
