"""Made tests/data/backend_{tensorflow,jax}_free.keras, the files the cross-backend test loads
under the other backend: run once per backend from the repository root,

    KERAS_BACKEND=tensorflow python tests/data/make_backend_files.py tests/data
    KERAS_BACKEND=jax python tests/data/make_backend_files.py tests/data

Each writes the model (a free-adversarially trained tiny CNN, its persistent perturbation
included) and its predictions on the first 32 test digits.
"""
import os
import sys

import keras
import numpy as np

import keras_bidir as kb

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from conftest import compile_classifier, tiny_cnn  # noqa: E402

out = sys.argv[1]
backend = keras.backend.backend()
(x, y), (x_test, _) = kb.datasets.load_digits()
model = compile_classifier(kb.BidirectionalModel(
    tiny_cnn(5), kb.policies.FreeAdversarial(0.1, replays=2, clip_min=0.0, clip_max=1.0), seed=0))
model.fit(x[:128], y[:128], batch_size=32, epochs=1, verbose=0)
model.save(f"{out}/backend_{backend}_free.keras")
np.save(f"{out}/backend_{backend}_free_predictions.npy", model.predict(x_test[:32], verbose=0))
print("saved under", backend)
