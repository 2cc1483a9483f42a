"""Step time of a per-example memory at full-dataset scale: ATAS against the batch-prior FGSM.

    python -m keras_bidir_cli.memory_bench [NUM_EXAMPLES]     (full MNIST: keras-bidir data mnist)

Both train the same small CNN on MNIST (batch 128, 80 steps); ATAS keeps a perturbation, a
running gradient norm and a seen flag per training example (188 MB at 60,000 examples), the
batch-prior FGSM one batch's perturbation. Prints the median step times and their ratio.
"""

import sys
import time


def main(num_examples=60000, steps=80, batch_size=128):
    import keras
    import numpy as np

    import keras_bidir as kb

    (x, y), _ = kb.datasets.load_mnist()
    x, y = x[:num_examples], y[:num_examples]
    policies = {"fgsm_batch_prior": kb.policies.PriorGuidedFGSM(0.3, clip_min=0.0, clip_max=1.0),
                "atas": kb.policies.ATAS(0.3, clip_min=0.0, clip_max=1.0,
                                         num_examples=num_examples)}
    medians = {}
    for name, policy in policies.items():
        keras.utils.set_random_seed(0)
        base = keras.Sequential([keras.Input((28, 28, 1)),
                                 keras.layers.Conv2D(16, 3, strides=2, activation="relu"),
                                 keras.layers.Flatten(), keras.layers.Dense(10)])
        model = kb.BidirectionalModel(base, policy, seed=0)
        model.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        times = []
        timer = keras.callbacks.LambdaCallback(
            on_train_batch_begin=lambda batch, logs: times.append(-time.perf_counter()),
            on_train_batch_end=lambda batch, logs: times.__setitem__(-1, times[-1] + time.perf_counter()))
        model.fit(x, y, batch_size=batch_size, epochs=1, steps_per_epoch=steps, verbose=0,
                  callbacks=[timer])
        medians[name] = float(np.median(times[10:]))  # after compilation
    ratio = medians["atas"] / medians["fgsm_batch_prior"]
    print(f"{keras.backend.backend()}, {num_examples:,} examples: "
          + ", ".join(f"{k} {v * 1000:.1f} ms/step" for k, v in medians.items())
          + f"; ATAS ÷ batch-prior FGSM = {ratio:.2f}")
    return medians


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
