"""The training step's own state: everything one step reads and writes besides θ and the optimizer.

A `BidirectionalModel` builds one `StepState` (`model.step_state`) and fills it
at `compile` (the adversarial loss and metric containers) and at the first
`fit` (the policy's persistent state and per-example memory).
`keras_bidir.trainer` reads and writes the step's state through it alone, as
Keras' trainers read an explicit state: on TensorFlow these are variables, on
JAX their values travel in the step's state tuple (`metrics_variables` and
`non_trainable_variables`).

The variables are the model's own weights (`model.add_weight`), so files saved
by earlier versions, which hold them as the model's variables, keep loading.
"""

import keras
from keras import ops
from keras import tree

from keras_bidir import backend
from keras_bidir import example_index
from keras_bidir import losses as losses_lib
from keras_bidir.backend import private
from keras_bidir.metrics import PrefixedCompileLoss
from keras_bidir.metrics import PrefixedCompileMetrics
from keras_bidir.metrics import StepMean
from keras_bidir.metrics import clone_metric_spec

_RANDOM_STATE = "random_state_"


class StepState:
    """What the bidirectional step keeps between steps.

    Args:
        model: the `BidirectionalModel` that owns the variables.

    Attributes:
        policy_variables: the input policy's persistent state (free
            training's perturbation), laid out as one block per replica.
        example_variables: the per-example memory (one row per training
            example: ATAS, PriorGuidedFGSM), or `[]`.
        adv_loss, clean_loss, perturbation_norm, nonfinite: the trackers
            behind `adv_loss`, `clean_loss`, `perturbation_norm` and
            `nonfinite_batches`.
        adv_compile_loss, adv_compile_metrics: the adversarial copies of the
            compiled loss and metrics (`adv_<output>_loss`, `adv_<metric>`);
            None before `compile`.
        attack_loss: the compiled loss per example, which the policies ascend.
        loss_spec: the `compile(loss=...)` argument.
    """

    def __init__(self, model):
        self._model = model
        self.policy_variables, self.policy_dtypes, self.example_variables = [], [], []
        self.adv_loss = StepMean(name="adv_loss")
        self.clean_loss = StepMean(name="clean_loss")
        self.perturbation_norm = StepMean(name="perturbation_norm")
        self.nonfinite = keras.metrics.Sum(name="nonfinite_batches")
        self.adv_compile_loss = self.adv_compile_metrics = None
        self.attack_loss = self.loss_spec = None

    # -- compile ------------------------------------------------------------------
    def compile(self, loss, loss_weights, metrics, weighted_metrics):
        """The adversarial loss and metric containers for a `compile` call."""
        model = self._model
        compiled_metrics = private.compiled_metrics(model)
        self.adv_compile_loss = PrefixedCompileLoss(
            loss, loss_weights, "adv_", private.compiled_loss(model).output_names)
        self.attack_loss = losses_lib.per_example_loss_fn(loss, loss_weights)
        self.loss_spec = loss
        self.adv_compile_metrics = None
        if metrics or weighted_metrics:
            self.adv_compile_metrics = PrefixedCompileMetrics(
                clone_metric_spec(metrics), clone_metric_spec(weighted_metrics), prefix="adv_",
                output_names=None if compiled_metrics is None else compiled_metrics.output_names)

    @property
    def compiled(self):
        return self.attack_loss is not None

    def build_metrics(self, data_batch):
        """Builds the adversarial containers from one batch's shapes (outside any distributed step)."""
        containers = [c for c in (self.adv_compile_metrics, self.adv_compile_loss)
                      if c is not None and not c.built]
        if not containers:
            return
        data_batch = tree.map_structure(
            lambda v: None if v is None else keras.KerasTensor(
                v.shape, keras.backend.standardize_dtype(v.dtype)), data_batch)
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data_batch)
        x, _ = example_index.split(x)

        def build(x, y, sample_weight):
            outputs = self._model(x, training=False)
            if self.adv_compile_metrics is not None:
                self.adv_compile_metrics.update_state(y, outputs, sample_weight)
            if self.adv_compile_loss is not None:
                self.adv_compile_loss(y, outputs, sample_weight)
            return y

        if y is not None:
            private.compute_output_spec(build, x, y, sample_weight)

    def metrics(self, clean_weight=None):
        """The training-only metrics (`clean_loss` only when `clean_weight` > 0, if given)."""
        metrics = [self.adv_loss, self.perturbation_norm, self.nonfinite]
        if clean_weight is None or clean_weight > 0:
            metrics.insert(1, self.clean_loss)
        if self.adv_compile_loss is not None:
            metrics += self.adv_compile_loss.metrics
        if self.adv_compile_metrics is not None:
            metrics.append(self.adv_compile_metrics)
        return metrics

    # -- the policy's state ---------------------------------------------------------
    def build_policy_state(self, policy, clean):
        """Creates the policy's persistent state for batches whose sites are `clean`.

        Under tf.distribute it is one mirrored variable laid out as one block
        per replica, each sized for the per-replica batch (the global batch
        split evenly, rounded up); a policy may keep several tensors per site
        (site after site, in rounds).
        """
        model = self._model
        with backend.strategy_scope(model):
            replicas = backend.num_replicas()
        rows = -(-int(clean[0].shape[0]) // replicas)
        shapes = policy.state_shapes([(rows,) + tuple(t.shape[1:]) for t in clean])
        shapes = [(replicas * shape[0],) + tuple(shape[1:]) for shape in shapes]
        self.create_policy_variables(shapes, _site_dtypes(clean, len(shapes)))

    def create_policy_variables(self, shapes, dtypes):
        # Reading activation shapes at PerturbationPoints may already have built
        # (and locked) the model: unlock its tracker as Keras does in `_untrack_variable`.
        model = self._model
        with private.unlocked_tracker(model), backend.strategy_scope(model):
            for position, (shape, dtype) in enumerate(zip(shapes, dtypes)):
                self.policy_variables.append(model.add_weight(
                    shape=tuple(shape), initializer="zeros", dtype=dtype, trainable=False,
                    aggregation="only_first_replica", name=f"policy_state_{position}"))
        self.policy_dtypes = list(dtypes)

    def build_example_state(self, policy, clean, num_examples):
        """Creates the per-example memory: `num_examples` rows of the policy's shapes."""
        if self.example_variables:
            rows = self.example_rows
            if num_examples > rows:
                raise ValueError(
                    f"This model's per-example memory holds {rows} examples; the data has "
                    f"{num_examples}. Train on the same examples, or build a new model.")
            return
        shapes = policy.example_state_shapes([tuple(t.shape[1:]) for t in clean])
        self.create_example_variables([(int(num_examples),) + tuple(s) for s in shapes],
                                      _site_dtypes(clean, len(shapes)))

    def create_example_variables(self, shapes, dtypes):
        with private.unlocked_tracker(self._model):
            for position, (shape, dtype) in enumerate(zip(shapes, dtypes)):
                self.example_variables.append(self._model.add_weight(
                    shape=tuple(shape), initializer="zeros", dtype=dtype, trainable=False,
                    name=f"example_state_{position}"))

    @property
    def example_rows(self):
        """Rows of the per-example memory (0 before it is built)."""
        return int(self.example_variables[0].shape[0]) if self.example_variables else 0

    def read(self, example_index=None):
        """The state tensors a step starts from: this replica's policy block, then the batch's
        rows of the per-example memory (at `example_index`; the rest is never read)."""
        state = [backend.replica_block(ops.convert_to_tensor(v)) for v in self.policy_variables]
        return state + [backend.gather_rows(v, example_index) for v in self.example_variables]

    def write(self, state, example_index=None):
        """Stores a step's final state (the inverse of `read`): the memory's rows in place."""
        count = len(self.policy_variables)
        for variable, value in zip(self.policy_variables, state):
            variable.assign(backend.gather_blocks(value))
        for variable, rows in zip(self.example_variables, state[count:]):
            backend.scatter_rows(variable, example_index, rows)

    # -- saving ----------------------------------------------------------------------
    def build_config(self):
        """The shapes and dtypes `restore` needs to recreate the variables."""
        config = {}
        if self.policy_variables:
            config["policy_state_shapes"] = [list(v.shape) for v in self.policy_variables]
            config["policy_state_dtypes"] = list(self.policy_dtypes)
        if self.example_variables:
            config["example_state_shapes"] = [list(v.shape) for v in self.example_variables]
            config["example_state_dtypes"] = [
                keras.backend.standardize_dtype(v.dtype) for v in self.example_variables]
        return config

    @staticmethod
    def split_config(config):
        """`(keras_config, state_config)`: a build config split into Keras' part and `build_config`'s."""
        keys = ("policy_state_shapes", "policy_state_dtypes", "example_state_shapes",
                "example_state_dtypes")
        return ({k: v for k, v in config.items() if k not in keys},
                {k: v for k, v in config.items() if k in keys})

    def restore(self, config):
        """Recreates the variables `build_config` described."""
        shapes, dtypes = config.get("policy_state_shapes"), config.get("policy_state_dtypes")
        if shapes and not self.policy_variables:
            self.create_policy_variables(shapes, dtypes)
        shapes, dtypes = config.get("example_state_shapes"), config.get("example_state_dtypes")
        if shapes and not self.example_variables:
            self.create_example_variables(shapes, dtypes)

    def random_states(self):
        """Every random stream the training draws from: the policy's seed, its augmentation
        layers', and the model's own layers' (Dropout), in a fixed order."""
        states, seen = [], set()
        for layer in private.nested_layers(self._model, include_self=True):
            for generator in private.seed_generators(layer):
                if id(generator) not in seen:
                    seen.add(id(generator))
                    states.append(generator.state)
        return states

    def save_random_states(self, store):
        # Keras saves variables, not random streams: without them a resumed fit
        # (BackupAndRestore) would draw PGD's random starts afresh.
        for position, state in enumerate(self.random_states()):
            store[f"{_RANDOM_STATE}{position}"] = state

    def load_random_states(self, store):
        keys = list(store.keys())
        for position, state in enumerate(self.random_states()):
            key = f"{_RANDOM_STATE}{position}"
            if key in keys:  # files saved by earlier versions have none
                state.assign(store[key])


def without_random_states(store):
    """The entries of a variable store that are not random streams (the model's own variables)."""
    return {k: store[k] for k in store.keys() if not k.startswith(_RANDOM_STATE)}


def _site_dtypes(clean, count):
    """The dtypes of `count` state tensors: a policy keeps several per site, site after site."""
    return [keras.backend.standardize_dtype(clean[i % len(clean)].dtype) for i in range(count)]


def results(metrics):
    """The logs of `metrics`, skipping those never updated (no labels, clean_metrics=False)."""
    logs = {}
    for metric in metrics:
        if not getattr(metric, "built", True):
            continue
        result = metric.result()
        logs.update(result if isinstance(result, dict) else {metric.name: result})
    return logs
