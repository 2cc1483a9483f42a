"""Keras callbacks that measure and steer robustness during `fit()`."""

import keras
import numpy as np
from keras import ops

from keras_bidir import backend
from keras_bidir import evaluation
from keras_bidir import outputs as outputs_lib
from keras_bidir import policies as policies_lib
from keras_bidir.policies.base import check_count
from keras_bidir.policies.base import check_positive


def _bidirectional(model, who):
    from keras_bidir.model import BidirectionalModel

    if not isinstance(model, BidirectionalModel):
        raise TypeError(f"{who} works with a keras_bidir.BidirectionalModel, got {type(model).__name__}.")
    return model


def _eps_key(epsilon):
    return f"{epsilon:g}"


@keras.saving.register_keras_serializable(package="keras_bidir")
class RobustAccuracy(keras.callbacks.Callback):
    """Adds robust validation accuracy to the epoch logs.

    Logs `val_robust_accuracy` (at the attack's own ε) and one
    `val_robust_accuracy_eps<ε>` per ε, so that `EarlyStopping`,
    `ModelCheckpoint(monitor="val_robust_accuracy", mode="max")`,
    `TensorBoard` and `CSVLogger` can use them. Put it before those callbacks
    in the list. An example counts as robust only if it survives every
    restart of the attack.

    Args:
        validation_data: `(x, y)` arrays or a labelled dataset.
        attack: an `InputPolicy` used as the attack (e.g. `PGD(0.2, steps=20,
            restarts=2)`); its ε is the one logged as `val_robust_accuracy`.
        epsilons: optional extra radii (the attack is re-scaled to each).
        every: evaluate every `every` epochs (others log nothing).
        batch_size: examples per attack batch.
        seed: seed of the attack's random starts.
        output: for multi-output models, the head whose accuracy is logged.
        from_logits: whether the outputs are logits (True) or probabilities
            (False), when neither the compiled loss nor the output layer says
            (e.g. a sigmoid applied in a subclassed model's `call()`).

    Raises:
        ValueError: at the start of training, for a regression model (it has
            no accuracy: use `evaluate_robustness`, which reports its loss
            under attack) and for outputs it cannot read.

    Example:

    ```python
    callbacks = [
        kb.callbacks.RobustAccuracy((x_val, y_val), kb.policies.PGD(0.2, steps=20, restarts=2)),
        keras.callbacks.ModelCheckpoint("best.keras", monitor="val_robust_accuracy", mode="max",
                                        save_best_only=True),
    ]
    ```
    """

    def __init__(self, validation_data=None, attack=None, epsilons=None, every=1,
                 batch_size=256, seed=0, output=None, from_logits=None):
        super().__init__()
        if attack is None:
            raise ValueError("RobustAccuracy needs an attack, e.g. keras_bidir.policies.PGD(0.2, steps=20).")
        self.attack = policies_lib.get(attack)
        if not hasattr(self.attack, "epsilon"):
            raise ValueError(f"{type(self.attack).__name__} has no epsilon; use an ε-ball attack such as PGD.")
        self.epsilons = [float(e) for e in (epsilons or [self.attack.epsilon])]
        self.every = check_count("every", every)
        self.batch_size = check_count("batch_size", batch_size)
        self.seed = seed
        self.output = output
        self.from_logits = from_logits
        self.validation_data = validation_data
        self._data = None
        self._judge = None
        self._runners = {}

    def on_train_begin(self, logs=None):
        if self.validation_data is None:
            raise ValueError("RobustAccuracy has no validation_data: pass (x_val, y_val).")
        if self._data is None:
            self._data = evaluation.materialize(self.validation_data)
        x, y = self._data
        self._judge = evaluation.Judge.describe(self.model, x, y, self.output, self.from_logits,
                                                self.batch_size)
        if not self._judge.kind.is_classification:
            raise ValueError(
                "RobustAccuracy measures classification accuracy, but this is a regression "
                "model (regression loss or continuous targets). Evaluate it with "
                "keras_bidir.evaluate_robustness, which reports its loss under attack."
            )

    def on_epoch_end(self, epoch, logs=None):
        if logs is None or (epoch + 1) % self.every:
            return
        x, y = self._data
        results = {}
        for eps in sorted(set(self.epsilons) | {self.attack.epsilon}):
            # One compiled attack for every epoch and radius (ε is a runtime argument).
            results[eps] = float(np.mean(evaluation.scores_under_attack(
                self.model, x, y, self.attack, self._judge, batch_size=self.batch_size,
                seed=self.seed, epsilon=eps, runners=self._runners,
            )))
        logs["val_robust_accuracy"] = results[self.attack.epsilon]
        for eps in self.epsilons:
            logs[f"val_robust_accuracy_eps{_eps_key(eps)}"] = results[eps]

    def get_config(self):
        return {"attack": keras.saving.serialize_keras_object(self.attack),
                "epsilons": self.epsilons, "every": self.every,
                "batch_size": self.batch_size, "seed": self.seed,
                "output": self.output, "from_logits": self.from_logits}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["attack"] = keras.saving.deserialize_keras_object(config["attack"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_bidir")
class EpsilonSchedule(keras.callbacks.Callback):
    """Ramps the policy's ε (and step size, which scale along) during training.

    The scale applied to ε is 0 for the first `delay` units (no adversarial
    perturbation: training on clean inputs, a delayed start), then rises
    linearly from `start` to 1 over `ramp` units, then stays at 1. A unit is an
    epoch or a training step (`unit="step"` follows `optimizer.iterations`,
    so it resumes correctly). The scale is logged as `epsilon_scale`.

    Args:
        ramp: length of the linear ramp (0: jump straight to full ε).
        delay: units of clean training before the ramp.
        start: scale at the beginning of the ramp.
        unit: `"epoch"` or `"step"`.

    Example:

    >>> kb.callbacks.EpsilonSchedule(ramp=5, delay=2)   # clean for 2 epochs, ramp over 5
    """

    def __init__(self, ramp=0, delay=0, start=0.0, unit="epoch"):
        super().__init__()
        for name, value in (("ramp", ramp), ("delay", delay)):
            check_count(name, value, minimum=0)
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"start must lie in [0, 1], got {start!r}.")
        if unit not in ("epoch", "step"):
            raise ValueError(f"unit must be 'epoch' or 'step', got {unit!r}.")
        self.ramp, self.delay, self.start, self.unit = int(ramp), int(delay), float(start), unit

    def scale_at(self, t):
        """The ε-scale at epoch or step `t` (0-based)."""
        if t < self.delay:
            return 0.0
        if self.ramp == 0:
            return 1.0
        progress = min(1.0, (t - self.delay + 1) / self.ramp)
        return self.start + (1.0 - self.start) * progress

    def _set(self, t):
        _bidirectional(self.model, "EpsilonSchedule").perturbation_scale.assign(self.scale_at(t))

    def on_epoch_begin(self, epoch, logs=None):
        if self.unit == "epoch":
            self._set(epoch)

    def on_train_batch_begin(self, batch, logs=None):
        if self.unit == "step":
            model = _bidirectional(self.model, "EpsilonSchedule")
            backend.sync_state(model)  # JAX: the running fit's state, written back to read and set
            replays = max(1, model.policy.replays)
            self._set(int(ops.convert_to_numpy(model.optimizer.iterations)) // replays)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epsilon_scale"] = float(ops.convert_to_numpy(self.model.perturbation_scale))

    def get_config(self):
        return {"ramp": self.ramp, "delay": self.delay, "start": self.start, "unit": self.unit}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


REMEDIES = ("pgd", "shrink_step", "stop")


@keras.saving.register_keras_serializable(package="keras_bidir")
class CatastrophicOverfittingGuard(keras.callbacks.Callback):
    """Detects and repairs catastrophic overfitting of single-step training.

    FGSM, RandomFGSM and free adversarial training can suddenly lose all
    robustness to multi-step attacks while their own adversarial accuracy
    soars (Wong, Rice and Kolter 2020 saw PGD accuracy fall to 0% within an
    epoch). The guard measures PGD accuracy on a held training batch every
    `check_every` steps and at each epoch end (at the policy's full ε, whatever
    an `EpsilonSchedule` does); when it falls by at least
    `min_drop` below the best seen and below `ratio` × best, it restores the
    weights and optimizer state of the last good check and applies `remedy`:

    - `"pgd"`: switch the model to `PGD(ε, steps=pgd_steps)` training;
    - `"shrink_step"`: multiply the policy's step size by `shrink_factor`;
    - `"stop"`: stop training.

    Events are printed, kept in `guard.events`, and counted in the epoch logs
    as `co_guard_events`.

    Args:
        x: the held training batch (inputs).
        y: its labels.
        attack: the detecting attack; default PGD-10 at the policy's ε.
        check_every: also check every N training steps (None: epoch ends only).
        min_drop: absolute accuracy drop that counts as a collapse.
        ratio: relative level below which accuracy counts as collapsed.
        remedy: `"pgd"`, `"shrink_step"` or `"stop"`.
        pgd_steps: steps of the PGD remedy.
        shrink_factor: factor of the `"shrink_step"` remedy.
        verbose: 1 prints each event.
    """

    def __init__(self, x=None, y=None, attack=None, check_every=None, min_drop=0.2, ratio=0.5,
                 remedy="pgd", pgd_steps=7, shrink_factor=0.5, verbose=1):
        super().__init__()
        if remedy not in REMEDIES:
            raise ValueError(f"remedy must be one of {REMEDIES}, got {remedy!r}.")
        self.x, self.y = x, y
        self.attack = None if attack is None else policies_lib.get(attack)
        self.check_every = None if check_every is None else check_count("check_every", check_every)
        self.min_drop = check_positive("min_drop", min_drop)
        self.ratio = check_positive("ratio", ratio)
        self.remedy = remedy
        self.pgd_steps = check_count("pgd_steps", pgd_steps)
        self.shrink_factor = check_positive("shrink_factor", shrink_factor)
        if self.shrink_factor >= 1:
            raise ValueError("shrink_factor must be < 1.")
        self.verbose = verbose
        self.events = []
        self._best = -1.0
        self._snapshot = None
        self._steps = 0
        self._epoch = 0
        self._judge = None

    def on_train_begin(self, logs=None):
        model = _bidirectional(self.model, "CatastrophicOverfittingGuard")
        self._judge = None
        if self.x is None or self.y is None:
            raise ValueError("CatastrophicOverfittingGuard needs a held training batch: x=..., y=....")
        policy = model.policy
        if self.remedy == "shrink_step" and not hasattr(policy, "step_size"):
            raise ValueError(f"remedy='shrink_step' needs a policy with a step_size; "
                             f"{type(policy).__name__} has none. Use remedy='pgd'.")
        if self.attack is None:
            if not hasattr(policy, "epsilon"):
                raise ValueError(f"Pass attack=...: {type(policy).__name__} has no epsilon.")
            self.attack = policies_lib.PGD(policy.epsilon, steps=10, norm=policy.norm,
                                           clip_min=policy.clip_min, clip_max=policy.clip_max)

    def _accuracy(self):
        # At the full ε, not the scheduled one: a ramping ε would otherwise
        # look like a collapse (accuracy falls as ε grows).
        if self._judge is None:  # what the outputs are, decided once per fit
            self._judge = evaluation.Judge.describe(self.model, self.x, self.y)
        return float(np.mean(evaluation.scores_under_attack(
            self.model, self.x, self.y, self.attack, self._judge)))

    def _take_snapshot(self):
        self._snapshot = (
            [v.numpy().copy() for v in self.model.variables],
            [v.numpy().copy() for v in self.model.optimizer.variables],
        )

    def _restore(self):
        weights, optimizer_vars = self._snapshot
        for variable, value in zip(self.model.variables, weights):
            variable.assign(value)
        for variable, value in zip(self.model.optimizer.variables, optimizer_vars):
            variable.assign(value)

    def _remedy(self):
        model = self.model
        old = model.policy
        if self.remedy == "stop":
            model.stop_training = True
            return "stopped training"
        if self.remedy == "pgd":
            model.policy = policies_lib.PGD(old.epsilon, steps=self.pgd_steps, norm=old.norm,
                                            clip_min=old.clip_min, clip_max=old.clip_max)
        else:
            config = old.get_config()
            config["step_size"] = config["step_size"] * self.shrink_factor
            model.policy = old.__class__.from_config(config)
        return f"switched policy {old!r} -> {model.policy!r}"

    def _check(self, where):
        accuracy = self._accuracy()
        collapsed = (
            self._best >= 0
            and self._best - accuracy >= self.min_drop
            and accuracy < self.ratio * self._best
        )
        if not collapsed:
            if accuracy >= self._best:
                self._best = accuracy
            self._take_snapshot()
            return
        event = {"epoch": self._epoch, "step": self._steps, "where": where,
                 "pgd_accuracy": accuracy, "best_pgd_accuracy": self._best}
        self._restore()
        event["action"] = "restored the last good weights; " + self._remedy()
        self.events.append(event)
        if self.verbose:
            print(f"\nCatastrophicOverfittingGuard: PGD accuracy on the held batch fell to "
                  f"{accuracy:.1%} (best {self._best:.1%}) at epoch {self._epoch + 1}, step "
                  f"{self._steps}; {event['action']}.")

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._snapshot is None:
            self._check("start")

    def on_train_batch_end(self, batch, logs=None):
        self._steps += 1
        if self.check_every and self._steps % self.check_every == 0 and not self.model.stop_training:
            self._check("step")

    def on_epoch_end(self, epoch, logs=None):
        if not self.model.stop_training:
            self._check("epoch")
        if logs is not None:
            logs["co_guard_events"] = len(self.events)

    def get_config(self):
        return {"attack": None if self.attack is None else keras.saving.serialize_keras_object(self.attack),
                "check_every": self.check_every, "min_drop": self.min_drop, "ratio": self.ratio,
                "remedy": self.remedy, "pgd_steps": self.pgd_steps,
                "shrink_factor": self.shrink_factor, "verbose": self.verbose}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if config.get("attack") is not None:
            config["attack"] = keras.saving.deserialize_keras_object(config["attack"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="keras_bidir")
class PerturbationStats(keras.callbacks.Callback):
    """Logs what the policy does to a held batch at the end of each epoch.

    Logs `input_gradient_norm` (mean per-example L2 norm of the loss
    gradient at the clean inputs), `held_perturbation_norm` (mean
    per-example norm of x̃ − x in the policy's norm) and `flip_rate` (the
    fraction of examples whose predicted class the perturbation changes;
    classifiers with one output only).

    With `log_dir`, it also draws what the policy does, every `images_every`
    epochs, to TensorBoard: for a model perturbed at an input, the grid of
    `gallery.FlippedExamples` (clean input, perturbed input, perturbation,
    both labels) of the held examples whose prediction flipped; for a model
    perturbed at a `PerturbationPoint`, the tokens whose embeddings moved
    most (`gallery.token_shifts`), as text.

    Args:
        x: the held batch (inputs).
        y: its labels.
        every: log every `every` epochs.
        from_logits: whether the outputs are logits, when neither the
            compiled loss nor the output layer says (see `RobustAccuracy`).
        log_dir: TensorBoard directory for the pictures (None: no pictures).
        images_every: draw every this many epochs.
        count: at most this many examples per picture.
        class_names: optional class names for the titles.
        vocabulary: optional list mapping token ids to strings (text models).

    Example:

    >>> stats = keras_bidir.callbacks.PerturbationStats(x_val[:64], y_val[:64],
    ...                                                 log_dir="logs", images_every=5)
    """

    def __init__(self, x=None, y=None, every=1, from_logits=None, log_dir=None, images_every=1,
                 count=8, class_names=None, vocabulary=None):
        super().__init__()
        self.x, self.y = x, y
        self.every = check_count("every", every)
        self.from_logits = from_logits
        self.log_dir = None if log_dir is None else str(log_dir)
        self.images_every = check_count("images_every", images_every)
        self.count = check_count("count", count)
        self.class_names = None if class_names is None else list(class_names)
        self.vocabulary = vocabulary
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        pictures = self.log_dir is not None and (epoch + 1) % self.images_every == 0
        if (logs is None or (epoch + 1) % self.every) and not pictures:
            return
        model = _bidirectional(self.model, "PerturbationStats")
        if self.x is None:
            raise ValueError("PerturbationStats needs a held batch: x=..., y=....")
        seen = model.inspect(self.x, self.y)
        if pictures:
            self._draw(model, seen, epoch + 1)
        if logs is None or (epoch + 1) % self.every:
            return
        if seen["input_gradient_norm"] is not None:
            logs["input_gradient_norm"] = seen["input_gradient_norm"]
        logs["held_perturbation_norm"] = seen["perturbation_norm"]
        kind = self._kind(model, seen)
        if kind is None:
            return  # No single class prediction to flip.
        before = kind.predict(ops.convert_to_numpy(seen["outputs"]))
        after = kind.predict(ops.convert_to_numpy(seen["attacked_outputs"]))
        logs["flip_rate"] = float(np.mean(before != after))

    def _kind(self, model, seen):
        """The outputs' kind for a single-output classifier, else None."""
        if keras.tree.is_nested(seen["outputs"]) or self.y is None:
            return None
        kind = outputs_lib.describe_outputs(model, seen["outputs"], self.y, self.from_logits)
        return kind if kind.is_classification else None

    def _draw(self, model, seen, step):
        from keras_bidir.evaluation import pictures as gallery
        from keras_bidir.tensorboard import SummaryWriter

        if self._writer is None:
            self._writer = SummaryWriter(self.log_dir)
        names = seen["site_names"]
        points = [i for i, n in enumerate(names) if isinstance(n, str)]
        if points:  # embeddings at PerturbationPoints: which tokens moved
            ids = next((a for a in keras.tree.flatten(self.x)
                        if np.issubdtype(np.asarray(a).dtype, np.integer)), None)
            for i in points:
                clean = ops.convert_to_numpy(seen["clean_sites"][i])
                if ids is None or clean.ndim != 3:
                    continue
                shifts = gallery.token_shifts(clean, ops.convert_to_numpy(
                    seen["adversarial_sites"][i]), np.asarray(ids)[:, :clean.shape[1]],
                    vocabulary=self.vocabulary)
                self._writer.text(f"perturbation/tokens_moved_most/{names[i]}",
                                  gallery.format_token_shifts(shifts[:self.count]), step)
            return
        kind = self._kind(model, seen)
        if kind is None or len(names) != 1:
            return
        labels = kind.labels(self.y)
        before = kind.predict(ops.convert_to_numpy(seen["outputs"]))
        after = kind.predict(ops.convert_to_numpy(seen["attacked_outputs"]))
        keep = np.flatnonzero((before == labels) & (after != labels))[:self.count]
        if not keep.size:
            return
        flipped = gallery.FlippedExamples(
            ops.convert_to_numpy(seen["clean_sites"][0])[keep],
            ops.convert_to_numpy(seen["adversarial_sites"][0])[keep], labels[keep],
            before[keep], after[keep], type(model.policy).__name__,
            getattr(model.policy, "epsilon", float("nan")))
        self._writer.image("perturbation/flipped_examples",
                           flipped.to_image(self.count, self.class_names), step)

    def get_config(self):
        return {"every": self.every, "from_logits": self.from_logits, "log_dir": self.log_dir,
                "images_every": self.images_every, "count": self.count,
                "class_names": self.class_names, "vocabulary": self.vocabulary}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
