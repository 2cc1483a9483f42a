"""CIFAR-10 "fast adversarial training" (Wong, Rice and Kolter 2020) with the CO guard.

    python examples/cifar10_fast_at.py           # CIFAR-10 through TFDS, PreAct-ResNet-style model
    python examples/cifar10_fast_at.py --smoke   # bundled UCI digits as 8×8×3 images, offline

The recipe: RandomFGSM with ε = 8/255 and step 1.25·ε from a uniform random start,
SGD with momentum 0.9 and weight decay 5e-4, a cyclic (triangular) learning rate
that rises from 0 to its peak in the first 2/5 of training and falls back to 0,
15 epochs. Single-step training can collapse ("catastrophic overfitting": robust
accuracy against PGD drops to ~0 within an epoch); `CatastrophicOverfittingGuard`
watches PGD accuracy on a held batch during training and switches to PGD when it
collapses. Robustness is then measured with PGD-20x2 and APGD (`evaluate_robustness`).
"""

import argparse
import os
import sys


def build_parser():
    """The example's arguments (parsed before TensorFlow loads: --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="bundled digits, tiny ResNet, offline")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--data-dir", default=None, help="TFDS data directory")
    parser.add_argument("--limit", type=int, default=None, help="examples per split from TFDS")
    parser.add_argument("--output-dir", default="outputs/cifar10_fast_at")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's native start-up log")
    return parser


if __name__ == "__main__":
    _args = build_parser().parse_args()
    from keras_bidir_cli import import_quietly

    import_quietly(verbose=_args.verbose)  # hides TensorFlow's native start-up log

import keras  # noqa: E402

import keras_bidir as kb  # noqa: E402


@keras.saving.register_keras_serializable(package="examples")
class CyclicLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """Triangular schedule: 0 → `peak` over `rise_steps`, then → 0 at `total_steps`."""

    def __init__(self, peak, total_steps, rise_fraction=0.4):
        self.peak = float(peak)
        self.total_steps = int(total_steps)
        self.rise_fraction = float(rise_fraction)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        rise = max(1.0, self.rise_fraction * self.total_steps)
        fall = max(1.0, self.total_steps - rise)
        up = step / rise
        down = (self.total_steps - step) / fall
        return self.peak * keras.ops.clip(keras.ops.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps,
                "rise_fraction": self.rise_fraction}


def residual_block(x, filters, stride):
    """Pre-activation residual block (He et al. 2016)."""
    shortcut = x
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = keras.layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    return keras.layers.Add()([x, shortcut])


def build_resnet(input_shape, num_classes=10, widths=(64, 128, 256, 512), blocks=2, seed=0):
    """A PreAct-ResNet (ResNet-18 with the defaults) that outputs logits."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape)
    x = keras.layers.Conv2D(widths[0], 3, padding="same", use_bias=False)(inputs)
    for stage, filters in enumerate(widths):
        for block in range(blocks):
            x = residual_block(x, filters, 2 if stage > 0 and block == 0 else 1)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes)(x), name="preact_resnet")


def run(train, test, epochs=15, batch_size=128, peak_lr=0.2, widths=(64, 128, 256, 512),
        blocks=2, eval_examples=1000, val_examples=500, guard_examples=512,
        output_dir="outputs/cifar10_fast_at", verbose="auto"):
    """Fast adversarial training; returns the `RobustnessReport` on the test set."""
    (x_train, y_train), (x_test, y_test) = train, test
    epsilon = 8 / 255
    policy = kb.policies.RandomFGSM(epsilon, step_size=1.25 * epsilon, clip_min=0.0, clip_max=1.0)
    # attack_mode="training": the FGSM step sees the BatchNorm batch statistics that
    # the weight step uses, as in the reference implementation.
    model = kb.BidirectionalModel(build_resnet(x_train.shape[1:], widths=widths, blocks=blocks),
                                  policy=policy, attack_mode="training", seed=0)
    steps = epochs * -(-len(x_train) // batch_size)
    model.compile(
        optimizer=keras.optimizers.SGD(CyclicLearningRate(peak_lr, steps), momentum=0.9,
                                       nesterov=True, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    os.makedirs(output_dir, exist_ok=True)
    guard = kb.callbacks.CatastrophicOverfittingGuard(
        x_train[:guard_examples], y_train[:guard_examples],
        check_every=max(1, steps // (4 * epochs)), remedy="pgd")
    model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose,
        validation_data=(x_test[:val_examples], y_test[:val_examples]),
        callbacks=[guard,
                   kb.callbacks.RobustAccuracy((x_test[:val_examples], y_test[:val_examples]),
                                               kb.policies.PGD(epsilon, steps=10))],
    )
    print(f"Catastrophic-overfitting events: {len(guard.events)}")
    report = kb.evaluate_robustness(
        model.base_model, (x_test[:eval_examples], y_test[:eval_examples]),
        epsilons=[epsilon], clip_min=0.0, clip_max=1.0, verbose=0,
    )
    print(report.to_markdown())
    path = os.path.join(output_dir, "cifar10_fast_at_base.keras")
    model.base_model.save(path)
    print(f"Saved {path}")
    return report, guard


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.smoke:
        (x_train, y_train), (x_test, y_test) = kb.datasets.load_digits()
        rgb = lambda x: x.repeat(3, axis=-1)  # noqa: E731  8×8 grey → 8×8×3
        return run((rgb(x_train), y_train), (rgb(x_test), y_test), epochs=args.epochs or 4,
                   batch_size=64, peak_lr=0.05, widths=(16, 32), blocks=1, eval_examples=200,
                   val_examples=200, guard_examples=128,
                   output_dir=args.output_dir, verbose=2)
    train, test = kb.datasets.load_cifar10(data_dir=args.data_dir, limit=args.limit)
    return run(train, test, epochs=args.epochs or 15, output_dir=args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
