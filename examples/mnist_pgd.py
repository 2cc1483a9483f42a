"""MNIST with PGD adversarial training (Madry et al. 2018), evaluated honestly.

    python examples/mnist_pgd.py                 # full MNIST, ε = 0.3, PGD-40 training
    python examples/mnist_pgd.py --smoke         # bundled UCI digits, offline, about a minute

Trains a small CNN with `BidirectionalModel(policy=PGD)`, logs robust validation
accuracy every few epochs with the `RobustAccuracy` callback, keeps the most robust
checkpoint, then evaluates with `evaluate_robustness` (FGSM, PGD-20x2, APGD-CE,
APGD-DLR, gradient-masking checks) and saves the deployable base model.
"""

import argparse
import os
import sys


def build_parser():
    """The example's arguments (parsed before TensorFlow loads: --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="bundled digits, few epochs, offline")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="examples per split (a quick run)")
    parser.add_argument("--output-dir", default="outputs/mnist_pgd")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's native start-up log")
    return parser


if __name__ == "__main__":
    _args = build_parser().parse_args()
    from keras_bidir_cli import import_quietly

    import_quietly(verbose=_args.verbose)  # hides TensorFlow's native start-up log

import keras  # noqa: E402

import keras_bidir as kb  # noqa: E402


def build_cnn(input_shape, num_classes=10, width=32, seed=0):
    """A small CNN that outputs logits (no final softmax: the attacks need logits)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(width, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D() if input_shape[0] >= 16 else keras.layers.Identity(),
            keras.layers.Conv2D(2 * width, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(4 * width, activation="relu"),
            keras.layers.Dense(num_classes),
        ],
        name="cnn",
    )


def run(train, test, epsilon, steps, epochs, batch_size=128, eval_examples=1000,
        output_dir="outputs/mnist_pgd", verbose="auto"):
    """Trains with PGD and returns the `RobustnessReport` on the test set."""
    (x_train, y_train), (x_test, y_test) = train, test
    policy = kb.policies.PGD(epsilon, steps=steps, step_size=2.5 * epsilon / steps,
                             clip_min=0.0, clip_max=1.0)
    model = kb.BidirectionalModel(build_cnn(x_train.shape[1:]), policy=policy, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    os.makedirs(output_dir, exist_ok=True)
    x_val, y_val = x_test[:500], y_test[:500]
    model.fit(
        x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose,
        validation_data=(x_val, y_val),
        callbacks=[
            # Ramp ε up over the first epochs: PGD training from scratch at full ε can stall.
            kb.callbacks.EpsilonSchedule(ramp=max(1, epochs // 5)),
            kb.callbacks.RobustAccuracy((x_val, y_val), kb.policies.PGD(epsilon, steps=20),
                                        every=max(1, epochs // 5)),
        ],
    )
    report = kb.evaluate_robustness(
        model.base_model, (x_test[:eval_examples], y_test[:eval_examples]),
        epsilons=[epsilon], clip_min=0.0, clip_max=1.0, verbose=0,
    )
    print(report.to_markdown())
    path = os.path.join(output_dir, "mnist_pgd_base.keras")
    model.base_model.save(path)  # the plain Keras model is what you deploy
    print(f"Saved {path}")
    return report


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.smoke:
        train, test = kb.datasets.load_digits()
        return run(train, test, epsilon=0.2, steps=7, epochs=args.epochs or 8,
                   eval_examples=397, output_dir=args.output_dir, verbose=2)
    train, test = kb.datasets.load_mnist(limit=args.limit)  # once: keras-bidir data mnist
    return run(train, test, epsilon=0.3, steps=40, epochs=args.epochs or 40,
               output_dir=args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
