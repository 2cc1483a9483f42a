"""The bidirectional training step, backend-neutral: what one step computes.

A `Step` holds one batch's pieces (labels and their mask, the perturbation
sites and their clean values, the policy context) and describes in
`keras.ops` the objective, one weight update and the bookkeeping around it.
Each backend's `train_step` (`keras_bidir/steps/<name>.py`) only orders these
calls, the way Keras splits `trainers/trainer.py` from
`backend/<name>/trainer.py`:

    step = Step(model, data)
    adversarial, state = step.start()                      # the input policy's attack
    adversarial, state, finite, grads, outputs = step.weight_update(adversarial, state)
    ...                                                     # replay policies: more updates
    return step.finish(finite, state, outputs)             # metrics, state, logs
"""

import keras
from keras import ops
from keras import tree

from keras_bidir import backend
from keras_bidir import constraints
from keras_bidir import example_index
from keras_bidir.fit_data import missing_labels_error
from keras_bidir import losses as losses_lib
from keras_bidir import outputs as outputs_lib
from keras_bidir.backend import private
from keras_bidir.metrics import update_labeled
from keras_bidir.policies.base import PerturbationContext
from keras_bidir.policies.base import site_objective
from keras_bidir.sites import Sites
from keras_bidir.sites import apply_masks
from keras_bidir.step_state import results


def all_finite(tensors):
    """A scalar bool: every tensor is finite (sparse gradients included)."""
    checks = []
    for tensor in tensors:
        if tensor is None:
            continue
        values = getattr(tensor, "values", tensor)  # tf.IndexedSlices
        checks.append(ops.all(ops.isfinite(ops.cast(values, "float32"))))
    return ops.all(ops.stack(checks)) if checks else ops.convert_to_tensor(True)


def mean_loss(per_example, sample_weight):
    """Batch mean of a per-example loss, as Keras reduces compiled losses."""
    per_example = ops.cast(per_example, "float32")
    if sample_weight is not None:
        per_example = per_example * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    return private.scale_loss_for_distribution(ops.mean(per_example))


def labeled_batch(policy, y, sample_weight):
    """`(labels, label sample weights, loss scale, labeled mask)` for batches with label -1.

    Policies that accept unlabeled examples (VAT) get -1 labels replaced by 0
    with sample weight 0, and the label losses rescaled to a mean over the
    labeled examples. Other policies get the batch unchanged.
    """
    if y is None or not policy.accepts_unlabeled or isinstance(y, (list, tuple, dict)):
        return y, sample_weight, 1.0, None
    if "int" not in keras.backend.standardize_dtype(y.dtype):
        return y, sample_weight, 1.0, None
    mask = ops.cast(ops.reshape(y >= 0, (-1,)), "float32")
    weight = mask
    if sample_weight is not None:
        weight = weight * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
    scale = ops.cast(ops.size(mask), "float32") / ops.maximum(ops.sum(mask), 1.0)
    return ops.where(y >= 0, y, ops.zeros_like(y)), weight, scale, mask


def perturbation_norm(norm, clean, adversarial):
    """Mean per-example norm of x̃ − x (in `norm`), averaged over the sites."""
    norms = [
        constraints.per_example_norm(ops.cast(a, "float32") - ops.cast(x, "float32"), norm)
        for x, a in zip(clean, adversarial)
    ]
    return ops.mean(ops.stack([ops.mean(n) for n in norms]))


