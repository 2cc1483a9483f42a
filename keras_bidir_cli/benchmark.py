"""`keras-bidir bench`: the cost of bidirectional training relative to plain `fit()`.

Speed (default): in ONE process, on the same model, data and batch size, every
configuration is built and warmed up (traced) first; then all are timed in
interleaved rounds of one epoch each, and the median step time is compared to
plain `keras.Model.fit` (no wrapper). Peak memory: on a GPU, TensorFlow's
allocator peak (reset per configuration); on a CPU, where TensorFlow keeps no
allocator statistics, the peak-RSS increase of a child process per
configuration that runs the same steps.

Quality (`--quality`, `keras_bidir_cli.frontier`): on the digits and the
MNIST-5k protocols, every policy and recipe trained per seed next to plain
`fit`: clean accuracy, worst-case robust accuracy, training time relative to
plain, catastrophic-overfitting events, and the frontier.

    keras-bidir bench                 # speed and memory table, JSON to outputs/bench/
    keras-bidir bench --quality       # the robustness-versus-time frontier, both protocols
    python -m keras_bidir_cli.benchmark   # the same
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

from keras_bidir_cli import plotting

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
    from keras_bidir_cli.demo import digits_cnn
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


def measure_speed(names, batch_size=128, rounds=5, jit_compile="auto", verbose=True):
    """Median step time per configuration, measured in this process."""
    import numpy as np

    from keras_bidir import backend
    from keras_bidir import datasets

    (x, y), _ = datasets.load_digits()
    x, y = x[: (len(x) // batch_size) * batch_size], y[: (len(y) // batch_size) * batch_size]
    models, times, memory = {}, {name: [] for name in names}, {}
    for name in names:
        models[name] = _build(name, jit_compile=jit_compile)
        backend.reset_peak_memory()
        models[name].fit(x, y, batch_size=batch_size, epochs=1, verbose=0)  # trace + warm up
        peak = backend.peak_memory_mib()
        if peak is not None:
            memory[name] = peak
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
            [sys.executable, "-m", "keras_bidir_cli.benchmark", "--child-memory", name,
             "--batch-size", str(batch_size), "--steps", str(steps)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        result[name] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def machine():
    import keras

    from keras_bidir import backend

    gpus = backend.accelerators()
    device = "GPU: " + ", ".join(gpus) if gpus else (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    return {
        "device": device,
        "python": platform.python_version(),
        "backend": keras.backend.backend(),
        "framework": backend.framework(),
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


def build_parser(parser=None):
    """The `keras-bidir bench` arguments (defined in `keras_bidir_cli`)."""
    from keras_bidir_cli.parser import add_bench_arguments

    return add_bench_arguments(parser or argparse.ArgumentParser(
        prog="keras-bidir bench", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter))


def plot(payload, path):
    """Draws a speed JSON payload as a PNG; False without matplotlib."""
    plt = plotting.pyplot()
    if plt is None:
        return False
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
    plotting.save(figure, axis, path, dpi=110)
    return True


def run(args):
    if args.child_memory:
        _child_memory(args.child_memory, args.batch_size, args.steps)
        return 0
    os.makedirs(args.output_dir, exist_ok=True)
    info = machine()
    command = "keras-bidir bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:])
    print(f"Machine: {info['device']}; {info['framework']}, Keras {info['keras']} "
          f"(backend: {info['backend']})")
    if args.quality:
        return _run_frontier(args, info, command)
    if args.evaluation:
        return _run_evaluation(args, info, command)
    configs = args.configs or list(CONFIGS)
    unknown = [n for n in configs if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"keras-bidir bench: {unknown} are --quality configurations; "
                         f"step-time configurations: {', '.join(CONFIGS)}.")
    names = ["plain"] + [n for n in configs if n != "plain"]
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    medians, replays, memory, counts = measure_speed(
        names, batch_size=args.batch_size, rounds=args.rounds, jit_compile=jit)
    cpu_memory = {}
    if not memory and not args.no_memory:
        print("  measuring peak memory (one child process per configuration)...", flush=True)
        cpu_memory = measure_cpu_memory(names, args.memory_batch_size, args.steps)
        memory = {n: v["delta_mib"] for n, v in cpu_memory.items()}
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
    print()
    print(speed_table(medians, replays, memory))
    path = os.path.join(args.output_dir, "speed.json")
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
    print(f"\nJSON: {path}")
    if plot(payload, path[: -len(".json")] + ".png"):
        print(f"Plot: {path[: -len('.json')]}.png")
    return 0


def _run_frontier(args, info, command):
    """`--quality`: the robustness-versus-training-time frontier on each protocol."""
    from keras_bidir_cli import frontier

    configs = args.configs or list(frontier.CONFIG_NAMES)
    unknown = [n for n in configs if n not in frontier.CONFIG_NAMES]
    if unknown:
        raise SystemExit(f"keras-bidir bench --quality: {unknown} are step-time configurations; "
                         f"quality configurations: {', '.join(frontier.CONFIG_NAMES)}.")
    seeds = None if args.seeds is None else {p: args.seeds for p in args.protocols}
    results = frontier.run(args.protocols, configs, seeds, args.output_dir,
                           suite=getattr(args, "suite", "standard"))
    for name, payload in results.items():
        payload.update(machine=info, command=command)
        path = os.path.join(args.output_dir, f"frontier_{name}.json")
        with open(path, "w") as handle:
            json.dump(payload, handle, indent=2)
        print(f"\n{frontier.PROTOCOLS[name].description}\n")
        print(frontier.table(payload["summary"]))
        print(f"\nJSON: {path}")
    image = os.path.join(args.output_dir, "frontier.png")
    if frontier.plot(list(results.values()), image):
        print(f"Plot: {image}")
    return 0


def _run_evaluation(args, info, command):
    """`--evaluation`: the standard suite against the fast set, figures and time."""
    from keras_bidir_cli import evaluation_bench

    payload = evaluation_bench.run(args.configs, args.eval_epsilons)
    payload.update(machine=info, command=command)
    path = os.path.join(args.output_dir, "evaluation.json")
    with open(path, "w") as handle:
        json.dump(payload, handle, indent=2)
    print()
    print(evaluation_bench.table(payload))
    print(f"\nJSON: {path}")
    return 0


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
