"""Helper for tests/integration/test_large_evaluations.py: peak memory of a streamed evaluation.

    python tests/integration/evaluation_memory_script.py COUNT
Evaluates COUNT MNIST-sized examples (28×28×1 float32, drawn batch by batch) under FGSM and
prints the process's peak resident memory in bytes.
"""

import os
import resource
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bidir as kb  # noqa: E402


def batches(count, size=500):
    rng = np.random.default_rng(0)
    for start in range(0, count, size):
        rows = min(size, count - start)
        yield (rng.uniform(size=(rows, 28, 28, 1)).astype("float32"),
               rng.integers(0, 10, size=rows))


def main(count):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    report = kb.evaluate_robustness(model, batches(count), [0.1], clip_min=0.0, clip_max=1.0,
                                    attacks={"FGSM": kb.policies.FGSM(0.1)}, checks=False,
                                    verbose=0, batch_size=500)
    assert report.num_examples == count
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


if __name__ == "__main__":
    main(int(sys.argv[1]))