def moving_statistics(model):
    """BatchNorm moving means and variances of the model's base model."""
    variables = []
    for layer in private.nested_layers(model.base_model, include_self=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            variables += [layer.moving_mean, layer.moving_variance]
    return variables


def kept_statistics(statistics, fn):
    """Runs `fn()` and puts BatchNorm's moving statistics back as they were."""
    frozen = [ops.copy(ops.convert_to_tensor(v)) for v in statistics]  # a snapshot
    result = fn()
    for variable, value in zip(statistics, frozen):
        variable.assign(value)
    return result


def training_context(model, x, y, sites, clean, masks):
    """The `PerturbationContext` of `model`'s policy on one batch (training and `inspect`).

    The policy's own attack loss, else the compiled one; a margin / DLR loss
    reads logits, so a probability output is turned into them.
    """
    own = model.policy.attack_loss()
    from_logits = None
    if losses_lib.reads_logits(own):
        from_logits = outputs_lib.declared_from_logits(model)
        own = losses_lib.on_outputs(own, from_logits)
    training = model.attack_mode == "training"
    objective = site_objective(model, x, y, sites, clean, masks,
                               own or model.step_state.attack_loss, training=training)
    return PerturbationContext(
        objective, model.seed_generator, ops.convert_to_tensor(model.perturbation_scale),
        clip=sites.clip_flags(), masks=masks, clean=clean, labels=y, from_logits=from_logits)


def step_logs(model):
    """The step's logs: clean metrics (when measured), then the adversarial side."""
    compiled = private.compiled_metrics(model)
    clean = [m for m in model.metrics if model.clean_metrics or m is not compiled]
    return results(clean + model.training_metrics)


def test_logs(model, data):
    """The clean loss and compiled metrics of one batch (Keras' test step), as logs."""
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    y_pred = model(x, training=False)
    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=False)
    private.loss_tracker(model).update_state(
        private.unscale_loss_for_distribution(loss), sample_weight=ops.shape(tree.flatten(x)[0])[0])
    compiled = private.compiled_metrics(model)
    if compiled is not None and y is not None:
        compiled.update_state(y, y_pred, sample_weight)
    return backend.step_logs(results(model.metrics))


def run_step(model, data, replay):
    """The `Step` calls in order; `replay` (the backend's loop) makes a replay policy's updates 2..m.

    Attack policies (FGSM, PGD, TRADES, ...) make one weight update from the
    perturbation they generated; replay policies (FreeAdversarial, FreeLB) make
    `replays` updates, each moving the perturbation with the input gradient of
    the one before.

    Returns:
        The step's logs.
    """
    step = Step(model, data)
    adversarial, state = step.start()
    adversarial, state, finite, gradients, clean_outputs = step.weight_update(adversarial, state)
    if model.policy.kind in ("replay", "accumulate"):
        state, finite = replay(step, adversarial, state, finite, gradients)
    return step.finish(finite, state, clean_outputs)


