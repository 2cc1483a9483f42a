"""`keras-bidir bench`: the cost of bidirectional training relative to plain `fit()`.

Speed (default): in ONE process, on the same model, data and batch size, every
configuration is built and warmed up (traced) first; then all are timed in
interleaved rounds of one epoch each, and the median step time is compared to
plain `keras.Model.fit` (no wrapper). Peak memory: on a GPU, TensorFlow's
allocator peak (reset per configuration); on a CPU, where TensorFlow keeps no
allocator statistics, the peak-RSS increase of a child process per
configuration that runs the same steps.

Quality (`--quality`): the digits protocol (docs/benchmarks.md) per policy:
clean accuracy, robust accuracy at ε = 0.2 under PGD-20 ×2 and under the worst
case of the default attack set, and wall time relative to plain training.

    keras-bidir bench                 # speed and memory table, JSON to outputs/bench/
    keras-bidir bench --quality       # accuracy / robustness / wall time per policy
    python -m keras_bidir.apps.benchmark   # the same
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

_SPATIAL = "[keras.layers.RandomTranslation(0.1, 0.1), keras.layers.RandomRotation(0.05)]"

CONFIGS = {
    # name: (policy factory source, weight updates per batch, target ratio per batch or None)
    "plain": None,
    "gaussian_noise": "policies.GaussianNoise(0.1, clip_min=0.0, clip_max=1.0)",
    "fgsm": "policies.FGSM(0.2, clip_min=0.0, clip_max=1.0)",
    "random_fgsm": "policies.RandomFGSM(0.2, clip_min=0.0, clip_max=1.0)",
    "nfgsm": "policies.NFGSM(0.2, clip_min=0.0, clip_max=1.0)",
    "pgd3": "policies.PGD(0.2, steps=3, clip_min=0.0, clip_max=1.0)",
    "pgd7": "policies.PGD(0.2, steps=7, clip_min=0.0, clip_max=1.0)",
    "free4": "policies.FreeAdversarial(0.2, replays=4, clip_min=0.0, clip_max=1.0)",
    "freelb3": "policies.FreeLB(0.2, steps=3, norm='linf')",
    "trades7": "policies.TRADES(0.2, beta=6.0, steps=7, clip_min=0.0, clip_max=1.0)",
    "vat": "policies.VAT(1.0)",
    "augment": f"policies.Augment({_SPATIAL}, clip_min=0.0, clip_max=1.0)",
    "worst_of_4": f"policies.WorstOfK({_SPATIAL}, k=4, clip_min=0.0, clip_max=1.0)",
    "augment_pgd3": (f"policies.Compose([policies.Augment({_SPATIAL}), "
                     "policies.PGD(0.2, steps=3, clip_min=0.0, clip_max=1.0)])"),
}


def target_ratio(name, replays):
    """The cost target of issue 5 for a configuration (per batch), or None."""
    if name in ("fgsm", "random_fgsm", "nfgsm"):
        return 2.1
    if name.startswith("pgd"):
        k = int(name[3:])
        return 1.05 * (k + 1)
    if name.startswith("free") and not name.startswith("freelb"):
        return 1.10 * replays
    return None


def _build(name, seed=0, jit_compile="auto"):
    import keras

    from keras_bidir import policies  # noqa: F401  (used by eval of CONFIGS)
    from keras_bidir.apps.demo import digits_cnn
    from keras_bidir.model import BidirectionalModel

    base = digits_cnn(seed)
    if CONFIGS[name] is None:
        model = base
    else:
        model = BidirectionalModel(base, eval(CONFIGS[name], {"policies": policies, "keras": keras}), seed=seed)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    return model


def _timer():
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times = []
            self._start = None

        def on_train_batch_begin(self, batch, logs=None):
            self._start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step to finish
            self.times.append(time.perf_counter() - self._start)

    return StepTimer()


def _gpu_available():
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def measure_speed(names, batch_size=128, rounds=5, jit_compile="auto", verbose=True):
    """Median step time per configuration, measured in this process."""
    import numpy as np
    import tensorflow as tf

    from keras_bidir import datasets

    (x, y), _ = datasets.load_digits()
    x, y = x[: (len(x) // batch_size) * batch_size], y[: (len(y) // batch_size) * batch_size]
    models, times, memory = {}, {name: [] for name in names}, {}
    gpu = _gpu_available()
    for name in names:
        models[name] = _build(name, jit_compile=jit_compile)
        if gpu:
            tf.config.experimental.reset_memory_stats("GPU:0")
        models[name].fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # trace + warm up
        if gpu:
            memory[name] = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        if verbose:
            print(f"  built and warmed up: {name}", flush=True)
    for round_index in range(rounds):
        for name in names:
            timer = _timer()
            models[name].fit(x, y, batch_size=batch_size, epochs=1, verbose=0, callbacks=[timer])
            times[name].extend(timer.times)
        if verbose:
            print(f"  round {round_index + 1}/{rounds} done", flush=True)
    replays = {n: getattr(getattr(models[n], "policy", None), "replays", 1) for n in names}
    medians = {n: float(np.median(times[n])) for n in names}
    return medians, replays, memory, {n: len(times[n]) for n in names}


def _proc_status_mib(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise OSError(f"{field} not in /proc/self/status")


def _child_memory(name, batch_size, steps):
    """Trains one configuration for `steps` steps; prints its memory footprint.

    Footprint = peak RSS minus the RSS after importing TensorFlow and loading
    the data: the model, its traced graphs, optimizer state and activations.
    """
    import numpy as np

    import keras  # noqa: F401  (imported before the baseline)
    from keras_bidir import datasets

    (x, y), _ = datasets.load_digits()
    n = batch_size * steps
    reps = int(np.ceil(n / len(x)))
    x, y = np.concatenate([x] * reps)[:n], np.concatenate([y] * reps)[:n]
    before = _proc_status_mib("VmRSS")
    model = _build(name)
    model.fit(x, y, batch_size=batch_size, epochs=1, verbose=0)
    peak = _proc_status_mib("VmHWM")
    print(json.dumps({"delta_mib": peak - before, "peak_mib": peak, "rss_before_mib": before}))


def measure_cpu_memory(names, batch_size=128, steps=20):
    """Peak-RSS increase of a child process per configuration (CPU only)."""
    result = {}
    for name in names:
        out = subprocess.run(
            [sys.executable, "-m", "keras_bidir.apps.benchmark", "--child-memory", name,
             "--batch-size", str(batch_size), "--steps", str(steps)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        result[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine():
    import keras
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    device = "GPU: " + ", ".join(
        tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus
    ) if gpus else f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return {
        "device": device,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "platform": platform.platform(),
    }


def speed_table(medians, replays, memory):
    plain = medians["plain"]
    lines = [
        "| configuration | median step (ms) | × plain | weight updates / step | × plain per update "
        "| target (per step) | met | peak memory | × plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plain_mem = memory.get("plain")
    for name, value in medians.items():
        ratio = value / plain
        target = target_ratio(name, replays[name])
        met = "" if target is None else ("yes" if ratio <= target else "**no**")
        mem = memory.get(name)
        mem_text = "n/a" if mem is None else f"{mem:.1f} MiB"
        mem_ratio = "n/a" if mem is None or not plain_mem else f"{mem / plain_mem:.2f}"
        lines.append(
            f"| {name} | {value * 1000:.2f} | {ratio:.2f} | {replays[name]} | "
            f"{ratio / replays[name]:.2f} | {'' if target is None else f'≤ {target:.2f}'} | {met} | "
            f"{mem_text} | {mem_ratio} |"
        )
    return "\n".join(lines)


def run_quality(names, epochs=30, seed=0, verbose=True):
    """The digits protocol for each configuration: accuracy, robustness, wall time."""
    from keras_bidir import datasets
    from keras_bidir import policies
    from keras_bidir.evaluation import evaluate_robustness

    (x_train, y_train), (x_test, y_test) = datasets.load_digits()
    rows = {}
    for name in names:
        model = _build(name, seed=seed)
        policy = getattr(model, "policy", None)
        # Free training makes `replays` weight updates per batch: same updates, fewer epochs.
        if policy is not None and not getattr(policy, "accumulate_gradients", False):
            run_epochs = max(1, round(epochs / policy.replays))
        else:
            run_epochs = epochs
        start = time.perf_counter()
        model.fit(x_train, y_train, batch_size=128, epochs=run_epochs, verbose=0)
        seconds = time.perf_counter() - start
        attacks = {
            "PGD-20x2": policies.PGD(0.2, steps=20, restarts=2, clip_min=0.0, clip_max=1.0),
            "APGD-CE": policies.APGD(0.2, steps=100, clip_min=0.0, clip_max=1.0),
            "APGD-DLR": policies.APGD(0.2, steps=100, loss="dlr", clip_min=0.0, clip_max=1.0),
        }
        report = evaluate_robustness(model, (x_test, y_test), [0.2], attacks=attacks,
                                     checks=False, seed=seed, verbose=0)
        rows[name] = {
            "epochs": run_epochs,
            "train_seconds": seconds,
            "clean_accuracy": report.clean_accuracy,
            "pgd20x2_accuracy": report.accuracy["PGD-20x2"][0.2],
            "worst_case_accuracy": report.robust_accuracy[0.2],
        }
        if verbose:
            print(f"  {name}: {rows[name]}", flush=True)
    return rows


def quality_table(rows):
    plain = rows["plain"]["train_seconds"]
    lines = [
        "| configuration | epochs | clean acc | robust acc ε=0.2 (PGD-20x2) | robust acc ε=0.2 "
        "(worst of PGD-20x2, APGD-CE, APGD-DLR) | train s | × plain time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['epochs']} | {row['clean_accuracy']:.1%} | {row['pgd20x2_accuracy']:.1%} | "
            f"{row['worst_case_accuracy']:.1%} | {row['train_seconds']:.1f} | "
            f"{row['train_seconds'] / plain:.2f} |"
        )
    return "\n".join(lines)


def build_parser(parser=None):
    """The `keras-bidir bench` arguments (defined in `keras_bidir_cli`)."""
    from keras_bidir_cli import add_bench_arguments

    return add_bench_arguments(parser or argparse.ArgumentParser(
        prog="keras-bidir bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot(payload, path):
    """Draws a bench JSON payload (speed or quality) as a PNG; False without matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    if payload["mode"] == "speed":
        names = list(payload["ratio_to_plain"])
        ratios = [payload["ratio_to_plain"][n] for n in names]
        per_update = [r / payload["weight_updates_per_step"][n] for r, n in zip(ratios, names)]
        figure, axis = plt.subplots(figsize=(6.5, 3.6))
        positions = range(len(names))
        axis.bar([p - 0.2 for p in positions], ratios, width=0.4, label="per step")
        axis.bar([p + 0.2 for p in positions], per_update, width=0.4, label="per weight update")
        axis.axhline(1.0, color="black", linewidth=1)
        axis.set_xticks(list(positions), names, rotation=30, ha="right")
        axis.set_ylabel("step time / plain fit()")
        axis.set_title(f"median step time ({payload['machine']['device']})", fontsize=9)
    else:
        rows = payload["rows"]
        figure, axis = plt.subplots(figsize=(6.0, 3.8))
        plain_seconds = rows["plain"]["train_seconds"]
        for name, row in rows.items():
            cost = row["train_seconds"] / plain_seconds
            axis.scatter(cost, 100 * row["worst_case_accuracy"], s=40)
            axis.annotate(f"{name} ({100 * row['clean_accuracy']:.0f}% clean)",
                          (cost, 100 * row["worst_case_accuracy"]), fontsize=8,
                          xytext=(4, 3), textcoords="offset points")
        axis.set_xlabel("training time / plain training")
        axis.set_ylabel("worst-case robust accuracy (%)")
        axis.set_title("digits protocol, L∞ ε = 0.2", fontsize=9)
    axis.grid(alpha=0.3)
    if payload["mode"] == "speed":
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def run(args):
    if args.child_memory:
        _child_memory(args.child_memory, args.batch_size, args.steps)
        return 0
    names = ["plain"] + [n for n in args.configs if n != "plain"]
    os.makedirs(args.output_dir, exist_ok=True)
    info = machine()
    command = "keras-bidir bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    print(f"Machine: {info['device']}; TensorFlow {info['tensorflow']}, Keras {info['keras']}")
    if args.quality:
        rows = run_quality(names, epochs=args.epochs)
        table = quality_table(rows)
        payload = {"mode": "quality", "machine": info, "command": command, "rows": rows}
        path = os.path.join(args.output_dir, "quality.json")
    else:
        jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
        medians, replays, memory, counts = measure_speed(
            names, batch_size=args.batch_size, rounds=args.rounds, jit_compile=jit)
        cpu_memory = {}
        if not memory and not args.no_memory:
            print("  measuring peak memory (one child process per configuration)...", flush=True)
            cpu_memory = measure_cpu_memory(names, args.memory_batch_size, args.steps)
            memory = {n: v["delta_mib"] for n, v in cpu_memory.items()}
        table = speed_table(medians, replays, memory)
        payload = {
            "mode": "speed", "machine": info, "command": command,
            "batch_size": args.batch_size, "rounds": args.rounds, "timed_steps": counts,
            "median_step_seconds": medians, "weight_updates_per_step": replays,
            "ratio_to_plain": {n: medians[n] / medians["plain"] for n in names},
            "peak_memory_mib": memory,
            "memory_kind": "gpu allocator peak" if not cpu_memory else (
                f"cpu peak RSS above the process baseline (after importing TF and loading "
                f"data), batch {args.memory_batch_size}"),
            "cpu_memory_detail": cpu_memory,
        }
        path = os.path.join(args.output_dir, "speed.json")
    print()
    print(table)
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"\nJSON: {path}")
    if plot(payload, path[: -len(".json")] + ".png"):
        print(f"Plot: {path[: -len('.json')]}.png")
    return 0


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
