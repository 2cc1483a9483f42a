"""The input-policy protocol shared by every policy family."""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_bidir import backend
from keras_bidir import constraints
from keras_bidir import inputs as inputs_lib
from keras_bidir.backend import private
from keras_bidir.sites import Sites
from keras_bidir.sites import apply_masks
from keras_bidir import losses as losses_lib
from keras_bidir import outputs as outputs_lib


def is_real(value):
    """True for Python and NumPy real numbers (not bools)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_integer(value):
    """True for Python and NumPy integers (not bools)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_positive(name, value, allow_none=False):
    """Raises a clear ValueError unless `value` is a finite real number > 0.

    Returns:
        `value` as a Python float (NumPy scalars included).
    """
    if value is None and allow_none:
        return None
    if not is_real(value):
        raise ValueError(
            f"{name} must be a positive number, got {value!r} of type {type(value).__name__}."
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"{name} must be finite and > 0, got {value!r}. "
            f"Pick a {name} on the scale of your inputs (e.g. 0.1 for data in [0, 1])."
        )
    return float(value)


def check_count(name, value, minimum=1):
    """Raises unless `value` is an integer >= `minimum`; returns it as a Python int."""
    if not is_integer(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def single_site(policy, context, inputs):
    """`(site, clip flag)` of an attack that searches one tensor (Square, FAB-T); else a clear error."""
    if len(inputs) != 1:
        raise ValueError(f"{type(policy).__name__} searches one input tensor; this model is "
                         f"perturbed at {len(inputs)} sites. Use perturb=[<input name>].")
    return inputs[0], context.clip(1)[0]


class PerturbationContext:
    """What a policy may use inside a step: the objective, randomness, ε-scale.

    Args:
        objective: callable taking the list of perturbed inputs and returning
            `(per_example_loss, outputs)`.
        seed: a `keras.random.SeedGenerator` for random starts and noise.
        scale: scalar multiplying every policy's ε and step size (driven by
            `keras_bidir.callbacks.EpsilonSchedule`).
        clip: per site, whether the policy's data range applies (True for
            model inputs, False for activations at a `PerturbationPoint`).
        masks: per site, a padding mask `(batch, time)` or None.
    """

    def __init__(self, objective, seed, scale=1.0, clip=None, masks=None, clean=None,
                 labels=None, from_logits=None, keep_misclassified=False):
        self._objective = objective
        #: False when the model outputs probabilities: `logits` turns them into
        #: logits for the attacks that read logits (margins, DLR, FAB's gaps).
        self.from_logits = from_logits
        #: Whether attacks report misclassified points (evaluation of a
        #: single-output classifier): see `misclassified`.
        self.keep_misclassified = keep_misclassified
        #: The batch's labels (None when the policy runs without them).
        self.labels = labels
        self.seed = seed
        self.scale = scale
        self._clip = clip
        self._masks = masks
        self._clean = clean
        #: Model outputs at the unperturbed sites, when a policy evaluated them
        #: (FGSM's gradient pass): the clean metrics reuse them for free.
        self.clean_outputs = None
        #: Site values a policy's `regularizer` evaluates the model at
        #: (PriorGuidedFGSM: its starting point), or None.
        self.prior_inputs = None
        #: Each batch example's index into the per-example memory (a `(batch,)`
        #: integer tensor) when the policy keeps one, else None.
        self.example_index = None

    def repeated(self, count):
        """This context over `count` copies of the batch stacked along the batch axis.

        The objective repeats the other inputs, masks and labels to match, so
        an attack can run `count` searches per example in one pass (APGD-T's
        targets). The objective must accept `repeats` (`site_objective`'s does).
        """
        objective = self._objective

        def stacked(structure):
            return keras.tree.map_structure(
                lambda t: None if t is None else ops.concatenate([t] * count, axis=0), structure)

        context = PerturbationContext(
            lambda tensors, repeats=1: objective(tensors, repeats * count), self.seed, self.scale,
            clip=self._clip, masks=None if self._masks is None else [stacked(m) for m in self._masks],
            clean=None if self._clean is None else stacked(list(self._clean)),
            labels=stacked(self.labels), from_logits=self.from_logits,
            keep_misclassified=self.keep_misclassified)
        return context

    def misclassified(self, outputs):
        """Per example, whether `outputs` misclassify it; None unless `keep_misclassified`.

        An attack that finds a misclassified point keeps it (AutoAttack's
        APGD returns the last such iterate rather than the highest loss).
        """
        if not self.keep_misclassified or self.labels is None:
            return None
        return losses_lib.margin_loss(self.labels, self.logits(outputs)) > 0

    def loss_and_outputs(self, adversarial, loss_fn=None):
        """Per-example loss (or `loss_fn(outputs)`) and outputs at `adversarial`, no gradients."""
        per_example, outputs = self._objective(adversarial)
        outputs = keras.tree.map_structure(ops.stop_gradient, outputs)
        if loss_fn is not None:
            per_example = loss_fn(outputs)
        return ops.stop_gradient(per_example), outputs

    def logits(self, outputs):
        """The logits (float32) of a single-output model's `outputs` (see `losses.as_logits`)."""
        return losses_lib.as_logits(keras.tree.flatten(outputs)[0], self.from_logits)

    def clip(self, count):
        """Per-site clipping flags for `count` sites."""
        return list(self._clip) if self._clip is not None else [True] * count

    def masks(self, count):
        """Per-site padding masks (None where unmasked) for `count` sites."""
        return list(self._masks) if self._masks is not None else [None] * count

    def loss_and_gradients(self, adversarial, loss_fn=None):
        """Per-example loss, gradients w.r.t. `adversarial`, and model outputs.

        Args:
            adversarial: list of site values.
            loss_fn: optional `outputs -> per-example loss` to differentiate
                instead of the attack loss (TRADES' and VAT's divergences).
        """

        def total(tensors):
            per_example, outputs = self._objective(tensors)
            if loss_fn is not None:
                per_example = loss_fn(outputs)
            return ops.sum(per_example), (per_example, outputs)

        _, (per_example, outputs), grads = backend.input_gradients(total, adversarial)
        if self._clean is not None and len(adversarial) == len(self._clean) and all(
            a is c for a, c in zip(adversarial, self._clean)
        ):
            self.clean_outputs = outputs
        return per_example, grads, outputs

    def loss(self, adversarial, repeats=1):
        """Per-example loss at `adversarial`, without gradients.

        Args:
            adversarial: list of site values.
            repeats: the site values hold `repeats` copies of the batch
                stacked along the batch axis (several candidates per example,
                evaluated in one forward pass); labels and the other inputs are
                repeated to match.
        """
        per_example, _ = self._objective(adversarial, repeats)
        return per_example

    def forward(self, adversarial):
        """Model outputs at `adversarial` (in the attack's mode), with gradients."""
        _, outputs = self._objective(adversarial)
        return outputs

    def outputs(self, adversarial):
        """Model outputs at `adversarial` (in the attack's mode), without gradients."""
        _, outputs = self._objective(adversarial)
        return keras.tree.map_structure(ops.stop_gradient, outputs)


class Configured:
    """`from_config`, `repr` and equality from `get_config` (input and weight policies)."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    __hash__ = object.__hash__


class InputPolicy(Configured):
    """Base class of input policies: how inputs move along their gradient.

    A policy is configuration plus pure functions. State (such as the
    persistent perturbation of free adversarial training) is created and held
    by `BidirectionalModel`, passed in, and returned updated.

    Subclasses implement `generate` and, when they use the input gradient of
    the weight step itself, `update`.

    Args:
        clip_min: lower bound of the valid data range, or None.
        clip_max: upper bound of the valid data range, or None.
        direction: +1 ascends the loss (adversarial), -1 descends it
            (input refinement).
        seed: integer seed for standalone use through `perturb`.
    """

    #: How the step uses the policy (it branches on this alone):
    #: `"attack"`: `generate` perturbs the batch once, before a single weight
    #: update. `"replay"`: the batch is replayed `replays` times, each replay a
    #: weight update whose input gradient moves the perturbation through
    #: `update` (free training). `"accumulate"`: replayed likewise, but the
    #: replays' weight gradients are averaged into one update (FreeLB).
    kind = "attack"
    #: Weight updates per batch inside one training step (replay policies).
    replays = 1
    #: Whether the policy needs the labels.
    requires_labels = True
    #: The norm used to report `perturbation_norm`.
    norm = "linf"
    #: `clean_weight` a BidirectionalModel uses when none is given (TRADES and
    #: VAT need the clean loss term).
    default_clean_weight = 0.0
    #: Whether unlabeled examples (label -1) may be mixed into the batches (VAT).
    accepts_unlabeled = False
    #: Whether the perturbed pass of the weight step must leave BatchNorm's
    #: moving statistics untouched (VAT).
    freeze_statistics = False
    #: Whether the policy reads input gradients (False: Square, noise), for the
    #: gradient-free check of `evaluate_robustness`.
    uses_gradients = True
    #: Whether `adversarial_loss` needs the clean outputs even when
    #: `clean_weight` is 0 (MART weighs its terms by the clean prediction).
    needs_clean_outputs = False

    def __init__(self, clip_min=None, clip_max=None, direction=1, seed=None):
        for name, value in (("clip_min", clip_min), ("clip_max", clip_max)):
            if value is not None and (not is_real(value) or not math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number or None, got {value!r}.")
        if clip_min is not None and clip_max is not None and clip_min >= clip_max:
            raise ValueError(
                f"clip_min ({clip_min}) must be smaller than clip_max ({clip_max}). "
                "They give the valid data range, e.g. clip_min=0.0, clip_max=1.0 "
                "for images scaled to [0, 1]."
            )
        if direction not in (1, -1):
            raise ValueError(
                f"direction must be +1 (ascend the loss: adversarial) or -1 "
                f"(descend it: input refinement), got {direction!r}."
            )
        self.clip_min = None if clip_min is None else float(clip_min)
        self.clip_max = None if clip_max is None else float(clip_max)
        self.direction = int(direction)
        self.seed = seed

    # -- protocol -----------------------------------------------------------
    def state_shapes(self, input_shapes):
        """Shapes of the persistent state tensors, one list entry per tensor."""
        return []

    def example_state_shapes(self, example_shapes):
        """Shapes (without the example axis) of the per-example memory, one entry per tensor.

        A policy that returns any keeps one row per training example; `generate`
        then receives, after the tensors of `state_shapes`, the batch's rows of
        this memory (shape `(batch,) + shape`, in the batch's order) and returns
        them updated. The step reads and writes those rows only, in place, so a
        step costs the batch, not the memory.

        Args:
            example_shapes: one shape per site, without the batch axis.
        """
        return []

    def generate(self, context, inputs, state):
        """Perturbed inputs before the weight step.

        Args:
            context: a `PerturbationContext`.
            inputs: list of clean float tensors.
            state: list of state tensors (see `state_shapes`).

        Returns:
            `(adversarial_inputs, state)`.
        """
        raise NotImplementedError

    def update(self, context, inputs, adversarial, gradients, state):
        """Uses the input gradient of the weight step (one per replay).

        Returns:
            `(adversarial_inputs, state)` for the next replay / batch.
        """
        return adversarial, state

    def attack_loss(self):
        """A per-example loss this policy ascends instead of the compiled one, or None."""
        return None

    def adversarial_loss(self, y, clean_outputs, adversarial_outputs):
        """The per-example loss term on perturbed inputs, or None for the compiled loss.

        Args:
            y: the labels.
            clean_outputs: model outputs on clean inputs, from the weight
                step's own tape (None when `clean_weight` is 0).
            adversarial_outputs: model outputs on the perturbed inputs.
        """
        return None

    def regularizer(self, context, adversarial_outputs):
        """An extra per-example loss added to the adversarial term, or None.

        Args:
            context: the step's `PerturbationContext`, after `generate`.
            adversarial_outputs: model outputs on the perturbed inputs (with
                gradients to the weights).
        """
        return None

    def attack(self, context, inputs):
        """Perturbed inputs for evaluation: the policy used as an attack."""
        shapes = self.state_shapes([ops.shape(t) for t in inputs])
        # A fresh memory for this batch alone: one row per example, nothing learnt yet.
        batch = ops.shape(inputs[0])[0]
        shapes += [(batch,) + tuple(s) for s in self.example_state_shapes(
            [tuple(t.shape[1:]) for t in inputs])]
        # Several state tensors per site come site after site, in rounds.
        state = [ops.zeros(s, dtype=inputs[i % len(inputs)].dtype) for i, s in enumerate(shapes)]
        adversarial, _ = self.generate(context, inputs, state)
        return adversarial

    # -- helpers for subclasses ---------------------------------------------
    def data_range(self, clip=True):
        """The data range `(clip_min, clip_max)` of a site (`clip=False`: an activation, open)."""
        return (self.clip_min, self.clip_max) if clip else (None, None)

    def _clip(self, x, clip=True):
        return constraints.clip_to_range(x, *self.data_range(clip))

    def _project(self, x, candidate, epsilon, clip=True):
        """`candidate` pulled back into the ε-ball around `x` and the data range."""
        return constraints.perturbed(x, candidate - x, epsilon, self.norm, *self.data_range(clip))

    def _random_start(self, context, x, epsilon, clip=True):
        noise = constraints.random_in_ball(ops.shape(x), epsilon, self.norm, x.dtype, context.seed)
        return self._project(x, x + noise, epsilon, clip)

    def _step(self, x, adversarial, gradient, step_size, epsilon, clip=True):
        """One projected ascent step from `adversarial`, kept in ball and range."""
        step = constraints.as_dtype(step_size * self.direction, x.dtype)
        moved = adversarial + step * constraints.ascent_direction(gradient, self.norm)
        return self._project(x, moved, epsilon, clip)

    def _step_sites(self, context, inputs, adversarial, gradients, step_size, epsilon):
        """`_step` at every site, with each site's clipping rule."""
        clip = context.clip(len(inputs))
        return [
            self._step(x, a, g, step_size, epsilon, c)
            for x, a, g, c in zip(inputs, adversarial, gradients, clip)
        ]

    def _ascend(self, context, inputs, adversarial, steps, step_size, epsilon):
        """`steps` projected ascent steps from `adversarial` (no weight updates)."""
        for _ in range(steps):
            _, grads, _ = context.loss_and_gradients(adversarial)
            adversarial = self._step_sites(context, inputs, adversarial, grads, step_size, epsilon)
        return adversarial

    # -- standalone use -------------------------------------------------------
    def perturb(self, model, x, y=None, loss=None, training=False, perturb=None, seed=None,
                scale=1.0, from_logits=None, keep_misclassified=False):
        """Perturbs a batch against `model`: the policy used as an attack.

        Args:
            model: any Keras model (a `BidirectionalModel` or a plain one).
            x: a batch of inputs (array, tensor, list or dict).
            y: labels; required by gradient-based policies.
            loss: loss to ascend; defaults to the model's compiled loss, else
                cross-entropy matched to the labels and the output activation.
            training: run the model in training mode during the attack.
            perturb: optional input names to restrict perturbation to.
            seed: a `keras.random.SeedGenerator` or integer for random starts;
                defaults to the policy's `seed`. Pass a generator when calling
                `perturb` inside a compiled function.
            scale: multiplies ε and the step size (a tensor lets one compiled
                function serve every radius).
            from_logits: whether the model outputs logits (False:
                probabilities). Attacks that read logits (margin, DLR: Square,
                APGD-T, FAB-T, `APGD(loss="dlr")`) convert probabilities to
                logits first. Default: what the compiled loss or the output
                layer says, else decided from the outputs (eagerly) or refused.
            keep_misclassified: for a classifier with one output, return the
                misclassified points an attack found on its way (as
                AutoAttack's APGD does) rather than its highest-loss points.

        Returns:
            `x` with its floating-point inputs perturbed.

        Example:

        >>> x_adv = keras_bidir.policies.PGD(0.1, steps=10).perturb(model, x, y)
        """
        x, y, sites, clean, masks, context = self._prepare(
            model, x, y, loss, training, perturb, seed, scale, from_logits, keep_misclassified
        )
        if sites.point_names:
            raise ValueError(
                "This model is perturbed at PerturbationPoints "
                f"{sites.point_names}, which perturb() cannot return as inputs. "
                "Use attack_outputs() to get the model outputs under attack."
            )
        adversarial = self.attack(context, clean)
        return inputs_lib.replace_inputs(x, sites.input_indices, adversarial)

    def attack_outputs(self, model, x, y=None, loss=None, training=False, perturb=None,
                       seed=None, scale=1.0, from_logits=None, keep_misclassified=False):
        """The model's outputs (inference mode) under this attack.

        Works for input sites and for `PerturbationPoint` activations alike;
        the arguments are those of `perturb`.
        """
        x, y, sites, clean, masks, context = self._prepare(
            model, x, y, loss, training, perturb, seed, scale, from_logits, keep_misclassified
        )
        adversarial = apply_masks(clean, self.attack(context, clean), masks)
        return sites.forward(model, x, adversarial, clean, masks, training=False)

    def _prepare(self, model, x, y, loss, training, perturb, seed, scale, from_logits=None,
                 keep_misclassified=False):
        x = keras.tree.map_structure(ops.convert_to_tensor, x)
        if y is None and self.requires_labels:
            raise ValueError(
                f"{type(self).__name__} follows the loss gradient and needs the "
                "labels: call perturb(model, x, y)."
            )
        if y is not None:
            y = keras.tree.map_structure(ops.convert_to_tensor, y)
        if perturb is None:
            perturb = getattr(model, "perturb_names", None)
        sites = Sites(model, x, perturb)
        loss = loss if loss is not None else self.attack_loss()
        if from_logits is None and (losses_lib.reads_logits(loss) or keep_misclassified):
            from_logits = outputs_are_logits(model, x, y)
        per_example = resolve_attack_loss(model, y, loss, from_logits)
        clean, masks, _ = sites.record(model, x, training)
        seed = (
            seed
            if isinstance(seed, keras.random.SeedGenerator)
            else keras.random.SeedGenerator(self.seed if seed is None else seed)
        )
        context = PerturbationContext(
            site_objective(model, x, y, sites, clean, masks, per_example, training),
            seed,
            scale,
            clip=sites.clip_flags(),
            masks=masks,
            labels=y,
            from_logits=from_logits,
            keep_misclassified=keep_misclassified,
        )
        return x, y, sites, clean, masks, context

    # -- serialization --------------------------------------------------------
    def get_config(self):
        return {
            "clip_min": self.clip_min,
            "clip_max": self.clip_max,
            "direction": self.direction,
            "seed": self.seed,
        }


class BallPolicy(InputPolicy):
    """Base class of the policies bounded by an ε-ball of a norm (every built-in attack).

    Args:
        epsilon: radius of the ball (> 0), in the units of the inputs.
        norm: `"linf"` or `"l2"`.
        **kwargs: `clip_min`, `clip_max`, `direction` and `seed`, as for
            `InputPolicy`.

    Example:

    ```python
    class OneStep(keras_bidir.policies.BallPolicy):
        def generate(self, context, inputs, state):
            step = pieces.chain(pieces.gradient_step(1.0), pieces.project(),
                                pieces.clip_to_range())
            return step(self, context, inputs, list(inputs), self.epsilon * context.scale), state
    ```
    """

    def __init__(self, epsilon, norm="linf", **kwargs):
        super().__init__(**kwargs)
        self.epsilon = check_positive("epsilon", epsilon)
        self.norm = constraints.standardize_norm(norm)

    def get_config(self):
        return {"epsilon": self.epsilon, "norm": self.norm, **super().get_config()}


def resolve_attack_loss(model, y, loss=None, from_logits=None):
    """A per-example loss function for attacking `model`.

    A loss that reads logits (`losses.reads_logits`) is applied to the
    logits of the outputs: probabilities when `from_logits` is False.
    """
    if loss is not None:
        if losses_lib.reads_logits(loss):
            return losses_lib.on_outputs(loss, from_logits)
        return losses_lib.per_example_loss_fn(loss)
    compiled = getattr(getattr(model, "step_state", None), "attack_loss", None)
    if compiled is not None:
        return compiled
    compiled_loss = getattr(model, "loss", None)
    if compiled_loss is not None:
        return losses_lib.per_example_loss_fn(compiled_loss)
    if y is None:
        return None
    return losses_lib.per_example_loss_fn(losses_lib.default_classification_loss(model, y))


def outputs_are_logits(model, x, y):
    """Whether `model`'s outputs on `x` are logits, for an attack that reads logits.

    What the compiled loss or the output layer says; else, run eagerly, what
    the outputs themselves show (`outputs.describe_outputs`, which refuses a
    single output it cannot read). Inside a compiled function a single
    output that nothing declares is refused; several outputs that nothing
    declares are read as logits (their argmax, and so the margins' sign,
    is the same for probabilities).
    """
    declared = outputs_lib.declared_from_logits(model)
    if declared is not None:
        return declared
    outputs = keras.tree.flatten(model(x, training=False))[0]
    if backend.is_symbolic(outputs):
        if outputs.shape[-1] == 1:
            raise ValueError(
                "Cannot tell whether this binary model outputs a probability (sigmoid) or a "
                "logit, and the attack reads logits: pass from_logits=False if the model "
                "applies a sigmoid (e.g. in call()), from_logits=True if it returns raw scores.")
        return None
    if y is None:
        return None
    kind = outputs_lib.describe_outputs(model, outputs, keras.tree.flatten(y)[0])
    return kind.from_logits


def _repeat(structure, repeats):
    """Every tensor of `structure` stacked `repeats` times along the batch axis."""
    if repeats == 1:
        return structure
    return keras.tree.map_structure(
        lambda t: None if t is None else ops.concatenate([t] * repeats, axis=0), structure
    )


def seed_generators(policy):
    """The `SeedGenerator`s a policy's own layers draw from (augmentation layers).

    The model tracks them, so their state travels with its variables (JAX
    threads it through the jitted step instead of freezing it).
    """
    found, seen = [], set()

    def visit(value):
        if id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, keras.random.SeedGenerator):
            found.append(value)
        elif isinstance(value, keras.layers.Layer):
            for layer in private.nested_layers(value, include_self=True):
                for generator in private.seed_generators(layer):
                    visit(generator)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif isinstance(value, InputPolicy):
            for item in vars(value).values():
                visit(item)

    visit(policy)
    return found


def site_objective(model, x, y, sites, clean, masks, per_example_loss, training=False):
    """`objective(site_values, repeats=1) -> (per_example_loss, outputs)` for one batch."""

    def objective(tensors, repeats=1):
        outputs = sites.forward(
            model, _repeat(x, repeats), tensors, _repeat(list(clean), repeats),
            [_repeat(m, repeats) for m in masks], training,
        )
        if per_example_loss is None:
            return ops.zeros((ops.shape(tensors[0])[0],)), outputs
        return per_example_loss(_repeat(y, repeats), outputs), outputs

    return objective
