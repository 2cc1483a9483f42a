"""The documentation site builds without warnings, and its code runs."""

import os
import re
import subprocess
import sys

import keras
import numpy as np

import keras_bidir as kb

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
DOCS = os.path.join(ROOT, "docs")


def _python_blocks(page):
    with open(os.path.join(DOCS, page)) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_site_builds_with_warnings_as_errors(tmp_path):
    # API pages come from the docstrings: a docstring naming a parameter the signature
    # lacks, a broken link or anchor fails the build.
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    api = (tmp_path / "api" / "policies" / "index.html").read_text()
    assert "FreeAdversarial" in api and "replays" in api  # rendered from the docstring
    for page in ("getting-started", "concepts", "distributed", "migrating", "gpu", "saving"):
        assert (tmp_path / page / "index.html").exists(), page


def test_getting_started_runs_as_written(tmp_path, capsys):
    """The page's script, verbatim except for a shorter recipe, prints the robustness table."""
    (code,) = _python_blocks("getting-started.md")
    assert "kb.recipes.fast(epsilon=0.2," in code
    code = code.replace("kb.recipes.fast(epsilon=0.2,", "kb.recipes.fast(epochs=6, epsilon=0.2,")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "getting-started.md", "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "Clean accuracy:" in printed and "**worst case**" in printed
    assert "Gradient-masking checks:" in printed
    assert isinstance(keras.models.load_model(tmp_path / "robust_digits.keras"), keras.Sequential)


def test_migration_snippets_run():
    """Each keras-bidir side of the migration guide trains on the digits."""
    blocks = [b for b in _python_blocks("migrating.md") if b.startswith("# keras-bidir")]
    assert len(blocks) == 3
    (x_train, y_train), (x_val, y_val) = kb.datasets.load_digits(train_size=256)
    for code in blocks:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(10, activation="softmax")])
        namespace = {
            "kb": kb, "keras": keras, "np": np,
            "base_model": model, "model": model,
            "x_train": x_train, "y_train": y_train, "x_val": x_val[:64], "y_val": y_val[:64],
            "optimizer": keras.optimizers.Adam(1e-3),
            "loss": keras.losses.SparseCategoricalCrossentropy(),
            "loss_object": keras.losses.SparseCategoricalCrossentropy(),
            "train_ds": __import__("tensorflow").data.Dataset.from_tensor_slices(
                (x_train, y_train)).batch(64),
            "eps": 0.1, "eps_iter": 0.05, "nb_iter": 2, "epochs": 1,
        }
        code = re.sub(r"epochs=\d+", "epochs=1", code)
        code = code.replace("steps=40", "steps=2").replace("steps=100", "steps=2")
        exec(compile(code, "migrating.md", "exec"), namespace)
        trained = namespace["model"]
        assert isinstance(trained, kb.BidirectionalModel)
        assert trained.optimizer.iterations.numpy() > 0


def test_write_a_policy_page_runs_as_written(tmp_path, capsys):
    """The custom policy of the page trains, stays in its ball, round-trips through .keras and
    composes with a stateful policy (ATAS keeps its memory inside the composition)."""
    (code,) = _python_blocks("write-a-policy.md")
    body = code[code.index("class NoisyFGSM"):code.index("(x_train, y_train)")]
    assert len([line for line in body.splitlines() if line.strip()]) <= 30
    cwd = os.getcwd()
    os.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(code, "write-a-policy.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert 0.1 < namespace["history"].history["perturbation_norm"][-1] <= 0.2 + 1e-6
    assert namespace["restored"].policy == namespace["NoisyFGSM"](0.2, clip_min=0.0, clip_max=1.0)
    assert "perturbation_norm:" in capsys.readouterr().out
    model = namespace["model"]
    assert model.step_state.example_rows == len(namespace["x_train"])
    delta, mean, seen = [np.asarray(v) for v in model.step_state.example_variables]
    assert seen.min() == 1 and mean.max() > 0  # every example's row was written
    assert np.abs(delta).max() <= 0.2 + 1e-6 and np.abs(delta).max() > 0.1
    source = code[code.index("class NoisyFGSM"):]
    assert "kb.policies.BallPolicy" in source
    assert not re.search(r"\._[a-z]", source.replace("__init__", ""))  # public names only
