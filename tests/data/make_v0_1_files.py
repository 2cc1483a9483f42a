"""Made tests/data/v0_1_*.keras: run with the checkout of commit 761365b (keras-bidir 0.1 before
issues 14-16) on PYTHONPATH: `PYTHONPATH=<that checkout> python tests/data/make_v0_1_files.py tests/data`."""
import sys
import numpy as np
import keras
import keras_bidir as kb

out = sys.argv[1]
(x, y), (xt, yt) = kb.datasets.load_digits()
for name, policy in [("pgd", kb.policies.PGD(0.2, steps=2, clip_min=0.0, clip_max=1.0)),
                     ("free", kb.policies.FreeAdversarial(0.2, replays=2, clip_min=0.0, clip_max=1.0))]:
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((8, 8, 1)),
                             keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)])
    model = kb.BidirectionalModel(base, policy, seed=0)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:256], y[:256], batch_size=64, epochs=1, verbose=0)
    model.save(f"{out}/v0_1_{name}.keras")
    np.save(f"{out}/v0_1_{name}_predictions.npy", model.predict(xt[:16], verbose=0))
print("saved")
