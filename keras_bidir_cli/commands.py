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


def _data_range(args, model, known_range):
    """`(clip_min, clip_max)`: the arguments, else the saved policy's range, else the data's."""
    if (args.clip_min is None) != (args.clip_max is None):
        raise SystemExit("keras-bidir evaluate: pass both --clip-min and --clip-max.")
    if args.clip_min is not None:
        if args.clip_min >= args.clip_max:
            raise SystemExit("keras-bidir evaluate: --clip-min must be below --clip-max.")
        open_end = lambda v: None if v in (float("inf"), float("-inf")) else v  # noqa: E731
        return open_end(args.clip_min), open_end(args.clip_max)
    policy = getattr(model, "policy", None)
    if policy is not None and policy.clip_min is not None and policy.clip_max is not None:
        return policy.clip_min, policy.clip_max
    if known_range is not None:
        return known_range
    raise SystemExit(
        "keras-bidir evaluate: the valid input range is unknown (the saved model has no policy "
        "range and the data is your own): pass --clip-min and --clip-max, e.g. --clip-min 0 "
        "--clip-max 1 for images scaled to [0, 1], or --clip-min -inf --clip-max inf for "
        "inputs without bounds.")


def _evaluate(args):
    import json

    import keras_bidir  # noqa: F401  (registers the serializable classes)
    from keras_bidir.evaluation import evaluate_robustness
    from keras_bidir.evaluation.shards import resolve_shard
    from keras_bidir_cli import evaluation_data

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
    try:
        data, known_range = evaluation_data.load(args.data, args.limit)
        evaluation_data.check_shapes(model, data)
    except evaluation_data.DataError as error:
        raise SystemExit(f"keras-bidir evaluate: {error}") from None
    clip_min, clip_max = _data_range(args, model, known_range)
    try:
        shard = resolve_shard(args.shard)
    except ValueError as error:
        raise SystemExit(f"keras-bidir evaluate: --shard: {error}") from None
    try:
        report = evaluate_robustness(
            model, data, args.epsilons, norm=args.norm, clip_min=clip_min, clip_max=clip_max,
            batch_size=args.batch_size, checks=not args.no_checks, suite=args.suite,
            from_logits=None if args.from_logits is None else args.from_logits == "true",
            state=args.state, shard=shard,
        )
    except ValueError as error:
        hint = " (on the command line: --suite fast)" if "suite='fast'" in str(error) else ""
        hint = " (on the command line: --state PATH)" if "pass state=" in str(error) else hint
        raise SystemExit(f"keras-bidir evaluate: {error}{hint}") from None
    print()
    print(report.to_markdown())
    if shard is not None and shard.index:
        print(f"\nShard {shard.index} of {shard.count} done; shard 0 writes the report files.")
        return 0 if report.passed_checks else 3
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


def _data(args):
    import subprocess

    from keras_bidir import dataset_files

    def sizes():
        if args.name == "movie_reviews":
            _, _, sources = dataset_files.load_movie_reviews()
            return ", ".join(f"{s} {sources.count(s):,}" for s in sorted(set(sources)))
        arrays = dataset_files.load_arrays(args.name)
        return ", ".join(f"{key} {len(value):,}" for key, value in arrays.items() if key[0] == "y")

    try:
        found = sizes()
        print(f"{args.name} is already here ({dataset_files.cache_dir()}).")
    except FileNotFoundError:
        try:
            dataset_files.fetch(args.name)
        except (OSError, subprocess.CalledProcessError) as error:
            raise SystemExit(f"keras-bidir data: fetching {args.name} failed: {error}") from None
        try:
            found = sizes()
        except FileNotFoundError:
            raise SystemExit(f"keras-bidir data: the fetched file does not hold {args.name} as "
                             "expected (its checksums differ).") from None
    print(f"{args.name}: {found}; load it with keras_bidir.datasets.load_{args.name}().")
    return 0


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
    if args.command == "data":
        return _data(args)
    if args.command == "bench":
        from keras_bidir_cli import benchmark

        return benchmark.run(args)
    return 0
