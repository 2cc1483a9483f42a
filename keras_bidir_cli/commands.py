"""The commands of `keras-bidir`: demo, evaluate, bench.

The argument parser lives in `keras_bidir_cli.parser`, which imports nothing
heavy; `keras_bidir_cli.main` parses, then runs `run(args)` from here.
"""

import os


def _load(path, safe_mode):
    """The saved model, compiled when it can be (its loss says what its outputs are)."""
    import keras

    try:
        return keras.models.load_model(path, safe_mode=safe_mode)
    except (TypeError, AttributeError, KeyError):
        # A compile config that cannot be rebuilt here (e.g. a custom loss):
        # the weights and the graph still load.
        return keras.models.load_model(path, safe_mode=safe_mode, compile=False)


def _evaluate(args):
    import json

    import keras

    import keras_bidir  # noqa: F401  (registers the serializable classes)
    from keras_bidir import datasets
    from keras_bidir.evaluation import evaluate_robustness

    if not os.path.exists(args.model):
        raise SystemExit(f"keras-bidir evaluate: no such model file: {args.model}")
    try:
        model = _load(args.model, safe_mode=not args.unsafe)
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
    try:
        report = evaluate_robustness(
            model, (x_test, y_test), args.epsilons, norm=args.norm, clip_min=0.0, clip_max=1.0,
            batch_size=args.batch_size, checks=not args.no_checks, suite=args.suite,
            from_logits=None if args.from_logits is None else args.from_logits == "true",
        )
    except ValueError as error:
        if "suite='fast'" not in str(error):
            raise
        raise SystemExit(f"keras-bidir evaluate: {error} (on the command line: --suite fast)") from None
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
        if report.example_finder is not None and len(report.flipped_examples()):
            examples_path = os.path.join(args.output_dir, "examples.png")
            report.plot_examples(examples_path)
            print(f"Flipped examples: {examples_path}")
    except ImportError as error:
        print(f"\n{error}")
    print(f"Report: {json_path}")
    return 0 if report.passed_checks else 3


def run(args):
    """Runs a parsed `keras-bidir` command; returns the exit code."""
    if args.command == "demo":
        from keras_bidir_cli.demo import run_demo

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
        from keras_bidir_cli import benchmark

        return benchmark.run(args)
    return 0
