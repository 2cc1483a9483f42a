import csv

import keras
import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import callbacks, evaluation, policies
from conftest import compile_classifier, tiny_cnn

# `make test` runs the tests marked `backends` on both backends (tests/README.md: which)

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


def _model(policy=None, seed=0):
    policy = policy or policies.RandomFGSM(0.2, **CLIP)
    return compile_classifier(kb.BidirectionalModel(tiny_cnn(seed), policy, seed=seed))


def test_robust_accuracy_drives_model_checkpoint_and_csv_logger(digits, tmp_path):
    (x, y), (xv, yv) = digits
    model = _model()
    attack = policies.PGD(0.2, steps=5, restarts=2, **CLIP)
    robust = callbacks.RobustAccuracy((xv[:150], yv[:150]), attack, epsilons=[0.1, 0.2])
    best_path = tmp_path / "best.keras"
    checkpoint = keras.callbacks.ModelCheckpoint(best_path, monitor="val_robust_accuracy",
                                                 mode="max", save_best_only=True, verbose=0)
    saved_at = []

    class RecordSaves(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if best_path.exists():
                saved_at.append((best_path.stat().st_mtime_ns, epoch, logs["val_robust_accuracy"]))

    log_path = tmp_path / "log.csv"
    history = model.fit(x[:512], y[:512], batch_size=64, epochs=4, verbose=0,
                        validation_data=(xv, yv),
                        callbacks=[robust, checkpoint, RecordSaves(), keras.callbacks.CSVLogger(log_path)])
    values = history.history["val_robust_accuracy"]
    assert len(values) == 4
    assert history.history["val_robust_accuracy_eps0.1"][-1] >= values[-1] - 0.02
    # The saved model is the one from the best robust epoch.
    best_epoch = int(np.argmax(values))
    last_save = {}
    for mtime, epoch, value in saved_at:
        last_save.setdefault(mtime, (epoch, value))
    assert max(last_save.values())[0] == best_epoch or max(v for _, v in last_save.values()) == max(values)
    restored = keras.models.load_model(best_path)
    recomputed = evaluation.robust_accuracy(restored, xv[:150], yv[:150], attack, seed=0)
    assert recomputed == pytest.approx(max(values), abs=0.03)
    with open(log_path) as handle:
        rows = list(csv.DictReader(handle))
    assert "val_robust_accuracy" in rows[0] and len(rows) == 4


@pytest.mark.backends
def test_robust_accuracy_every_n_epochs(digits):
    (x, y), (xv, yv) = digits
    model = _model()
    robust = callbacks.RobustAccuracy((xv[:64], yv[:64]), policies.PGD(0.2, steps=2), every=2)
    history = model.fit(x[:128], y[:128], epochs=2, verbose=0, callbacks=[robust])
    assert len(history.history["val_robust_accuracy"]) == 1


def test_epsilon_schedule_delay_and_ramp(digits):
    (x, y), _ = digits
    schedule = callbacks.EpsilonSchedule(ramp=2, delay=1)
    assert [schedule.scale_at(t) for t in range(5)] == [0.0, 0.5, 1.0, 1.0, 1.0]
    model = _model(policies.FGSM(0.2, **CLIP))
    history = model.fit(x[:128], y[:128], batch_size=64, epochs=4, verbose=0, callbacks=[schedule])
    assert history.history["epsilon_scale"] == [0.0, 0.5, 1.0, 1.0]
    norms = history.history["perturbation_norm"]
    assert norms[0] == pytest.approx(0.0, abs=1e-7)
    assert norms[1] == pytest.approx(0.1, rel=1e-3) and norms[2] == pytest.approx(0.2, rel=1e-3)
    # Delayed start = clean training: the adversarial loss equals the clean loss.
    assert history.history["adv_accuracy"][0] == pytest.approx(history.history["accuracy"][0], abs=0.05)


@pytest.mark.backends
def test_epsilon_schedule_by_step_follows_optimizer_iterations(digits):
    (x, y), _ = digits
    model = _model(policies.FreeAdversarial(0.2, replays=2, **CLIP))
    scales = []
    schedule = callbacks.EpsilonSchedule(ramp=4, unit="step")

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            scales.append(float(self.model.perturbation_scale.numpy()))

    model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0, callbacks=[schedule, Record()])
    assert scales == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.backends
def test_perturbation_stats(digits):
    (x, y), _ = digits
    model = _model(policies.PGD(0.2, steps=3, **CLIP))
    stats = callbacks.PerturbationStats(x[:64], y[:64])
    logs = model.fit(x[:128], y[:128], epochs=2, verbose=0, callbacks=[stats]).history
    assert logs["held_perturbation_norm"][-1] == pytest.approx(0.2, rel=1e-3)
    assert 0.0 <= logs["flip_rate"][-1] <= 1.0
    assert logs["input_gradient_norm"][-1] > 0


@pytest.mark.parametrize("callback", [
    callbacks.RobustAccuracy(None, policies.PGD(0.2, steps=3), epsilons=[0.1, 0.2], every=2),
    callbacks.EpsilonSchedule(ramp=3, delay=1, start=0.1, unit="step"),
    callbacks.CatastrophicOverfittingGuard(remedy="shrink_step", check_every=5, min_drop=0.3),
    callbacks.PerturbationStats(every=3),
], ids=lambda c: type(c).__name__)
def test_callback_configs_round_trip(callback):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(callback))
    assert type(restored) is type(callback)
    assert restored.get_config() == callback.get_config()


@pytest.mark.parametrize("make,error,message", [
    (lambda: callbacks.RobustAccuracy((None, None)), ValueError, "needs an attack"),
    (lambda: callbacks.EpsilonSchedule(ramp=-1), ValueError, "ramp must be an integer >= 0"),
    (lambda: callbacks.EpsilonSchedule(unit="batch"), ValueError, "unit must be"),
    (lambda: callbacks.CatastrophicOverfittingGuard(remedy="panic"), ValueError, "remedy must be one of"),
    (lambda: callbacks.CatastrophicOverfittingGuard(shrink_factor=2.0), ValueError, "shrink_factor must be < 1"),
])
def test_callback_argument_errors(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_guard_requires_bidirectional_model_and_step_size(digits):
    (x, y), _ = digits
    plain = compile_classifier(tiny_cnn())
    with pytest.raises(TypeError, match="BidirectionalModel"):
        plain.fit(x[:64], y[:64], epochs=1, verbose=0,
                  callbacks=[callbacks.CatastrophicOverfittingGuard(x[:32], y[:32])])
    model = _model(policies.FGSM(0.2, **CLIP))
    with pytest.raises(ValueError, match="shrink_step.*no.*step_size|needs a policy with a step_size"):
        model.fit(x[:64], y[:64], epochs=1, verbose=0,
                  callbacks=[callbacks.CatastrophicOverfittingGuard(x[:32], y[:32], remedy="shrink_step")])
