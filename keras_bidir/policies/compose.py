"""Combining policies: Compose (in order) and RandomChoice (one per batch)."""

import keras
from keras import ops

from keras_bidir import backend
from keras_bidir.policies import registry
from keras_bidir.policies.base import InputPolicy


def _check_members(policies, name, stateful):
    policies = [registry.get(p) for p in policies]
    if not policies:
        raise ValueError(f"{name} needs at least one policy.")
    for policy in policies:
        if policy.kind != "attack":
            raise ValueError(
                f"{name} combines policies that perturb the batch before the weight step; "
                f"{type(policy).__name__} replays the batch over several weight updates. Use "
                "it on its own.")
        if not stateful and (policy.state_shapes([(1, 1)]) or policy.example_state_shapes([()])):
            raise ValueError(
                f"{name} draws one policy per batch, so a policy that keeps state across "
                f"batches ({type(policy).__name__}) would see only some of them. Use Compose, "
                "or the policy on its own.")
    return policies


def _split(sizes, tensors):
    """`tensors` cut into consecutive parts of the given sizes."""
    parts, start = [], 0
    for size in sizes:
        parts.append(list(tensors[start:start + size]))
        start += size
    return parts


class _Combination(InputPolicy):
    #: Whether members may keep state across batches (Compose: each keeps its own part).
    stateful_members = False

    def __init__(self, policies, **kwargs):
        super().__init__(**kwargs)
        self.policies = _check_members(policies, type(self).__name__, self.stateful_members)

    @property
    def requires_labels(self):
        return any(p.requires_labels for p in self.policies)

    @property
    def norm(self):
        return self.policies[-1].norm

    def get_config(self):
        config = super().get_config()
        for key in ("clip_min", "clip_max", "direction"):
            config.pop(key)
        return {"policies": [keras.saving.serialize_keras_object(p) for p in self.policies],
                **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["policies"] = [keras.saving.deserialize_keras_object(p)
                              for p in config["policies"]]
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_bidir")
class Compose(_Combination):
    """Applies policies in order: each perturbs the output of the previous one.

    `Compose([Augment([...]), PGD(...)])` augments the batch, then runs PGD
    around the augmented images (its ε-ball is centred there). The training
    loss is that of the last policy that defines one (TRADES, VAT), else the
    compiled loss; the attack loss and the regularizer likewise.

    Members may keep state across batches (a per-example memory such as
    ATAS's, a persistent perturbation): each keeps its own part of the
    composition's state. Replaying policies (FreeAdversarial, FreeLB) run on
    their own.

    Args:
        policies: list of policies (or names), applied first to last.
        seed: integer seed for standalone use.

    Example:

    >>> policy = keras_bidir.policies.Compose([
    ...     keras_bidir.policies.Augment(keras.layers.RandomTranslation(0.1, 0.1)),
    ...     keras_bidir.policies.PGD(0.2, steps=7, clip_min=0.0, clip_max=1.0)])
    """

    stateful_members = True

    def __init__(self, policies, seed=None):
        super().__init__(policies, seed=seed)

    @property
    def num_examples(self):
        """The largest `num_examples` of the members that keep a per-example memory, or None."""
        counts = [p.num_examples for p in self.policies if getattr(p, "num_examples", None)]
        return max(counts) if counts else None

    def state_shapes(self, input_shapes):
        return [s for p in self.policies for s in p.state_shapes(input_shapes)]

    def example_state_shapes(self, example_shapes):
        return [s for p in self.policies for s in p.example_state_shapes(example_shapes)]

    @property
    def needs_clean_outputs(self):
        return any(p.needs_clean_outputs for p in self.policies)

    @property
    def default_clean_weight(self):
        return max(p.default_clean_weight for p in self.policies)

    @property
    def accepts_unlabeled(self):
        return all(p.accepts_unlabeled or not p.requires_labels for p in self.policies) and any(
            p.accepts_unlabeled for p in self.policies)

    @property
    def freeze_statistics(self):
        return any(p.freeze_statistics for p in self.policies)

    def attack_loss(self):
        losses = [p.attack_loss() for p in self.policies if p.attack_loss() is not None]
        return losses[-1] if losses else None

    def adversarial_loss(self, y, clean_outputs, adversarial_outputs):
        for policy in reversed(self.policies):
            loss = policy.adversarial_loss(y, clean_outputs, adversarial_outputs)
            if loss is not None:
                return loss
        return None

    def regularizer(self, context, adversarial_outputs):
        for policy in reversed(self.policies):
            term = policy.regularizer(context, adversarial_outputs)
            if term is not None:
                return term
        return None

    def generate(self, context, inputs, state):
        # The state holds every member's persistent tensors, then every member's
        # per-example memory (the order in which the step builds them).
        shapes = [tuple(t.shape) for t in inputs]
        rows = [tuple(t.shape[1:]) for t in inputs]
        own = [len(p.state_shapes(shapes)) for p in self.policies]
        memory = [len(p.example_state_shapes(rows)) for p in self.policies]
        owned = _split(own, state[:sum(own)])
        remembered = _split(memory, state[sum(own):])
        current, moved_own, moved_memory = list(inputs), [], []
        for policy, kept, rows_kept, count in zip(self.policies, owned, remembered, own):
            current, moved = policy.generate(context, current, kept + rows_kept)
            moved_own += list(moved[:count])
            moved_memory += list(moved[count:])
        return current, moved_own + moved_memory


@keras.saving.register_keras_serializable(package="keras_bidir")
class RandomChoice(_Combination):
    """Applies one of several policies per batch, drawn with the given weights.

    All members train with the compiled loss (policies with their own training
    loss, TRADES and VAT, cannot be mixed in). The draw comes from the model's
    seed stream.

    Args:
        policies: list of policies (or names).
        weights: relative probabilities (default: uniform).
        seed: integer seed for standalone use.

    Example:

    >>> policy = keras_bidir.policies.RandomChoice(
    ...     [keras_bidir.policies.PGD(0.2, steps=7), keras_bidir.policies.Augment(
    ...         keras.layers.RandomRotation(0.05))], weights=[0.7, 0.3])
    """

    def __init__(self, policies, weights=None, seed=None):
        super().__init__(policies, seed=seed)
        for policy in self.policies:
            if type(policy).adversarial_loss is not InputPolicy.adversarial_loss or (
                    policy.default_clean_weight > 0):
                raise ValueError(
                    f"RandomChoice cannot include {type(policy).__name__}, which trains on its "
                    "own loss; use Compose or the policy on its own."
                )
        if weights is None:
            weights = [1.0] * len(self.policies)
        weights = [float(w) for w in weights]
        if len(weights) != len(self.policies) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"weights must be {len(self.policies)} non-negative numbers with a positive sum, "
                f"got {weights}."
            )
        self.weights = [w / sum(weights) for w in weights]

    def generate(self, context, inputs, state):
        cumulative = ops.convert_to_tensor(
            [sum(self.weights[: i + 1]) for i in range(len(self.weights))])
        draw = keras.random.uniform((), seed=context.seed)
        index = ops.minimum(ops.sum(ops.cast(draw >= cumulative, "int32")),
                            len(self.policies) - 1)
        branches = [
            (lambda *xs, p=p: tuple(p.generate(context, list(xs), [])[0]))
            for p in self.policies
        ]
        chosen = list(backend.switch(index, branches, *inputs))
        # Tensors a branch stored on the context (clean outputs) live inside that branch.
        context.clean_outputs = None
        return chosen, state

    def get_config(self):
        return {"weights": self.weights, **super().get_config()}
