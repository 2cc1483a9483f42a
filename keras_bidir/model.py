"""BidirectionalModel: one gradient computation, two updates per training step."""

import math
import warnings

import keras
import numpy as np
from keras import ops
from keras import tree

from keras_bidir import backend
from keras_bidir.backend import private
from keras_bidir import constraints
from keras_bidir import data_utils
from keras_bidir import example_index
from keras_bidir import inputs as inputs_lib
from keras_bidir import losses as losses_lib
from keras_bidir import outputs as outputs_lib
from keras_bidir import policies as policies_lib
from keras_bidir import steps
from keras_bidir import trainer
from keras_bidir import weight_policies as weight_policies_lib
from keras_bidir.policies.base import seed_generators
from keras_bidir.metrics import PrefixedCompileLoss
from keras_bidir.metrics import PrefixedCompileMetrics
from keras_bidir.metrics import StepMean
from keras_bidir.metrics import clone_metric_spec
from keras_bidir.policies.base import PerturbationContext
from keras_bidir.policies.base import is_real
from keras_bidir.policies.base import site_objective
from keras_bidir.sites import Sites
from keras_bidir.sites import apply_masks

ATTACK_MODES = ("inference", "training")
_UNSET = object()


def _unpack(data):
    return keras.utils.unpack_x_y_sample_weight(data)


def _check_weight(name, value):
    if not is_real(value):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}.")
    return float(value)


class _NonFiniteWarning(keras.callbacks.Callback):
    """Warns once per fit() when batches were skipped for NaN / Inf values."""

    def __init__(self):
        super().__init__()
        self._warned = False

    def on_epoch_end(self, epoch, logs=None):
        count = (logs or {}).get("nonfinite_batches", 0)
        if count and not self._warned:
            self._warned = True
            warnings.warn(
                f"{int(count)} training step(s) in epoch {epoch + 1} produced NaN or Inf "
                "(loss, weight or input gradient) and were skipped: neither the weights nor "
                "the policy state changed. Check the data for NaN/Inf values and labels out "
                "of range, and lower the learning rate if the loss diverges. The count is "
                "logged as `nonfinite_batches`.",
                stacklevel=2,
            )


class _WeightPolicyWarmup(keras.callbacks.Callback):
    """No weight perturbation during the weight policy's warm-up epochs."""

    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.model.weight_perturbation_scale.assign(0.0 if epoch < self.epochs else 1.0)


