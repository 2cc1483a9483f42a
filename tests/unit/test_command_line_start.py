"""What a newcomer sees first: fast --help, a quiet command line, honest messages."""

import os
import subprocess
import sys
import time


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
EXAMPLES = ["add_to_existing_model", "cifar10_fast_at", "mnist_pgd", "text_freelb"]


def _timed(args, env=None):
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT,
                            env=None if env is None else {**os.environ, **env})
    return result, time.perf_counter() - start


def test_help_answers_without_importing_tensorflow():
    code = ("import sys, keras_bidir_cli\n"
            "try:\n    keras_bidir_cli.build_parser().parse_args(['demo', '--help'])\n"
            "except SystemExit:\n    pass\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    result, _ = _timed([sys.executable, "-c", code])
    assert result.stdout.strip().splitlines()[-1] == "False False"
    # A generous bound for a busy 2-core machine; importing TensorFlow alone takes several seconds.
    for args in (["-m", "keras_bidir_cli", "--help"],
                 *[[os.path.join("examples", f"{name}.py"), "--help"] for name in EXAMPLES]):
        result, seconds = _timed([sys.executable, *args])
        assert result.returncode == 0 and "usage:" in result.stdout, args
        assert seconds < 5, (args, seconds)


def test_parser_choices_match_the_library():
    import keras_bidir_cli
    from keras_bidir_cli import benchmark, frontier
    from keras_bidir import policies

    assert keras_bidir_cli.POLICY_NAMES == tuple(policies.names())
    assert keras_bidir_cli.BENCH_CONFIGS == tuple(benchmark.CONFIGS)
    assert keras_bidir_cli.QUALITY_CONFIGS == frontier.CONFIG_NAMES == tuple(frontier._configs())
    assert keras_bidir_cli.QUALITY_PROTOCOLS == tuple(frontier.PROTOCOLS)


def test_jax_start_is_quiet_and_does_not_load_tensorflow():
    code = ("import keras_bidir_cli, sys\nkeras_bidir_cli.import_quietly()\n"
            "import keras_bidir, jax\nprint(float(jax.numpy.asarray(2.0) + 1), file=sys.stderr)\n"
            "print('tensorflow' in sys.modules)")
    run, _ = _timed([sys.executable, "-c", code], {"KERAS_BACKEND": "jax"})
    assert run.returncode == 0 and run.stderr.strip() == "3.0", run.stderr
    assert run.stdout.strip() == "False"


def test_plot_without_matplotlib_is_not_announced(monkeypatch, tmp_path, capsys):
    from keras_bidir_cli import demo

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    rows = {"plain": {"clean_accuracy": 1.0, "pgd20x2_accuracy": {"0.2": 0.5},
                      "robust_accuracy": {"0.2": 0.4}}}
    assert demo.plot_rows(rows, [0.2], str(tmp_path / "p.png"), "PGD") is None
    assert not (tmp_path / "p.png").exists()
    assert "skipping the plot" in capsys.readouterr().out


def test_project_metadata_has_no_deprecated_license_table():
    text = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert 'license = "Apache-2.0"' in text and "license = {" not in text
    readme = open(os.path.join(ROOT, "README.md")).read()
    quick_start = readme[readme.index("## Quick start"):readme.index("## Input policies")]
    assert "clip_min=0.0, clip_max=1.0)" in quick_start.split("evaluate_robustness")[1]
    assert "nonfinite_batches" in quick_start
    assert "outputs/demo/bidirectional.keras" in readme


def test_the_quick_start_run_as_a_script_starts_tensorflow_quietly():
    # Without `import_quietly()`: TensorFlow's native start-up block (absl, oneDNN, CUDA), twice,
    # and a `failed call to cuInit` error line on a machine without a GPU, at the first op.
    readme = open(os.path.join(ROOT, "README.md")).read()
    code = readme[readme.index("## Quick start"):].split("```python\n")[1].split("```")[0]
    head = code[:code.index("import keras_bidir as kb")] + "import keras_bidir as kb\n"
    assert "import_quietly()" in head.split("import keras\n")[0]  # before Keras loads TensorFlow
    first_op = "import sys, tensorflow as tf\nprint(float(tf.constant(2.0) + 1), file=sys.stderr)\n"
    run, _ = _timed([sys.executable, "-c", head + first_op], {"KERAS_BACKEND": "tensorflow"})
    assert run.returncode == 0 and run.stderr == "3.0\n", run.stderr


def test_bench_help_names_each_configuration_once():
    import keras_bidir_cli

    parser = keras_bidir_cli.build_parser()
    bench = parser._subparsers._group_actions[0].choices["bench"]
    text = bench.format_help()
    for name in set(keras_bidir_cli.BENCH_CONFIGS) | set(keras_bidir_cli.QUALITY_CONFIGS):
        assert text.count(name) >= 1
    assert text.count("prior_fgsm_example_cyclic") == 1  # the choices were listed twice
