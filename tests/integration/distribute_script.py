"""Training under tf.distribute, run in a fresh process (device setup must precede TF's).

Usage:
    python distribute_script.py mirrored OUTPUT.json
        Trains PGD and FreeAdversarial models on one device and under
        MirroredStrategy over 2 logical CPUs, same global batch and seed, and
        writes the largest differences.
    python distribute_script.py worker OUTPUT.npy   (TF_CONFIG set by the caller)
        One MultiWorkerMirroredStrategy worker: trains PGD and Free models for a
        few steps, saves their weights and logs.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

MODE, OUTPUT = sys.argv[1], sys.argv[2]
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bidir  # noqa: E402
from keras_bidir import callbacks  # noqa: E402
from keras_bidir import policies  # noqa: E402

GLOBAL_BATCH = 32


def data():
    (x, y), _ = keras_bidir.datasets.load_digits()
    return x[:256].reshape(256, -1), y[:256]


def make_policy(name):
    clip = {"clip_min": 0.0, "clip_max": 1.0}
    return {
        "pgd": lambda: policies.PGD(0.1, steps=3, **clip),
        "free": lambda: policies.FreeAdversarial(0.1, replays=3, **clip),
        "prior": lambda: policies.PriorGuidedFGSM(0.1, momentum=0.3, **clip),
        "mart": lambda: policies.MART(0.1, steps=2, **clip),
    }[name]()


def make_model(policy_name, initial_weights=None):
    base = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    if initial_weights is not None:
        base.set_weights(initial_weights)
    model = keras_bidir.BidirectionalModel(base, make_policy(policy_name), seed=7)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def train(policy_name, strategy, initial_weights, x, y):
    with strategy.scope():
        model = make_model(policy_name, initial_weights)
    history = model.fit(
        x, y, batch_size=GLOBAL_BATCH, epochs=3, shuffle=False, verbose=0,
        callbacks=[
            callbacks.EpsilonSchedule(ramp=2),
            callbacks.RobustAccuracy((x[:64], y[:64]), policies.PGD(0.1, steps=5), seed=1),
        ],
    )
    state = [np.asarray(v) for v in model.step_state.policy_variables]
    return model.base_model.get_weights(), history.history, state


def mirrored():
    x, y = data()
    keras.utils.set_random_seed(0)
    initial = make_model("pgd").base_model.get_weights()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    report = {"replicas": strategy.num_replicas_in_sync}
    for name in ("pgd", "free", "prior", "mart"):
        w1, h1, s1 = train(name, tf.distribute.get_strategy(), initial, x, y)
        w2, h2, s2 = train(name, strategy, initial, x, y)
        report[name] = {
            "weight_max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)),
            "weight_max_abs": max(float(np.max(np.abs(a))) for a in w1),
            "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, initial)),
            "metric_max_abs_diff": {
                key: max(abs(a - b) for a, b in zip(h1[key], h2[key])) for key in h1
            },
            "single": {key: h1[key][-1] for key in h1},
            "mirrored": {key: h2[key][-1] for key in h2},
            "state_max_abs_diff": max(
                [float(np.max(np.abs(a - b))) for a, b in zip(s1, s2)], default=0.0
            ),
            "state_shapes": [list(a.shape) for a in s2],
        }
    # Policies with a memory per training example refuse to run under a strategy.
    with strategy.scope():
        model = keras_bidir.BidirectionalModel(
            keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)]),
            policies.ATAS(0.1, clip_min=0.0, clip_max=1.0))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    try:
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
        report["per_example_memory_error"] = None
    except NotImplementedError as error:
        report["per_example_memory_error"] = str(error)
    with open(OUTPUT, "w") as f:
        json.dump(report, f, indent=1)


def worker():
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = data()
    weights, logs = [], {}
    for name in ["free"]:  # replays and a carried δ (PGD and the others: mirrored())
        keras.utils.set_random_seed(0)  # same initial weights on both workers
        with strategy.scope():
            model = make_model(name)
        history = model.fit(x[:128], y[:128], batch_size=GLOBAL_BATCH, epochs=2, shuffle=False,
                            validation_data=(x[128:192], y[128:192]), verbose=0)
        weights += [w.ravel() for w in model.base_model.get_weights()]
        logs[name] = {key: values[-1] for key, values in history.history.items()}
    np.save(OUTPUT, np.concatenate(weights))
    with open(OUTPUT + ".json", "w") as f:
        json.dump({"replicas": strategy.num_replicas_in_sync, "logs": logs}, f)


if __name__ == "__main__":
    {"mirrored": mirrored, "worker": worker}[MODE]()