class Step:
    """One training step of a `BidirectionalModel` on one batch.

    Args:
        model: the `BidirectionalModel`.
        data: the batch, `(x, y[, sample_weight])`.
    """

    def __init__(self, model, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, self.example_index = example_index.split(x)
        policy, self.state = model.policy, model.step_state
        if self.example_index is None and self.state.example_variables:
            raise ValueError(
                f"{type(policy).__name__} keeps a memory per training example and needs each "
                "example's index in the batch (keras_bidir.example_index).")
        if y is None and policy.requires_labels:
            raise missing_labels_error(policy)
        if model.optimizer is not None and not model.optimizer.built:
            # Build now (Keras would on the first apply) so that loss scaling reads
            # the live dynamic scale, not the initial constant.
            if not model.built or not model.trainable_weights:
                model(x, training=False)
            model.optimizer.build(model.trainable_weights)
        self.model, self.policy, self.x, self.sample_weight = model, policy, x, sample_weight
        # Semi-supervised policies (VAT): label -1 marks an unlabeled example; it is
        # left out of the label losses and metrics, which average over the labeled.
        self.y, self.label_weight, self.label_scale, self.labeled = labeled_batch(
            policy, y, sample_weight)
        self.sites = Sites(model, x, model.perturb_names)
        self.attack_training = model.attack_mode == "training"
        self.clean, self.masks, self.record_outputs = self.sites.record(
            model, x, training=self.attack_training)
        self.context = training_context(model, x, self.y, self.sites, self.clean, self.masks)
        self.context.example_index = self.example_index
        self.weights = model.trainable_weights
        self.accumulate = policy.kind == "accumulate" and bool(self.weights)
        self.statistics = moving_statistics(model) if policy.freeze_statistics else []
        self.batch_size = ops.shape(self.clean[0])[0]

    def start(self):
        """The input policy's perturbation before the first weight update, and its state."""
        adversarial, state = self.policy.generate(self.context, self.clean,
                                                  self.state.read(self.example_index))
        return self._masked(adversarial), state

    def _masked(self, adversarial):
        return [ops.stop_gradient(a) for a in apply_masks(self.clean, adversarial, self.masks)]

    def objective(self, tensors):
        """`(scaled total, aux)` of c·f(θ, X) + λ·g(θ, X̃) (or the policy's own g) at `tensors`."""
        model, y = self.model, self.y
        adv_outputs = kept_statistics(self.statistics, lambda: self.sites.forward(
            model, self.x, tensors, self.clean, self.masks, training=True))
        clean_loss, outputs = None, None
        if model.clean_weight > 0 or self.policy.needs_clean_outputs:
            outputs = model(self.x, training=True)
        if model.clean_weight > 0 and y is not None:
            clean_loss = private.compiled_loss(model)(y, outputs, self.label_weight) * self.label_scale
        policy_loss = self.policy.adversarial_loss(y, outputs, adv_outputs)
        if policy_loss is None:
            adv_loss = self.state.adv_compile_loss(y, adv_outputs, self.label_weight) * self.label_scale
        else:
            adv_loss = mean_loss(policy_loss, self.sample_weight)
        regularizer = self.policy.regularizer(self.context, adv_outputs)
        if regularizer is not None:
            adv_loss = adv_loss + mean_loss(regularizer, self.sample_weight)
        total = adv_loss * model.adversarial_weight
        if clean_loss is not None:
            total = total + clean_loss * model.clean_weight
        for extra in model.losses:
            total = total + private.additional_loss(model, extra)
        scaled = total if model.optimizer is None else model.optimizer.scale_loss(total)
        return scaled, (total, adv_loss, clean_loss, adv_outputs, outputs)

    def weight_update(self, adversarial, state):
        """One weight update: ONE gradient for the weights and the sites.

        Applies the weight gradient (unless the policy accumulates them),
        records the losses and adversarial metrics, and lets the policy use
        the input gradient.

        Returns:
            `(adversarial, state, finite, gradients, clean_outputs)`: the
            policy's next perturbation and state, whether the step was finite,
            the weight gradients when they are accumulated (else `[]`), and the
            clean outputs when the objective computed them.
        """
        restore, at_weights = self._ascend_weights(adversarial)
        _, aux, weight_grads, input_grads = backend.value_and_gradients(
            self.objective, self.weights, adversarial)
        for variable, value in zip(self.weights, restore):
            variable.assign(value)  # θ exactly, before the optimizer steps from it
        # Losses and metrics are logged at θ, the weights being trained (the
        # weight policy's ascent pass), not at θ + v.
        total, adv_loss, clean_loss, adv_outputs, outputs = at_weights or aux
        input_grads = self._unscale(input_grads)
        # Replicas agree, so that all of them skip a non-finite step together.
        finite = backend.all_replicas(all_finite([total] + list(input_grads) + list(weight_grads)))
        if self.weights and not self.accumulate:
            self.apply(weight_grads, finite)
        self._record(finite, total, adv_loss, clean_loss, adv_outputs, adversarial)
        moved, moved_state = self.policy.update(self.context, self.clean, adversarial, input_grads, state)
        # A non-finite step moves neither the perturbation nor the policy state.
        moved = [ops.where(finite, a, p) for a, p in zip(moved, adversarial)]
        moved_state = [ops.where(finite, s, p) for s, p in zip(moved_state, state)]
        return self._masked(moved), moved_state, finite, weight_grads if self.accumulate else [], outputs

    def collect(self, total, gradients):
        """FreeLB's running mean of the updates' weight gradients (`[]` for other policies)."""
        if not self.accumulate:
            return []
        return backend.accumulate(total, gradients, 1.0 / self.policy.replays)

    def apply_collected(self, total, finite):
        """Applies FreeLB's averaged gradients once, after its K ascent steps."""
        if self.accumulate:
            self.apply(list(total), finite)

    def _ascend_weights(self, adversarial):
        """Moves the weights to θ + v (the weight policy's ascent).

        Returns:
            `(θ, aux)`: the weight values to restore and the objective's aux
            at θ; `([], None)` without a weight policy. The ascent pass leaves
            BatchNorm's moving statistics as they were; a non-finite ascent
            gradient moves nothing.
        """
        weight_policy = self.model.weight_policy
        if weight_policy is None or not self.weights:
            return [], None
        if backend.distributed():
            raise NotImplementedError(
                "Weight policies (SAM, AWP) do not run under tf.distribute yet; train on one "
                "device, or without weight_policy.")
        _, aux, gradients = kept_statistics(moving_statistics(self.model), lambda: (
            backend.variable_gradients(self.objective, self.weights, adversarial)))
        values = [ops.copy(ops.convert_to_tensor(w)) for w in self.weights]
        finite = all_finite(gradients)
        scale = ops.convert_to_tensor(self.model.weight_perturbation_scale)
        for variable, move in zip(self.weights, weight_policy.perturbation(values, gradients)):
            move = ops.where(finite, move * ops.cast(scale, move.dtype), ops.zeros_like(move))
            variable.assign_add(move)
        return values, aux

    def _unscale(self, gradients):
        """Input gradients of the unscaled loss (mixed-precision loss scaling)."""
        if isinstance(self.model.optimizer, keras.optimizers.LossScaleOptimizer):
            scale = self.model.optimizer.dynamic_scale
            return [g / ops.cast(scale, g.dtype) for g in gradients]
        return gradients

    def apply(self, gradients, finite):
        """Applies the weight gradients unless the step produced NaN or Inf."""
        optimizer = self.model.optimizer
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            # It skips non-finite steps itself and lowers the loss scale.
            backend.apply_loss_scaled(optimizer, gradients, self.weights)
            return
        if not optimizer.built:
            optimizer.build(self.weights)
        backend.apply_if(
            finite, lambda grads: optimizer.apply(grads, self.weights), (list(gradients),))

    def _record(self, finite, total, adv_loss, clean_loss, adv_outputs, adversarial):
        model, state = self.model, self.state
        # A skipped (non-finite) step does not enter the epoch's mean losses.
        weight = ops.cast(self.batch_size, "float32") * ops.cast(finite, "float32")

        def kept(value):
            # Compiled losses are divided by the number of replicas (their
            # gradients are summed over replicas); log the per-batch mean.
            value = private.unscale_loss_for_distribution(value)
            return ops.where(finite, ops.cast(value, "float32"), 0.0)

        private.loss_tracker(model).update_state(kept(total), sample_weight=weight)
        state.adv_loss.update_state(kept(adv_loss), sample_weight=weight)
        if clean_loss is not None and model.clean_weight > 0:
            state.clean_loss.update_state(kept(clean_loss), sample_weight=weight)
        norm = perturbation_norm(self.policy.norm, self.clean, adversarial)
        state.perturbation_norm.update_state(
            ops.where(finite, norm, 0.0), sample_weight=ops.cast(finite, "float32"))
        if state.adv_compile_metrics is not None and self.y is not None:
            self._update_metrics(state.adv_compile_metrics, adv_outputs, finite)

    def _update_metrics(self, container, outputs, finite):
        """Updates `container` on this batch; a skipped (non-finite) step counts for nothing."""
        keep = ops.cast(finite, "float32")
        labeled = ops.ones((ops.shape(tree.flatten(self.y)[0])[0],), "float32") * keep
        labeled = labeled if self.labeled is None else self.labeled * labeled
        outputs = tree.map_structure(
            lambda o: ops.where(finite, o, ops.zeros_like(o)), outputs)  # 0 · NaN is NaN
        update_labeled(container, self.y, outputs, labeled, self.sample_weight)

    def finish(self, finite, state, clean_outputs=None):
        """Counts a skipped step, stores the policy state, updates the clean metrics.

        Returns:
            The step's logs.
        """
        model = self.model
        # Each replica adds its share, so a skipped step counts once in the sum.
        self.state.nonfinite.update_state(
            ops.cast(ops.logical_not(finite), "float32") / backend.num_replicas())
        self.state.write(state, self.example_index)
        compiled = private.compiled_metrics(model)
        if compiled is not None and model.clean_metrics and self.y is not None:
            for candidate in (self.record_outputs, self.context.clean_outputs):
                clean_outputs = candidate if clean_outputs is None else clean_outputs
            if clean_outputs is None:
                clean_outputs = model(self.x, training=self.attack_training)
            self._update_metrics(compiled, clean_outputs, finite)
            if model.clean_weight == 0 and tree.is_nested(clean_outputs):
                # The clean per-output losses (<output>_loss) of a multi-output
                # model, from outputs the step already has.
                private.compiled_loss(model)(self.y, clean_outputs, self.label_weight)
        return backend.step_logs(step_logs(model))
