"""Datasets: the bundled UCI digits (no network) and TFDS loaders.

All loaders return images as float32 in [0, 1] with a channel axis, and
integer labels, as `(x_train, y_train), (x_test, y_test)` NumPy arrays.
"""

import numpy as np

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


def load_mnist(**kwargs):
    """MNIST through TFDS: 28×28×1 in [0, 1]. See `load_tfds_images`."""
    return load_tfds_images("mnist", **kwargs)


def load_cifar10(**kwargs):
    """CIFAR-10 through TFDS: 32×32×3 in [0, 1]. See `load_tfds_images`."""
    return load_tfds_images("cifar10", **kwargs)


def load(name, **kwargs):
    """Loads a dataset by name: `"digits"`, `"mnist"` or `"cifar10"`."""
    loaders = {"digits": load_digits, "mnist": load_mnist, "cifar10": load_cifar10}
    if name not in loaders:
        raise ValueError(f"Unknown dataset {name!r}. Known: {', '.join(sorted(loaders))}.")
    return loaders[name](**kwargs)
