"""The `keras-bidir` command line, before anything heavy is imported.

The arguments are parsed first (so `--help` and argument errors answer in well
under a second), then TensorFlow and keras-bidir are imported, with the native
start-up log of TensorFlow (absl/oneDNN/CUDA lines, a `cuInit` error on
machines without a GPU) hidden unless `--verbose` is given. The commands
themselves live in `keras_bidir_cli.commands`.
"""

from keras_bidir_cli.parser import BENCH_CONFIGS  # noqa: F401
from keras_bidir_cli.parser import POLICY_NAMES  # noqa: F401
from keras_bidir_cli.parser import QUALITY_CONFIGS  # noqa: F401
from keras_bidir_cli.parser import QUALITY_PROTOCOLS  # noqa: F401
from keras_bidir_cli.parser import add_bench_arguments  # noqa: F401
from keras_bidir_cli.parser import build_parser
from keras_bidir_cli.parser import import_quietly


def main(argv=None):
    """Entry point of the `keras-bidir` command."""
    args = build_parser().parse_args(argv)
    import_quietly(args.verbose)
    from keras_bidir_cli import commands

    return commands.run(args)

