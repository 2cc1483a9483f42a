"""Text classification with FreeLB at the embeddings (keras-hub layers).

    python examples/text_freelb.py --dataset imdb_reviews     # real data through TFDS
    python examples/text_freelb.py --smoke                    # generated corpus, offline, fast

Trains the same keras-hub transformer classifier twice, plainly and with
FreeLB (a `PerturbationPoint` after the token embedding), then reports clean
accuracy and accuracy under an embedding-space L2 PGD attack.
"""

import argparse
import os
import sys


def build_parser():
    """The example's arguments (parsed before TensorFlow loads: --help answers at once)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="imdb_reviews", choices=["imdb_reviews", "glue/sst2"])
    parser.add_argument("--smoke", action="store_true", help="generated corpus, few epochs, offline")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="examples per split from TFDS")
    parser.add_argument("--output-dir", default="outputs/text_freelb")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's native start-up log")
    return parser


if __name__ == "__main__":
    _args = build_parser().parse_args()
    from keras_bidir_cli import import_quietly

    import_quietly(verbose=_args.verbose)  # hides TensorFlow's native start-up log

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bidir as kb  # noqa: E402


def make_tokenizer(texts, vocabulary_size, sequence_length):
    """A WordPiece tokenizer whose vocabulary is computed from the training text (no download)."""
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(256),
        vocabulary_size=vocabulary_size,
        reserved_tokens=["[PAD]", "[UNK]"],
    )
    return keras_hub.tokenizers.WordPieceTokenizer(
        vocabulary=vocabulary, sequence_length=sequence_length, lowercase=True
    )


def build_classifier(vocabulary_size, sequence_length, width=32, heads=2, seed=0):
    """Token ids → TokenAndPositionEmbedding → PerturbationPoint → TransformerEncoder → 2 logits."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((sequence_length,), dtype="int32", name="tokens")
    x = keras_hub.layers.TokenAndPositionEmbedding(
        vocabulary_size, sequence_length, width, mask_zero=True
    )(tokens)
    x = kb.layers.PerturbationPoint(name="embeddings")(x)
    x = keras_hub.layers.TransformerEncoder(2 * width, num_heads=heads, dropout=0.1)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    return keras.Model(tokens, outputs, name="text_classifier")


def _compile(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def run(train, test, epochs=8, batch_size=64, sequence_length=24, vocabulary_size=400,
        epsilon=0.05, attack_epsilons=(0.05, 0.1, 0.2), learning_rate=2e-3, output_dir=None,
        verbose="auto", seed=0):
    """Trains plain and FreeLB classifiers; returns their clean and attacked accuracy."""
    (train_texts, y_train), (test_texts, y_test) = train, test
    tokenizer = make_tokenizer(train_texts, vocabulary_size, sequence_length)
    x_train = np.asarray(tokenizer(train_texts), dtype="int32")
    x_test = np.asarray(tokenizer(test_texts), dtype="int32")
    size = tokenizer.vocabulary_size()

    results = {}
    models = {}
    for name in ("plain", "freelb"):
        base = build_classifier(size, sequence_length, seed=seed)
        if name == "plain":
            model = base
        else:
            model = kb.BidirectionalModel(base, kb.policies.FreeLB(epsilon, steps=3), seed=seed)
        _compile(model, learning_rate)
        print(f"\nTraining {name}")
        model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=verbose)
        models[name] = model
        row = {"clean": kb.evaluation.robust_accuracy(model, x_test, y_test, None)}
        for eps in attack_epsilons:
            attack = kb.policies.PGD(eps, steps=10, norm="l2", restarts=2)
            row[eps] = kb.evaluation.robust_accuracy(model, x_test, y_test, attack)
        results[name] = row

    print("\nEmbedding-space attack: L2 PGD-10, 2 restarts, at the 'embeddings' PerturbationPoint")
    header = ["model", "clean"] + [f"PGD ε={e:g}" for e in attack_epsilons]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, row in results.items():
        cells = [name, f"{row['clean']:.1%}"] + [f"{row[e]:.1%}" for e in attack_epsilons]
        print("| " + " | ".join(cells) + " |")
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
        path = os.path.join(output_dir, "freelb_text.keras")
        models["freelb"].save(path)
        print(f"Saved {path}")
    return results, models, (x_test, y_test)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.smoke:
        texts, labels = kb.datasets.synthetic_sentiment(2500, seed=0)
        train = (texts[:2000], labels[:2000])
        test = (texts[2000:], labels[2000:])
        return run(train, test, epochs=args.epochs or 12, output_dir=args.output_dir, verbose=2)
    train, test = kb.datasets.load_text(args.dataset, limit=args.limit)
    return run(train, test, epochs=args.epochs or 3, sequence_length=256,
               vocabulary_size=20000, output_dir=args.output_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