@keras.saving.register_keras_serializable(package="keras_bidir")
class BidirectionalModel(keras.Model):
    """Wraps a Keras model so that `fit()` trains it bidirectionally.

    Each training step takes ONE gradient of the loss

        L(θ, X) = clean_weight · f(θ, X) + adversarial_weight · f(θ, X̃)

    with respect to both the trainable weights θ and the perturbed inputs X̃.
    The optimizer applies the weight gradient; the input policy turns the input
    gradient into the next perturbation (free adversarial training) or spends
    extra ascent steps before the weight step (FGSM, PGD).

    `clean_weight=0, adversarial_weight=1` is Madry-style adversarial training;
    `clean_weight=1, adversarial_weight=λ` is NSL-style adversarial
    regularization.

    Only floating-point inputs are perturbed; integer, boolean and string
    inputs pass through untouched.

    Args:
        base_model: any Keras model (Sequential, Functional or subclassed). It
            is what you deploy: `model.base_model.save(...)`.
        policy: an `keras_bidir.policies.InputPolicy`, or a policy name.
        adversarial_weight: λ, weight of the loss on perturbed inputs (> 0).
        clean_weight: c, weight of the loss on clean inputs (>= 0). None
            (the default) takes the policy's own default: 0 for the
            adversarial-training policies, 1 for TRADES and VAT.
        perturb: optional list of input names (dict keys or model input
            names) to perturb; default: every floating-point input.
        attack_mode: `"inference"` (default) runs the model with
            `training=False` while the policy searches for the perturbation:
            BatchNorm uses and keeps its moving statistics and Dropout is
            off, as TRADES and VAT do. `"training"` runs those passes with
            `training=True` (BatchNorm statistics are then updated by them).
            The weight step itself always runs with `training=True`.
        clean_metrics: log the compiled metrics on clean inputs. When the
            clean loss is not part of the objective this costs one extra
            forward pass per batch (in `attack_mode`); set False to skip it.
        seed: integer seed of the policy's random stream (random starts,
            noise).
        weight_policy: optional `keras_bidir.weight_policies.SAM` or `AWP`
            (or `"sam"` / `"awp"`): the weights move up the objective before
            the descent gradient is taken, at one extra forward and backward
            pass per step.
        **kwargs: passed to `keras.Model` (e.g. `name`).

    Logs (training): `loss` (total), the compiled metrics on clean inputs,
    `adv_loss` and `adv_<metric>` on perturbed inputs, `clean_loss` when
    `clean_weight > 0`, and `perturbation_norm` (mean per-example norm of
    x̃ − x in the policy's norm).

    Example:

    ```python
    model = keras_bidir.BidirectionalModel(
        base,
        policy=keras_bidir.policies.PGD(0.2, steps=7, clip_min=0.0, clip_max=1.0),
    )
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, epochs=10, validation_data=(x_val, y_val))
    model.base_model.save("deploy.keras")
    ```
    """

    def __init__(
        self,
        base_model,
        policy,
        adversarial_weight=1.0,
        clean_weight=None,
        perturb=None,
        attack_mode="inference",
        clean_metrics=True,
        seed=None,
        weight_policy=None,
        **kwargs,
    ):
        backend.check_supported()
        super().__init__(**kwargs)
        if not isinstance(base_model, keras.layers.Layer):
            raise TypeError(
                f"base_model must be a Keras model, got {type(base_model).__name__}. "
                "Build it with keras.Sequential, the functional API or by "
                "subclassing keras.Model."
            )
        if isinstance(base_model, BidirectionalModel):
            raise TypeError(
                "base_model is already a BidirectionalModel; wrap the plain "
                "model (its .base_model) instead."
            )
        self.base_model = base_model
        for name in ("_policy", "_adversarial_weight", "_clean_weight"):
            object.__setattr__(self, name, _UNSET)  # Not None: Keras skips `x = x` assignments.
        object.__setattr__(self, "_weight_policy", weight_policies_lib.get(weight_policy))
        self.policy = policy
        self.adversarial_weight = adversarial_weight
        self.clean_weight = clean_weight
        if perturb is not None:
            perturb = [perturb] if isinstance(perturb, str) else list(perturb)
        self.perturb_names = perturb
        if attack_mode not in ATTACK_MODES:
            raise ValueError(
                f"attack_mode must be one of {ATTACK_MODES}, got {attack_mode!r}."
            )
        self.attack_mode = attack_mode
        self.clean_metrics = bool(clean_metrics)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed, name="policy_seed")
        self.perturbation_scale = self.add_weight(
            shape=(),
            initializer="ones",
            trainable=False,
            name="perturbation_scale",
        )
        if self._weight_policy is not None:
            # 0 during the weight policy's warm-up epochs, then 1 (see `fit`).
            self.weight_perturbation_scale = self.add_weight(
                shape=(), initializer="ones", trainable=False, name="weight_perturbation_scale"
            )
        self._policy_state = []
        self._example_state = []
        self._policy_state_dtypes = []
        self.adv_loss_tracker = StepMean(name="adv_loss")
        self.clean_loss_tracker = StepMean(name="clean_loss")
        self.perturbation_norm_tracker = StepMean(name="perturbation_norm")
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_batches")
        object.__setattr__(self, "_adv_compile_metrics", None)
        object.__setattr__(self, "_adv_compile_loss", None)
        object.__setattr__(self, "_bidir_attack_loss", None)
        object.__setattr__(self, "_bidir_loss_spec", None)

    # -- what the step optimizes: settable between fits --------------------------
    @property
    def policy(self):
        """The input policy; assigning a new one takes effect on the next step."""
        return self._policy

    @policy.setter
    def policy(self, value):
        object.__setattr__(self, "_policy", policies_lib.get(value))
        generators = seed_generators(self._policy)
        if generators:  # tracked, so that their state is the model's (JAX threads it)
            with private.unlocked_tracker(self):
                self._policy_seed_generators = generators
        self._objective_changed()

    @property
    def adversarial_weight(self):
        """λ, the weight of the loss on perturbed inputs (> 0); settable."""
        return self._adversarial_weight

    @adversarial_weight.setter
    def adversarial_weight(self, value):
        value = _check_weight("adversarial_weight", value)
        if value == 0:
            raise ValueError(
                "adversarial_weight must be > 0: with 0 the policy has no effect. "
                "Train the base model directly for ordinary training."
            )
        object.__setattr__(self, "_adversarial_weight", value)
        self._objective_changed()

    @property
    def clean_weight(self):
        """c, the weight of the loss on clean inputs (>= 0); settable (None: the
        policy's default)."""
        return self._clean_weight

    @clean_weight.setter
    def clean_weight(self, value):
        if value is None:
            value = getattr(self.policy, "default_clean_weight", 0.0)
        object.__setattr__(self, "_clean_weight", _check_weight("clean_weight", value))
        self._objective_changed()

    @property
    def weight_policy(self):
        """The weight policy (SAM, AWP) or None; set at construction."""
        return self._weight_policy

    def _objective_changed(self):
        """Checks the objective and makes the next step use it (retraces)."""
        if _UNSET in (self._policy, self._adversarial_weight, self._clean_weight):
            return  # Still being constructed.
        if self._weight_policy is not None and getattr(self._policy, "accumulate_gradients", False):
            raise ValueError(
                f"{type(self._weight_policy).__name__} cannot be combined with "
                f"{type(self._policy).__name__}, which averages the weight gradients of several "
                "ascent steps into one update: there is no single descent gradient to take at "
                "the perturbed weights. Use FreeAdversarial, or an attack policy (PGD, TRADES, ...)."
            )
        if self._clean_weight == 0 and getattr(self._policy, "default_clean_weight", 0.0) > 0:
            raise ValueError(
                f"{type(self._policy).__name__} trains on the clean loss plus its own "
                "divergence term: clean_weight must be > 0 (leave it unset for the "
                f"policy's default, {self._policy.default_clean_weight}; when switching "
                "policies, set model.clean_weight first)."
            )
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    # -- Keras model protocol ----------------------------------------------------
    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def compile(
        self,
        optimizer="adam",
        loss=None,
        loss_weights=None,
        metrics=None,
        weighted_metrics=None,
        **kwargs,
    ):
        """Configures training; same arguments as `keras.Model.compile`.

        The optimizer defaults to Adam. A loss is required: the policy
        differentiates it with respect to the inputs.
        """
        if loss is None:
            raise ValueError(
                "BidirectionalModel.compile() needs a loss: the input policy "
                "follows its gradient. For example "
                "loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)."
            )
        super().compile(
            optimizer=optimizer,
            loss=loss,
            loss_weights=loss_weights,
            metrics=metrics,
            weighted_metrics=weighted_metrics,
            **kwargs,
        )
        # The loss tracker reads NaN, not 0.0, when every step was skipped; the
        # adversarial pass logs its per-output losses as adv_<output>_loss.
        object.__setattr__(self, "_loss_tracker", StepMean(name="loss"))
        object.__setattr__(
            self,
            "_adv_compile_loss",
            PrefixedCompileLoss(loss, loss_weights, "adv_", self._compile_loss.output_names),
        )
        object.__setattr__(
            self, "_bidir_attack_loss", losses_lib.per_example_loss_fn(loss, loss_weights)
        )
        object.__setattr__(self, "_bidir_loss_spec", loss)
        adv_metrics = None
        if metrics or weighted_metrics:
            adv_metrics = PrefixedCompileMetrics(
                clone_metric_spec(metrics),
                clone_metric_spec(weighted_metrics),
                prefix="adv_",
                output_names=self._compile_metrics.output_names
                if self._compile_metrics is not None
                else None,
            )
        object.__setattr__(self, "_adv_compile_metrics", adv_metrics)
        self._warn_on_logits_mismatch(loss)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    def _warn_on_logits_mismatch(self, loss):
        from_logits = getattr(loss, "from_logits", None)
        if from_logits is None and isinstance(loss, keras.losses.Loss):
            from_logits = loss.get_config().get("from_logits")
        if from_logits and losses_lib.output_activation_is_softmax(self.base_model):
            warnings.warn(
                "The loss expects logits (from_logits=True) but the base model "
                "ends in a softmax. The loss is then computed on probabilities "
                "and its input gradient is weak, which makes the perturbations "
                "(and robustness figures) unreliable. Remove the final softmax "
                "(keep logits), or use from_logits=False.",
                stacklevel=3,
            )

    @property
    def metrics(self):
        """The metrics of the plain compiled model (what `evaluate` reports).

        The adversarial side of the training step has its own, logged by
        `fit` only: see `training_metrics`.
        """
        training_only = {id(m) for m in self._all_training_metrics()}
        return [m for m in super().metrics if id(m) not in training_only]

    def _all_training_metrics(self):
        metrics = [self.adv_loss_tracker, self.clean_loss_tracker,
                   self.perturbation_norm_tracker, self.nonfinite_tracker]
        if self._adv_compile_loss is not None:
            metrics += self._adv_compile_loss.metrics
        if self._adv_compile_metrics is not None:
            metrics.append(self._adv_compile_metrics)
        return metrics

    @property
    def training_metrics(self):
        """The metrics `fit` logs beside `metrics`: `adv_loss`, the
        per-output `adv_<output>_loss`, `adv_<metric>`, `clean_loss` (when
        `clean_weight > 0`), `perturbation_norm` and `nonfinite_batches`."""
        return [m for m in self._all_training_metrics()
                if m is not self.clean_loss_tracker or self.clean_weight > 0]

    def reset_metrics(self):
        super().reset_metrics()
        for metric in self._all_training_metrics():
            metric.reset_state()

    @staticmethod
    def _results(metrics):
        logs = {}
        for metric in metrics:
            if not getattr(metric, "built", True):
                continue  # Never updated: clean_metrics=False, or no labels yet.
            result = metric.result()
            logs.update(result if isinstance(result, dict) else {metric.name: result})
        return logs

    def get_metrics_result(self):
        # With the training metrics, so that fit's epoch logs are read from the
        # metrics themselves (exact under tf.distribute); evaluate's logs, which
        # lack them, are taken from the test step as Keras does.
        return self._results(self.metrics + self.training_metrics)

    def _train_logs(self):
        """The step's logs: clean metrics (when measured), then the adversarial side."""
        clean = [m for m in self.metrics if self.clean_metrics or m is not self._compile_metrics]
        return self._results(clean + self.training_metrics)

    # -- building --------------------------------------------------------------
    def _sites(self, x):
        return Sites(self, x, self.perturb_names)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras averages a distributed batch over the replicas before building,
        # which fails under MultiWorkerMirroredStrategy (keras-team/keras#20585);
        # one replica's part has the same shapes.
        if iterator is not None and getattr(self, "_distribute_strategy", None) is not None:
            for _, _, batches in iterator:
                data_batch = backend.local_batch(next(batches), self)
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Build the adv_* metrics with the model's own (Keras builds only the
        # compiled ones): creating their variables inside a distributed step
        # is not possible.
        adv_metrics = self._adv_compile_metrics
        adv_loss = self._adv_compile_loss
        unbuilt = (adv_metrics is not None and not adv_metrics.built) or (
            adv_loss is not None and not adv_loss.built)
        if unbuilt:
            if data_batch is None:
                for _, _, data_or_iterator in iterator:
                    if isinstance(data_or_iterator, (list, tuple)):
                        data_batch = data_or_iterator[0]
                    else:
                        data_batch = next(data_or_iterator)
                    break
            data_batch = tree.map_structure(
                lambda v: None
                if v is None
                else keras.KerasTensor(v.shape, keras.backend.standardize_dtype(v.dtype)),
                data_batch,
            )
            x, y, sample_weight = _unpack(data_batch)
            x, _ = example_index.split(x)

            def build_adv_metrics(x, y, sample_weight):
                outputs = self(x, training=False)
                if adv_metrics is not None:
                    adv_metrics.update_state(y, outputs, sample_weight)
                if adv_loss is not None:
                    adv_loss(y, outputs, sample_weight)
                return y

            if y is not None:
                private.compute_output_spec(build_adv_metrics, x, y, sample_weight)
        if data_batch is not None:
            data_batch = _without_example_index(data_batch)
        super()._symbolic_build(iterator=iterator, data_batch=data_batch)

    def _create_policy_state(self, shapes, dtypes):
        # Created once, before training; reading activation shapes at
        # PerturbationPoints may already have built (and locked) the model,
        # so unlock the tracker as Keras itself does in `_untrack_variable`.
        # Under tf.distribute the state is one mirrored variable laid out as one
        # block per replica; every replica works on its own block and the blocks
        # are gathered back after the step (`backend.replica_block`).
        with private.unlocked_tracker(self), backend.strategy_scope(self):
            for position, (shape, dtype) in enumerate(zip(shapes, dtypes)):
                self._policy_state.append(
                    self.add_weight(
                        shape=tuple(shape),
                        initializer="zeros",
                        dtype=dtype,
                        trainable=False,
                        aggregation="only_first_replica",
                        name=f"policy_state_{position}",
                    )
                )
        self._policy_state_dtypes = list(dtypes)

    def _create_example_state(self, shapes, dtypes):
        # One row per training example (PriorGuidedFGSM(prior="example"), ATAS).
        with private.unlocked_tracker(self):
            for position, (shape, dtype) in enumerate(zip(shapes, dtypes)):
                self._example_state.append(self.add_weight(
                    shape=tuple(shape), initializer="zeros", dtype=dtype, trainable=False,
                    name=f"example_state_{position}"))

    def _needs_policy_state(self):
        return bool(self.policy.state_shapes([()])) and not self._policy_state

    def _with_example_index(self, x, x_batch):
        """`x` with each example's index, and the per-example store, for policies that keep one."""
        if not self.policy.example_state_shapes([()]):
            return x
        name = type(self.policy).__name__
        with backend.strategy_scope(self):
            if backend.num_replicas() > 1:
                raise NotImplementedError(
                    f"{name} keeps a memory per training example, which does not run under "
                    "tf.distribute yet; train on one device.")
        indexed = example_index.is_indexed(x)
        _, batch_index = example_index.split(x_batch)
        if batch_index is not None and np.ndim(batch_index) == 0:
            raise ValueError(
                "Each batch carries one index instead of one per example: "
                "with_example_index was applied after batch(). Index the single examples "
                "first: with_example_index(dataset).shuffle(...).batch(...).")
        if not indexed and not data_utils.is_array_data(x):
            if not example_index.is_indexed(x_batch):
                raise ValueError(
                    f"{name} keeps a memory per training example and needs each example's index. "
                    "Pass arrays to fit(), or index the examples of your dataset with "
                    "keras_bidir.example_index.with_example_index(dataset) before shuffling "
                    "and batching (and pass num_examples=... to the policy).")
            count = getattr(self.policy, "num_examples", None)
            if count is None:
                raise ValueError(f"With a dataset, {name} needs num_examples=<number of training "
                                 "examples> to size its per-example memory.")
            rows = max(count, self._example_rows())
            example_index.check_batch(batch_index, name, rows)
            x = example_index.checked(x, name, rows)
        else:
            x = x if indexed else example_index.index_arrays(x)
            count = int(np.max(x[example_index.INDEX])) + 1
            count = max(count, getattr(self.policy, "num_examples", None) or 0)
        self.build_example_state(x_batch, count)
        return x

    def _example_rows(self):
        """Rows of the per-example memory (0 before it is built)."""
        return int(self._example_state[0].shape[0]) if self._example_state else 0

    def build_example_state(self, x, num_examples):
        """Creates the policy's per-example memory (one row per training example).

        `fit` calls this; call it yourself only when you drive `train_step`
        directly with indexed inputs (`keras_bidir.example_index`).

        Args:
            x: one batch of inputs (batch axis first), possibly indexed.
            num_examples: the number of training examples.
        """
        x, _ = example_index.split(x)
        if self._example_state:
            rows = int(self._example_state[0].shape[0])
            if num_examples > rows:
                raise ValueError(
                    f"This model's per-example memory holds {rows} examples; the data has "
                    f"{num_examples}. Train on the same examples, or build a new model.")
            return
        x = tree.map_structure(ops.convert_to_tensor, x)
        clean, _, _ = self._sites(x).record(self, x, training=False)
        shapes = self.policy.example_state_shapes([tuple(t.shape[1:]) for t in clean])
        dtypes = [keras.backend.standardize_dtype(clean[i % len(clean)].dtype)
                  for i in range(len(shapes))]
        self._create_example_state([(int(num_examples),) + tuple(s) for s in shapes], dtypes)

    def build_policy_state(self, x):
        """Creates the policy's persistent state for batches like `x`.

        `fit` and `train_on_batch` call this; call it yourself only when you
        drive `train_step` directly.

        Args:
            x: one batch of inputs (batch axis first).
        """
        if not self._needs_policy_state():
            return
        x = tree.map_structure(ops.convert_to_tensor, x)
        clean, _, _ = self._sites(x).record(self, x, training=False)
        # One block of per-example state per replica, each sized for the
        # per-replica batch (the global batch split evenly, rounded up).
        with backend.strategy_scope(self):
            replicas = backend.num_replicas()
        rows = -(-int(clean[0].shape[0]) // replicas)
        shapes = self.policy.state_shapes([(rows,) + tuple(t.shape[1:]) for t in clean])
        shapes = [(replicas * shape[0],) + tuple(shape[1:]) for shape in shapes]
        # A policy may keep several tensors per site (site after site, in rounds).
        dtypes = [keras.backend.standardize_dtype(clean[i % len(clean)].dtype)
                  for i in range(len(shapes))]
        self._create_policy_state(shapes, dtypes)

    def _sparse_classes(self):
        """The number of classes when the model is trained on sparse integer labels, else None."""
        loss = getattr(self, "_bidir_loss_spec", None)
        sparse = isinstance(loss, keras.losses.SparseCategoricalCrossentropy) or loss in (
            "sparse_categorical_crossentropy",)
        outputs = getattr(self.base_model, "outputs", None)
        if not sparse or outputs is None or len(outputs) != 1:
            return None
        return outputs[0].shape[-1]

    def _check_label_range(self, y):
        """Sparse integer labels must index the model's classes (a GPU gives NaN otherwise)."""
        classes = self._sparse_classes()
        if classes is None or y is None or not hasattr(y, "dtype"):
            return
        data_utils.check_label_range(np.asarray(y), classes, self._accepts_unlabeled())

    def _accepts_unlabeled(self):
        return getattr(self.policy, "accepts_unlabeled", False)

    def _check_data(self, x_batch):
        """A batch against the policy's data range and radius."""
        sites = self._sites(x_batch)
        data_utils.check_data_range(self.policy, inputs_lib.select_inputs(x_batch, sites.input_indices))

    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        data_utils.validate_arrays(x, self.base_model)
        self._check_label_range(y)
        if x is not None:
            x_batch, y_batch, x = data_utils.peek_inputs(x, batch_size, y)
            if y_batch is None and self.policy.requires_labels:
                raise trainer.missing_labels_error(self.policy)
            classes = self._sparse_classes()
            if y is None and classes is not None:  # batches: check each one
                self._check_label_range(y_batch)
                x = data_utils.checked_labels(x, classes, self._accepts_unlabeled())
            inputs_batch, _ = example_index.split(x_batch)
            self._check_data(inputs_batch)
            if not self.built:  # Keras' callbacks (BackupAndRestore) need a built model
                self(tree.map_structure(ops.convert_to_tensor, inputs_batch), training=False)
            self.build_policy_state(inputs_batch)
            x = self._with_example_index(x, x_batch)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        callbacks.append(_NonFiniteWarning())
        if self.weight_policy is not None and self.weight_policy.warmup_epochs:
            callbacks.append(_WeightPolicyWarmup(self.weight_policy.warmup_epochs))
        with backend.fit_guard(self):
            try:
                return super().fit(x, y, batch_size, *args, callbacks=callbacks, **kwargs)
            except Exception as error:  # the checks a dataset's pipeline got above
                clear = example_index.translate(error, type(self.policy).__name__,
                                                self._example_rows())
                classes = self._sparse_classes()
                if clear is None and classes is not None:
                    clear = data_utils.translate_label_error(error, classes,
                                                             self._accepts_unlabeled())
                if clear is None:
                    raise
                raise clear from None

    def train_on_batch(self, x, y=None, *args, **kwargs):
        inputs, index = example_index.split(x)
        self._check_data(inputs)
        self.build_policy_state(inputs)
        if self.policy.example_state_shapes([()]) and not self._example_state:
            raise ValueError(
                f"{type(self.policy).__name__} keeps a memory per training example: train with "
                "fit(), or call build_example_state(x, num_examples) first and pass inputs "
                "indexed as keras_bidir.example_index describes.")
        if index is not None and self._example_state:
            example_index.check_batch(ops.convert_to_numpy(index), type(self.policy).__name__,
                                      self._example_rows())
        return super().train_on_batch(x, y, *args, **kwargs)

    # -- saved state ---------------------------------------------------------------
    def _random_states(self):
        """Every random stream the training draws from: the policy's seed, its augmentation
        layers', and the model's own layers' (Dropout), in a fixed order."""
        states, seen = [], set()
        for layer in private.nested_layers(self, include_self=True):
            for generator in private.seed_generators(layer):
                if id(generator) not in seen:
                    seen.add(id(generator))
                    states.append(generator.state)
        return states

    def save_own_variables(self, store):
        # Keras saves variables, not random streams: without them a resumed fit
        # (BackupAndRestore) would draw PGD's random starts afresh.
        super().save_own_variables(store)
        for position, state in enumerate(self._random_states()):
            store[f"{_RANDOM_STATE}{position}"] = state

    def load_own_variables(self, store):
        keys = list(store.keys())
        own = {k: store[k] for k in keys if not k.startswith(_RANDOM_STATE)}
        super().load_own_variables(own)
        for position, state in enumerate(self._random_states()):
            key = f"{_RANDOM_STATE}{position}"
            if key in keys:  # files saved by earlier versions have none
                state.assign(store[key])

    def get_build_config(self):
        config = super().get_build_config() or {}
        if self._policy_state:
            config["policy_state_shapes"] = [list(v.shape) for v in self._policy_state]
            config["policy_state_dtypes"] = list(self._policy_state_dtypes)
        if self._example_state:
            config["example_state_shapes"] = [list(v.shape) for v in self._example_state]
            config["example_state_dtypes"] = [
                keras.backend.standardize_dtype(v.dtype) for v in self._example_state]
        return config

    def build_from_config(self, config):
        config = dict(config)
        shapes = config.pop("policy_state_shapes", None)
        dtypes = config.pop("policy_state_dtypes", None)
        example_shapes = config.pop("example_state_shapes", None)
        example_dtypes = config.pop("example_state_dtypes", None)
        if config:
            super().build_from_config(config)
        if shapes and not self._policy_state:
            self._create_policy_state(shapes, dtypes)
        if example_shapes and not self._example_state:
            self._create_example_state(example_shapes, example_dtypes)

    # -- the bidirectional step ----------------------------------------------------
    def _context(self, x, y, sites, clean, masks):
        own = self.policy.attack_loss()
        # A margin / DLR loss reads logits: a probability output is turned into them.
        reads_logits = losses_lib.reads_logits(own)
        from_logits = outputs_lib.declared_from_logits(self) if reads_logits else None
        objective = site_objective(
            self,
            x,
            y,
            sites,
            clean,
            masks,
            losses_lib.on_outputs(own, from_logits) if reads_logits
            else own or self._bidir_attack_loss,
            training=self.attack_mode == "training",
        )
        return PerturbationContext(
            objective,
            self._seed_generator,
            ops.convert_to_tensor(self.perturbation_scale),
            clip=sites.clip_flags(),
            masks=masks,
            clean=clean,
            labels=y,
            from_logits=from_logits,
        )

    def perturb(self, x, y=None):
        """Perturbs a batch with this model's policy, loss and current ε-scale.

        The attack passes run in `attack_mode`; no weight changes and no
        policy state is touched (a stateful policy acts as its `attack`).

        Args:
            x: a batch of inputs.
            y: its labels (needed by gradient-based policies).

        Returns:
            `x` with its perturbable inputs perturbed.
        """
        if self._bidir_attack_loss is None:
            raise RuntimeError("Compile the model before calling perturb().")
        x = tree.map_structure(ops.convert_to_tensor, x)
        if y is None and self.policy.requires_labels:
            raise ValueError(f"{type(self.policy).__name__} needs labels: call perturb(x, y).")
        y = None if y is None else tree.map_structure(ops.convert_to_tensor, y)
        sites = self._sites(x)
        if sites.point_names:
            raise ValueError(
                f"This model is perturbed at PerturbationPoints {sites.point_names}; "
                "perturb() returns perturbed inputs only. Use "
                "model.policy.attack_outputs(model, x, y) for outputs under attack."
            )
        clean, masks, _ = sites.record(self, x, training=self.attack_mode == "training")
        adversarial = self.policy.attack(self._context(x, y, sites, clean, masks), clean)
        return inputs_lib.replace_inputs(x, sites.input_indices, adversarial)

    def inspect(self, x, y=None):
        """What the policy does to one batch, without training (callbacks, debugging).

        The passes run in `attack_mode`; no weight and no policy state changes.

        Args:
            x: a batch of inputs.
            y: its labels (needed by gradient-based policies and for the
                gradient norm).

        Returns:
            A dict: `outputs` and `attacked_outputs` (the model's outputs, in
            inference mode, on the clean and on the perturbed batch),
            `perturbation_norm` (mean per-example norm of x̃ − x in the
            policy's norm) and `input_gradient_norm` (mean per-example L2 norm
            of the loss gradient at the clean batch; None without labels),
            and per perturbed site `clean_sites` and `adversarial_sites` (the
            values before and after the policy) with `site_names` (input
            positions in `tree.flatten(x)`, then PerturbationPoint names).
        """
        if self._bidir_attack_loss is None:
            raise RuntimeError("Compile the model before calling inspect().")
        x = tree.map_structure(ops.convert_to_tensor, x)
        y = None if y is None else tree.map_structure(ops.convert_to_tensor, y)
        sites = self._sites(x)
        clean, masks, outputs = sites.record(self, x, training=False)
        context = self._context(x, y, sites, clean, masks)
        gradient_norm = None
        if y is not None:
            _, grads, _ = context.loss_and_gradients(clean)
            norms = [ops.mean(constraints.per_example_norm(ops.cast(g, "float32"), "l2"))
                     for g in grads]
            gradient_norm = float(np.mean([ops.convert_to_numpy(n) for n in norms]))
        adversarial = apply_masks(clean, self.policy.attack(context, clean), masks)
        if outputs is None:
            outputs = self(x, training=False)
        return {
            "outputs": outputs,
            "attacked_outputs": sites.forward(self, x, adversarial, clean, masks, training=False),
            "perturbation_norm": float(ops.convert_to_numpy(
                trainer.perturbation_norm(self.policy.norm, clean, adversarial))),
            "input_gradient_norm": gradient_norm,
            "clean_sites": clean,
            "adversarial_sites": adversarial,
            "site_names": list(sites.input_indices) + list(sites.point_names),
        }

    def train_step(self, *args):
        # The step is described backend-neutrally in keras_bidir.trainer; the
        # active backend orders its calls (keras_bidir/steps/<name>.py).
        # TensorFlow passes `data`, JAX `state, data`.
        return steps.train_step(self, *args)

    def test_step(self, *args):
        *state, data = args
        data = _without_example_index(data)  # validation_split keeps fit's index
        return steps.test_step(self, *state, data, lambda: self._test_logs(data))

    def _test_logs(self, data):
        """The clean loss and compiled metrics of one batch (Keras' test step), as logs."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = self(x, training=False)
        loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                 training=False)
        self._loss_tracker.update_state(
            private.unscale_loss_for_distribution(loss),
            sample_weight=ops.shape(keras.tree.flatten(x)[0])[0])
        if self._compile_metrics is not None and y is not None:
            self._compile_metrics.update_state(y, y_pred, sample_weight)
        return backend.step_logs(self._results(self.metrics))

    @property
    def metrics_variables(self):
        """Variables of `metrics` and `training_metrics` (JAX threads them through the step)."""
        variables, seen = [], set()
        for metric in self.metrics + self._all_training_metrics():
            for variable in metric.variables:
                if id(variable) not in seen:
                    seen.add(id(variable))
                    variables.append(variable)
        return variables

    # -- serialization ---------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "base_model": keras.saving.serialize_keras_object(self.base_model),
            "policy": keras.saving.serialize_keras_object(self.policy),
            "adversarial_weight": self.adversarial_weight,
            "clean_weight": self.clean_weight,
            "perturb": self.perturb_names,
            "attack_mode": self.attack_mode,
            "clean_metrics": self.clean_metrics,
            "seed": self.seed,
        } | ({} if self.weight_policy is None else
             {"weight_policy": keras.saving.serialize_keras_object(self.weight_policy)})

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base_model = keras.saving.deserialize_keras_object(
            config.pop("base_model"), custom_objects=custom_objects
        )
        policy = keras.saving.deserialize_keras_object(
            config.pop("policy"), custom_objects=custom_objects
        )
        if config.get("weight_policy") is not None:
            config["weight_policy"] = keras.saving.deserialize_keras_object(
                config["weight_policy"], custom_objects=custom_objects
            )
        return cls(base_model, policy, **config)


_RANDOM_STATE = "random_state_"


def _without_example_index(data):
    """A `(x, y[, sample_weight])` batch with the example index taken off the inputs."""
    if not isinstance(data, tuple) or not data or not example_index.is_indexed(data[0]):
        return data
    return (example_index.split(data[0])[0],) + data[1:]
