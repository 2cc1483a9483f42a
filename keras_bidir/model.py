"""BidirectionalModel: one gradient computation, two updates per training step.

The model is the public wrapper: its arguments, Keras' model protocol and
saving. What one step computes is `keras_bidir.trainer`, what it keeps between
steps `keras_bidir.step_state`, what `fit` checks first `keras_bidir.fit_data`.
"""

import keras
from keras import ops

from keras_bidir import arguments
from keras_bidir import backend
from keras_bidir import example_index
from keras_bidir import fit_callbacks
from keras_bidir import fit_data
from keras_bidir import inspection
from keras_bidir import losses as losses_lib
from keras_bidir import policies as policies_lib
from keras_bidir import steps
from keras_bidir import trainer
from keras_bidir import weight_policies as weight_policies_lib
from keras_bidir.backend import private
from keras_bidir.metrics import StepMean
from keras_bidir.policies.base import seed_generators
from keras_bidir.step_state import StepState
from keras_bidir.step_state import results
from keras_bidir.step_state import without_random_states

_UNSET = object()


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
        base, policy=keras_bidir.policies.PGD(0.2, steps=7, clip_min=0.0, clip_max=1.0))
    model.compile(optimizer="adam", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=10, validation_data=(x_val, y_val))
    model.base_model.save("deploy.keras")
    ```
    """

    def __init__(self, base_model, policy, adversarial_weight=1.0, clean_weight=None,
                 perturb=None, attack_mode="inference", clean_metrics=True, seed=None,
                 weight_policy=None, **kwargs):
        backend.check_supported()
        super().__init__(**kwargs)
        self.base_model = arguments.check_base_model(base_model, BidirectionalModel)
        for name in ("_policy", "_adversarial_weight", "_clean_weight"):
            object.__setattr__(self, name, _UNSET)  # Not None: Keras skips `x = x` assignments.
        object.__setattr__(self, "_weight_policy", weight_policies_lib.get(weight_policy))
        self.policy = policy
        self.adversarial_weight = adversarial_weight
        self.clean_weight = clean_weight
        if perturb is not None:
            perturb = [perturb] if isinstance(perturb, str) else list(perturb)
        self.perturb_names = perturb
        self.attack_mode = arguments.check_attack_mode(attack_mode)
        self.clean_metrics = bool(clean_metrics)
        self.seed = seed
        self._seed_generator = keras.random.SeedGenerator(seed, name="policy_seed")
        self.perturbation_scale = self.add_weight(
            shape=(), initializer="ones", trainable=False, name="perturbation_scale")
        if self._weight_policy is not None:
            # 0 during the weight policy's warm-up epochs, then 1 (see `fit`).
            self.weight_perturbation_scale = self.add_weight(
                shape=(), initializer="ones", trainable=False, name="weight_perturbation_scale")
        # Not tracked by Keras: its variables are this model's own weights.
        object.__setattr__(self, "_step_state", StepState(self))

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
        object.__setattr__(self, "_adversarial_weight", arguments.check_adversarial_weight(value))
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
        object.__setattr__(self, "_clean_weight", arguments.check_weight("clean_weight", value))
        self._objective_changed()

    @property
    def weight_policy(self):
        """The weight policy (SAM, AWP) or None; set at construction."""
        return self._weight_policy

    @property
    def step_state(self):
        """The training step's own state (`keras_bidir.step_state.StepState`)."""
        return self._step_state

    @property
    def seed_generator(self):
        """The random stream of the policy's starts and noise in training."""
        return self._seed_generator

    def _objective_changed(self):
        """Checks the objective and makes the next step use it (retraces)."""
        if _UNSET in (self._policy, self._adversarial_weight, self._clean_weight):
            return  # Still being constructed.
        arguments.check_objective(self._policy, self._weight_policy, self._clean_weight)
        if getattr(self, "train_function", None) is not None:
            self.make_train_function(force=True)

    # -- Keras model protocol ----------------------------------------------------
    def call(self, inputs, training=None):
        return self.base_model(inputs, training=training)

    def compile(self, optimizer="adam", loss=None, loss_weights=None, metrics=None,
                weighted_metrics=None, **kwargs):
        """Configures training; same arguments as `keras.Model.compile`.

        The optimizer defaults to Adam. A loss is required: the policy
        differentiates it with respect to the inputs.
        """
        if loss is None:
            raise ValueError(
                "BidirectionalModel.compile() needs a loss: the input policy follows its "
                "gradient. For example loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True).")
        super().compile(optimizer=optimizer, loss=loss, loss_weights=loss_weights,
                        metrics=metrics, weighted_metrics=weighted_metrics, **kwargs)
        # The loss tracker reads NaN, not 0.0, when every step was skipped.
        private.set_loss_tracker(self, StepMean(name="loss"))
        self.step_state.compile(loss, loss_weights, metrics, weighted_metrics)
        losses_lib.warn_on_logits_mismatch(loss, self.base_model)

    def compile_from_config(self, config):
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.built and self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    @property
    def training_metrics(self):
        """The metrics `fit` logs beside `metrics`: `adv_loss`, the
        per-output `adv_<output>_loss`, `adv_<metric>`, `clean_loss` (when
        `clean_weight > 0`), `perturbation_norm` and `nonfinite_batches`."""
        return self.step_state.metrics(self.clean_weight)

    def reset_metrics(self):
        super().reset_metrics()
        for metric in self.step_state.metrics():
            metric.reset_state()

    def get_metrics_result(self):
        # With the training metrics, so that fit's epoch logs are read from the
        # metrics themselves (exact under tf.distribute); evaluate's logs, which
        # lack them, are taken from the test step as Keras does.
        return results(self.metrics + self.training_metrics)

    @property
    def metrics_variables(self):
        """Variables of `metrics` and `training_metrics` (JAX threads them through the step)."""
        variables = [v for m in self.metrics + self.step_state.metrics() for v in m.variables]
        return list({id(v): v for v in variables}.values())  # each once, in order

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
        # Build the adv_* containers with the model's own (Keras builds only the
        # compiled ones): creating their variables inside a distributed step is not possible.
        if data_batch is None and iterator is not None:
            for _, _, data_or_iterator in iterator:
                data_batch = (data_or_iterator[0] if isinstance(data_or_iterator, (list, tuple))
                              else next(data_or_iterator))
                break
        if data_batch is not None:
            self.step_state.build_metrics(data_batch)
            data_batch = fit_data.without_example_index(data_batch)
        super()._symbolic_build(iterator=iterator, data_batch=data_batch)

    # -- the policy's state --------------------------------------------------------
    def build_policy_state(self, x):
        """Creates the policy's persistent state for batches like `x`.

        `fit` and `train_on_batch` call this; call it yourself only when you
        drive `train_step` directly.

        Args:
            x: one batch of inputs (batch axis first).
        """
        if self.policy.state_shapes([()]) and not self.step_state.policy_variables:
            self.step_state.build_policy_state(self.policy, fit_data.clean_sites(self, x))

    def build_example_state(self, x, num_examples):
        """Creates the policy's per-example memory (one row per training example).

        `fit` calls this; call it yourself only when you drive `train_step`
        directly with indexed inputs (`keras_bidir.example_index`).

        Args:
            x: one batch of inputs (batch axis first), possibly indexed.
            num_examples: the number of training examples.
        """
        x, _ = example_index.split(x)
        self.step_state.build_example_state(self.policy, fit_data.clean_sites(self, x),
                                            num_examples)

    # -- training ------------------------------------------------------------------
    def fit(self, x=None, y=None, batch_size=None, *args, **kwargs):
        x = fit_data.prepare(self, x, y, batch_size)
        callbacks = list(kwargs.pop("callbacks", None) or []) + fit_callbacks.added_callbacks(self)
        with backend.fit_guard(self):
            try:
                return super().fit(x, y, batch_size, *args, callbacks=callbacks, **kwargs)
            except Exception as error:  # the checks a dataset's pipeline got above
                clear = fit_data.translate_error(self, error)
                if clear is None:
                    raise
                raise clear from None

    def train_on_batch(self, x, y=None, *args, **kwargs):
        fit_data.check_batch(self, x)
        return super().train_on_batch(x, y, *args, **kwargs)

    def train_step(self, *args):
        # The step is described backend-neutrally in keras_bidir.trainer; the
        # active backend orders its calls (keras_bidir/steps/<name>.py).
        # TensorFlow passes `data`, JAX `state, data`.
        return steps.train_step(self, *args)

    def test_step(self, *args):
        *state, data = args
        data = fit_data.without_example_index(data)  # validation_split keeps fit's index
        return steps.test_step(self, *state, data, lambda: trainer.test_logs(self, data))

    # -- the policy on its own ---------------------------------------------------------
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
        if not self.step_state.compiled:
            raise RuntimeError("Compile the model before calling perturb().")
        return self.policy.perturb(
            self, x, y, training=self.attack_mode == "training", seed=self.seed_generator,
            scale=ops.convert_to_tensor(self.perturbation_scale))

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
        return inspection.inspect(self, x, y)

    # -- saving ----------------------------------------------------------------------
    def save_own_variables(self, store):
        super().save_own_variables(store)
        self.step_state.save_random_states(store)

    def load_own_variables(self, store):
        super().load_own_variables(without_random_states(store))
        self.step_state.load_random_states(store)

    def get_build_config(self):
        return (super().get_build_config() or {}) | self.step_state.build_config()

    def build_from_config(self, config):
        config, own = self.step_state.split_config(config)
        if config:
            super().build_from_config(config)
        self.step_state.restore(own)

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name, "trainable": self.trainable,
            "base_model": serialize(self.base_model), "policy": serialize(self.policy),
            "adversarial_weight": self.adversarial_weight, "clean_weight": self.clean_weight,
            "perturb": self.perturb_names, "attack_mode": self.attack_mode,
            "clean_metrics": self.clean_metrics, "seed": self.seed,
        } | ({} if self.weight_policy is None else
             {"weight_policy": serialize(self.weight_policy)})

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("base_model", "policy", "weight_policy"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects)
        base_model, policy = config.pop("base_model"), config.pop("policy")
        return cls(base_model, policy, **config)
