"""Helper for tests/integration/test_resume.py: trains, optionally dies mid-epoch, resumes.

    python tests/integration/resume_script.py MODE BACKUP_DIR OUTPUT POLICIES
MODE is "plain-run" (uninterrupted), "crash" (exits hard during epoch 3) or "resume"; the
first two also write the weights after epoch 2 to OUTPUT.<policy>.npy.epoch2.npy;
POLICIES a comma-separated list of "free" (persistent δ) and "pgd" (a random start from the
policy's random stream), trained one after the other in this process (a crash stops at the
first). Each policy backs up to BACKUP_DIR/<policy> and writes OUTPUT.<policy>.npy.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bidir as kb  # noqa: E402
from keras_bidir_cli.demo import digits_cnn  # noqa: E402


POLICIES = {
    "free": lambda: kb.policies.FreeAdversarial(0.2, replays=2, clip_min=0.0, clip_max=1.0),
    "pgd": lambda: kb.policies.PGD(0.2, steps=1, clip_min=0.0, clip_max=1.0),
}


def main(mode, backup_dir, output, policies):
    for policy in policies.split(","):
        train(mode, os.path.join(backup_dir, policy), f"{output}.{policy}.npy", policy)


def train(mode, backup_dir, output, policy):
    keras.utils.set_random_seed(0)
    (x, y), _ = kb.datasets.load_digits()
    x, y = x[:512], y[:512]
    model = kb.BidirectionalModel(digits_cnn(0), POLICIES[policy](), seed=0)
    replays = model.policy.replays
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = [keras.callbacks.BackupAndRestore(backup_dir),
                 kb.callbacks.EpsilonSchedule(ramp=12, unit="step")]
    if mode == "crash":

        class Die(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if self.model.optimizer.iterations.numpy() >= replays * (2 * 8 + 3):  # epoch 3
                    os._exit(17)

        callbacks.append(Die())
    seen = []
    callbacks.append(keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(b)))
    if mode != "resume":  # the weights after epoch 2, which the crashed run reaches too
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: epoch == 1 and np.save(
            output + ".epoch2.npy", np.concatenate([w.ravel() for w in model.get_weights()]))))
    model.fit(x, y, batch_size=64, epochs=4, shuffle=False, verbose=0, callbacks=callbacks)
    with open(output + ".batches", "w") as handle:
        handle.write(str(len(seen)))
    state = [v.numpy().ravel() for v in model.variables]
    state += [v.numpy().ravel().astype("float64") for v in model.optimizer.variables]
    np.save(output, np.concatenate([s.astype("float64") for s in state]))


if __name__ == "__main__":
    tf.config.experimental.enable_op_determinism()
    main(*sys.argv[1:5])
