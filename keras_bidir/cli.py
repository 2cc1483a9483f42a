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
    demo.add_argument("--no-checks", action="store_true",
                      help="skip the gradient-masking checks (faster)")

    evaluate = sub.add_parser(
        "evaluate",
        help="robust accuracy of a saved model under the default attack set",
        description="Evaluates a saved .keras classifier with FGSM, PGD-20x2, APGD-CE and "
        "APGD-DLR, reports the per-example worst case and runs gradient-masking checks.",
    )
    evaluate.add_argument("model", help="path to a .keras file (BidirectionalModel or plain)")
    evaluate.add_argument("--data", default="digits", choices=["digits", "mnist", "cifar10"],
                          help="test set (default: digits, bundled; others load through TFDS)")
    evaluate.add_argument("--epsilons", type=_positive_float, nargs="+", default=[0.1, 0.2, 0.3],
                          metavar="EPS")
    evaluate.add_argument("--norm", default="linf", choices=["linf", "l2"])
    evaluate.add_argument("--limit", type=_positive_int, default=None,
                          help="evaluate only the first N test examples")
    evaluate.add_argument("--batch-size", type=_positive_int, default=256)
    evaluate.add_argument("--no-checks", action="store_true", help="skip the gradient-masking checks")
    evaluate.add_argument("--output-dir", default="outputs/evaluate",
                          help="where report.json and robustness.png go (default: outputs/evaluate)")
    evaluate.add_argument("--unsafe", action="store_true",
                          help="load with safe_mode=False (only for files you trust: allows lambdas)")
    bench = sub.add_parser(
        "bench",
        help="step time, memory and robustness-per-cost of each policy against plain fit()",
        description="Benchmarks every policy against plain keras.Model.fit on the digits protocol.",
    )
    from keras_bidir import benchmark

    benchmark.build_parser(bench)
    return parser


def _evaluate(args):
    import json

    import keras

    import keras_bidir  # noqa: F401  (registers the serializable classes)
    from keras_bidir import datasets
    from keras_bidir.evaluation import evaluate_robustness

    if not os.path.exists(args.model):
        raise SystemExit(f"keras-bidir evaluate: no such model file: {args.model}")
    try:
        model = keras.models.load_model(args.model, safe_mode=not args.unsafe, compile=False)
    except ValueError as error:
        if "safe_mode" in str(error):
            raise SystemExit(
                f"keras-bidir evaluate: refusing to load {args.model}: it contains code "
                "(e.g. a Lambda layer) that safe_mode does not run. Pass --unsafe only if "
                f"you trust the file.\n({error})"
            ) from None
        raise
    _, (x_test, y_test) = datasets.load(args.data)
    if args.limit:
        x_test, y_test = x_test[: args.limit], y_test[: args.limit]
    report = evaluate_robustness(
        model, (x_test, y_test), args.epsilons, norm=args.norm, clip_min=0.0, clip_max=1.0,
        batch_size=args.batch_size, checks=not args.no_checks,
    )
    print()
    print(report.to_markdown())
    os.makedirs(args.output_dir, exist_ok=True)
    json_path = os.path.join(args.output_dir, "report.json")
    with open(json_path, "w") as handle:
        json.dump(report.to_dict() | {"model": args.model, "data": args.data}, handle, indent=2)
    plot_path = os.path.join(args.output_dir, "robustness.png")
    try:
        report.plot(plot_path)
        print(f"\nPlot: {plot_path}")
    except ImportError as error:
        print(f"\n{error}")
    print(f"Report: {json_path}")
    return 0 if report.passed_checks else 3


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
            checks=not args.no_checks,
        )
        return 0
    if args.command == "evaluate":
        return _evaluate(args)
    if args.command == "bench":
        from keras_bidir import benchmark

        return benchmark.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
