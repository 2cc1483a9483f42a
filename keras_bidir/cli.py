"""Command line: `keras-bidir demo` (more subcommands follow the same pattern)."""

import argparse
import os
import sys


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


def build_parser():
    from keras_bidir import policies

    parser = argparse.ArgumentParser(
        prog="keras-bidir",
        description="Bidirectional optimization for Keras 3 (adversarial training through fit()).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="plain vs bidirectional training on the bundled UCI digits",
        description="Trains a plain and a bidirectional CNN on scikit-learn's bundled "
        "UCI digits and compares clean and robust accuracy (PGD-20, 2 restarts).",
    )
    demo.add_argument("--policy", default="pgd", choices=policies.names(),
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
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.command == "demo":
        from keras_bidir.demo import run_demo

        run_demo(
            policy=args.policy,
            epsilon=args.epsilon,
            steps=args.steps,
            epochs=args.epochs,
            batch_size=args.batch_size,
            epsilons=args.eval_epsilons,
            output_dir=args.output_dir,
            seed=args.seed,
            verbose=2 if args.quiet else "auto",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
