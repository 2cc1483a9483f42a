"""JAX training under `keras.distribution.DataParallel`, in a fresh process.

XLA must be told to split the CPU into 2 devices before JAX starts, so the
test runs this script with `XLA_FLAGS=--xla_force_host_platform_device_count=2`.

Usage:
    KERAS_BACKEND=jax python data_parallel_script.py OUTPUT.json
        Trains each policy on one device and under DataParallel over the 2
        devices (same global batch, seed and initial weights) and writes the
        largest differences.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bidir  # noqa: E402
from keras_bidir import callbacks  # noqa: E402
from keras_bidir import policies  # noqa: E402

OUTPUT = sys.argv[1]
GLOBAL_BATCH = 32
CLIP = {"clip_min": 0.0, "clip_max": 1.0}
POLICIES = {
    # Carried state and replays (batch-prior FGSM carries its state the same way; the
    # RobustAccuracy callback's PGD runs under DataParallel with every policy).
    "free": lambda: policies.FreeAdversarial(0.1, replays=3, **CLIP),
    "atas": lambda: policies.ATAS(0.1, **CLIP),  # a memory per training example
    "sam": lambda: policies.FGSM(0.1, **CLIP),  # with the SAM weight policy
}


def data():
    (x, y), _ = keras_bidir.datasets.load_digits()
    return x[:256].reshape(256, -1), y[:256]


def make_model(name, initial_weights):
    base = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    base.set_weights(initial_weights)
    model = keras_bidir.BidirectionalModel(
        base, POLICIES[name](), seed=7, weight_policy="sam" if name == "sam" else None)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def train(name, distribution, initial, x, y):
    keras.distribution.set_distribution(distribution)
    try:
        model = make_model(name, initial)
        history = model.fit(
            x, y, batch_size=GLOBAL_BATCH, epochs=2, shuffle=False, verbose=0,
            callbacks=[callbacks.EpsilonSchedule(ramp=2, unit="step"),
                       callbacks.RobustAccuracy((x[:64], y[:64]), policies.PGD(0.1, steps=5), seed=1)])
        sharding = str(model.base_model.trainable_weights[0].value.sharding)
        state = [np.asarray(v) for v in model.step_state.policy_variables + model.step_state.example_variables]
        return model.base_model.get_weights(), history.history, state, sharding
    finally:
        keras.distribution.set_distribution(None)


def main():
    devices = keras.distribution.list_devices("cpu")
    x, y = data()
    keras.utils.set_random_seed(0)
    initial = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
                                keras.layers.Dense(10)]).get_weights()
    parallel = keras.distribution.DataParallel(devices=devices)
    report = {"devices": len(devices), "jax_devices": len(jax.devices())}
    for name in POLICIES:
        w1, h1, s1, _ = train(name, None, initial, x, y)
        w2, h2, s2, sharding = train(name, parallel, initial, x, y)
        report[name] = {
            "weight_max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, w2)),
            "moved": max(float(np.max(np.abs(a - b))) for a, b in zip(w1, initial)),
            "metric_max_abs_diff": {key: max(abs(a - b) for a, b in zip(h1[key], h2[key]))
                                    for key in h1},
            "state_max_abs_diff": max(
                [float(np.max(np.abs(a - b))) for a, b in zip(s1, s2)], default=0.0),
            "sharding": sharding,
        }
    with open(OUTPUT, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
