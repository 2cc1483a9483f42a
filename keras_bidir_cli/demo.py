"""The digits demo: plain vs bidirectional training, side by side."""

import json
import os
import time

import keras
import numpy as np

from keras_bidir import datasets
from keras_bidir.evaluation import evaluate_robustness
from keras_bidir import policies
from keras_bidir.model import BidirectionalModel
from keras_bidir_cli import plotting

DEFAULT_EPSILONS = (0.1, 0.2, 0.3)


def digits_cnn(seed=0):
    """The protocol's small CNN: Conv 32 → Conv 64 (3×3 same, ReLU) → Dense 128 → 10 logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ],
        name="digits_cnn",
    )


def _compile(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def training_policy(name, epsilon, steps=7, replays=4):
    """A training policy by name with the demo's settings."""
    common = {"clip_min": 0.0, "clip_max": 1.0}
    if name == "pgd":
        return policies.PGD(epsilon, steps=steps, **common)
    if name in ("free", "free_adversarial"):
        return policies.FreeAdversarial(epsilon, replays=replays, **common)
    if name == "gaussian_noise":
        return policies.GaussianNoise(epsilon / 2, **common)
    return policies.get(name, epsilon=epsilon, **common)


def run_demo(
    policy="pgd",
    epsilon=0.2,
    steps=7,
    epochs=30,
    batch_size=128,
    learning_rate=1e-3,
    epsilons=DEFAULT_EPSILONS,
    output_dir="outputs/demo",
    seed=0,
    verbose="auto",
    plot=True,
    checks=True,
):
    """Trains a plain and a bidirectional digits model and compares them.

    Returns:
        A dict with one row per model: clean accuracy, robust accuracy per ε
        and training seconds (also written to `output_dir/results.json`).
    """
    os.makedirs(output_dir, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    print(
        f"UCI digits (bundled with scikit-learn): {len(x_train)} train / "
        f"{len(x_test)} test images, 8x8 grey in [0, 1]."
    )
    train_policy = training_policy(policy, epsilon, steps=steps)
    epochs_bidir = epochs
    if train_policy.replays > 1:
        # Free training replays each batch: same number of weight updates.
        epochs_bidir = max(1, round(epochs / train_policy.replays))

    rows = {}
    models = {}
    for label in ("plain", "bidirectional"):
        base = digits_cnn(seed)
        if label == "plain":
            model, run_epochs = base, epochs
            print(f"\n[1/2] Plain training: {run_epochs} epochs")
        else:
            model = BidirectionalModel(base, policy=train_policy, seed=seed)
            run_epochs = epochs_bidir
            print(f"\n[2/2] Bidirectional training with {train_policy!r}: {run_epochs} epochs")
        _compile(model, learning_rate)
        start = time.perf_counter()
        model.fit(
            x_train, y_train, batch_size=batch_size, epochs=run_epochs, verbose=verbose
        )
        seconds = time.perf_counter() - start
        models[label] = model
        rows[label] = {"train_seconds": seconds, "epochs": run_epochs}

    print(
        "\nEvaluating on the test set: the protocol's PGD-20 (2 restarts) and the fast suite's"
        " worst case (FGSM, PGD-20x2, APGD-CE, APGD-DLR) at every ε; AutoAttack's standard suite"
        f" (APGD-CE, APGD-T, FAB-T, Square, then PGD-20x2 and APGD-DLR, in cascade) at the"
        f" training ε={epsilon:g}"
    )
    for label, model in models.items():
        report = evaluate_robustness(
            model, (x_test, y_test), epsilons, clip_min=0.0, clip_max=1.0, seed=seed,
            checks=checks, verbose=1 if verbose != 2 else 0,
        )
        standard = evaluate_robustness(
            model, (x_test, y_test), [epsilon], clip_min=0.0, clip_max=1.0, seed=seed,
            checks=False, verbose=1 if verbose != 2 else 0, suite="standard",
        )
        rows[label]["standard"] = {"epsilon": epsilon,
                                   "robust_accuracy": standard.robust_accuracy[epsilon],
                                   "summary": standard.summary_line()}
        if label == "bidirectional":
            examples = standard.flipped_examples()
            if len(examples) and plot:
                try:
                    examples.plot(os.path.join(output_dir, "flipped_examples.png"))
                except ImportError:
                    pass
        rows[label]["clean_accuracy"] = report.clean_accuracy
        rows[label]["pgd20x2_accuracy"] = {str(e): report.accuracy["PGD-20x2"][e] for e in epsilons}
        rows[label]["robust_accuracy"] = {str(e): report.robust_accuracy[e] for e in epsilons}
        rows[label]["attacks"] = {n: {str(e): v for e, v in r.items()} for n, r in report.accuracy.items()}
        rows[label]["checks_passed"] = report.passed_checks if checks else None
        rows[label]["checks"] = [c.to_dict() for c in report.checks]

    models["plain"].save(os.path.join(output_dir, "plain.keras"))
    models["bidirectional"].save(os.path.join(output_dir, "bidirectional.keras"))
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump({"policy": train_policy.get_config() | {"name": type(train_policy).__name__}, "rows": rows}, handle, indent=2)
    print()
    print(format_table(rows, epsilons, type(train_policy).__name__))
    if plot:
        path = plot_rows(rows, epsilons, os.path.join(output_dir, "accuracy_vs_epsilon.png"),
                         type(train_policy).__name__)
        if path is not None:
            print(f"\nPlot: {path}")
        flipped = os.path.join(output_dir, "flipped_examples.png")
        if os.path.exists(flipped):
            print(f"Flipped examples (AutoAttack, ε={epsilon:g}): {flipped}")
    model_path = os.path.join(output_dir, "bidirectional.keras")
    print(f"Models: {os.path.join(output_dir, 'plain.keras')}, {model_path}")
    print(f"\nEvaluate the robust model again (any radii):\n  {evaluate_command(model_path)}")
    return rows


def evaluate_command(model_path):
    """The shell command that evaluates `model_path` with the installed `keras-bidir`."""
    import shlex
    import shutil
    import sys

    program = "keras-bidir"
    local = os.path.join(os.path.dirname(sys.executable), "keras-bidir")
    if shutil.which(program) != local and os.path.exists(local):
        program = os.path.relpath(local) if not os.path.relpath(local).startswith("..") else local
    return f"{program} evaluate {shlex.quote(model_path)} --data digits --epsilons 0.1 0.2 0.3"


def format_table(rows, epsilons, policy_name):
    """A Markdown table of the demo's results."""
    standard = next(iter(rows.values())).get("standard")
    header = (["model", "clean acc"]
              + [f"ε={e}: PGD-20x2 / worst" for e in epsilons]
              + ([f"AutoAttack ε={standard['epsilon']:g}"] if standard else [])
              + ["train s", "masking checks"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, row in rows.items():
        name = "plain" if label == "plain" else f"bidirectional ({policy_name})"
        cells = [name, f"{row['clean_accuracy']:.1%}"]
        cells += [
            f"{row['pgd20x2_accuracy'][str(e)]:.1%} / {row['robust_accuracy'][str(e)]:.1%}"
            for e in epsilons
        ]
        if standard:
            cells.append(f"**{row['standard']['robust_accuracy']:.1%}**")
        cells.append(f"{row['train_seconds']:.1f}")
        checked = row.get("checks_passed")
        cells.append("n/a" if checked is None else ("pass" if checked else "FAIL"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_rows(rows, epsilons, path, policy_name):
    """Saves accuracy against ε, one curve per model, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the plot (pip install 'keras-bidir[plot]').")
        return None
    figure, axis = plt.subplots(figsize=(5, 3.5))
    xs = [0.0] + list(epsilons)
    for (label, row), color in zip(rows.items(), ("tab:blue", "tab:orange")):
        name = "plain" if label == "plain" else f"bidirectional ({policy_name})"
        pgd = [row["clean_accuracy"]] + [row["pgd20x2_accuracy"][str(e)] for e in epsilons]
        worst = [row["clean_accuracy"]] + [row["robust_accuracy"][str(e)] for e in epsilons]
        axis.plot(xs, np.asarray(pgd) * 100, marker="o", linestyle="--", color=color,
                  label=f"{name}: PGD-20x2")
        axis.plot(xs, np.asarray(worst) * 100, marker="s", color=color, label=f"{name}: worst case")
    axis.set_xlabel("L∞ ε")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    plotting.save(figure, axis, path, dpi=120)
    return path
