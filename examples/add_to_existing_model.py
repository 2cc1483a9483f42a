"""Adding bidirectional training to an existing Keras script: under ten changed lines.

    python examples/add_to_existing_model.py            # full MNIST (keras-bidir data mnist)
    python examples/add_to_existing_model.py --smoke    # bundled UCI digits, offline

`train_plain` is an ordinary Keras training script. `train_robust` is the same
script with the lines marked `# (+)` / `# (~)` added or changed: wrap the model,
add a robust-accuracy callback, evaluate under attack, and deploy the base model.
Nothing else changes: same model, same compile, same fit, same callbacks.
"""

import argparse
import os
import sys


def build_parser():
    """The example's arguments (parsed before TensorFlow loads: --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="bundled digits, offline")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--output-dir", default="outputs/add_to_existing_model")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's native start-up log")
    return parser


if __name__ == "__main__":
    _args = build_parser().parse_args()
    from keras_bidir_cli import import_quietly

    import_quietly(verbose=_args.verbose)  # hides TensorFlow's native start-up log

import keras  # noqa: E402

import keras_bidir as kb  # (+)  # noqa: E402


def make_model(input_shape):
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input(input_shape),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),  # logits
    ])


def train_plain(data, epochs, output_dir):
    (x_train, y_train), (x_test, y_test) = data
    model = make_model(x_train.shape[1:])
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, validation_split=0.1, verbose=2,
              callbacks=[keras.callbacks.EarlyStopping(patience=3)])
    model.save(os.path.join(output_dir, "plain.keras"))
    return model


def train_robust(data, epochs, output_dir, epsilon):
    (x_train, y_train), (x_test, y_test) = data
    policy = kb.policies.PGD(epsilon, steps=7, clip_min=0.0, clip_max=1.0)  # (+)
    model = kb.BidirectionalModel(make_model(x_train.shape[1:]), policy)  # (~)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, validation_split=0.1, verbose=2,
              callbacks=[kb.callbacks.RobustAccuracy((x_test[:300], y_test[:300]),  # (+)
                                                     kb.policies.PGD(epsilon, steps=20)),
                         keras.callbacks.EarlyStopping(patience=3)])
    report = kb.evaluate_robustness(model, (x_test, y_test), [epsilon], clip_min=0.0,  # (+)
                                    clip_max=1.0, verbose=0)
    print(report.to_markdown())
    model.base_model.save(os.path.join(output_dir, "robust.keras"))  # (~)
    return model


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.smoke:
        data, epochs, epsilon = kb.datasets.load_digits(), args.epochs or 15, 0.2
    else:
        data, epochs, epsilon = kb.datasets.load_mnist(), args.epochs or 10, 0.3
    plain = train_plain(data, epochs, args.output_dir)
    robust = train_robust(data, epochs, args.output_dir, epsilon)
    return plain, robust, data


if __name__ == "__main__":
    main(sys.argv[1:])
