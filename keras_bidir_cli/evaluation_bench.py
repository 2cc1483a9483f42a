"""`keras-bidir bench --evaluation`: AutoAttack's standard suite against the fast set.

Trains the digits protocol's models (as `--quality` does) and evaluates each
with both suites back to back, so the time ratio is measured in one run; then
times the standard suite on the first model in one process and as two shards
(two processes), one compute thread each.
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DEFAULT_CONFIGS = ("pgd7", "trades7")


def evaluate_both(model, x, y, epsilons, seed):
    """`{suite: row}`: the fast and the standard suite on one model, timed."""
    from keras_bidir.evaluation import evaluate_robustness

    rows = {}
    for suite in ("fast", "standard"):
        start = time.perf_counter()
        report = evaluate_robustness(model, (x, y), epsilons, clip_min=0.0, clip_max=1.0,
                                     suite=suite, seed=seed, verbose=0)
        rows[suite] = {
            "seconds": time.perf_counter() - start,
            "clean_accuracy": report.clean_accuracy,
            "robust_accuracy": {str(e): v for e, v in report.robust_accuracy.items()},
            "attacks": {n: {str(e): v for e, v in r.items()} for n, r in report.accuracy.items()},
            "checks_passed": report.passed_checks,
            "summary": report.summary_line(),
        }
    rows["standard_over_fast"] = rows["standard"]["seconds"] / rows["fast"]["seconds"]
    return rows


def run(configs=None, epsilons=(0.2,), seed=0, verbose=True):
    """Trains each configuration on the digits protocol and evaluates it with both suites.

    Returns:
        A JSON-ready dict: per configuration, the training seconds and both
        suites' figures and times.
    """
    from keras_bidir_cli import frontier

    protocol = frontier.PROTOCOLS["digits"]
    (x_train, y_train), (x_test, y_test) = protocol.load()
    known = frontier._configs()
    results, model_of = {}, {}
    for name in configs or DEFAULT_CONFIGS:
        if verbose:
            print(f"  {name}: training ({protocol.epochs} epochs)...", flush=True)
        model, _, seconds, _ = frontier._timed_fit(protocol, known[name], seed, x_train, y_train)
        model_of[name] = model
        if verbose:
            print(f"  {name}: evaluating with the fast and the standard suite...", flush=True)
        results[name] = {"train_seconds": seconds, **evaluate_both(model, x_test, y_test,
                                                                  list(epsilons), seed)}
    scaling = None
    if results:
        first = next(iter(results))
        if verbose:
            print(f"  {first}: the standard suite in one process, then as two shards...",
                  flush=True)
        # Throughput on all 1,797 digits (the training ones too: more batches per attack run
        # than the 397 test digits give, so the per-process compile time weighs as it does on
        # a real test set).
        x_all, y_all = np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test])
        scaling = shard_scaling(model_of[first], x_all, y_all, list(epsilons), seed)
    return {"mode": "evaluation", "protocol": protocol.description, "seed": seed,
            "epsilons": list(epsilons), "results": results, "shard_scaling": scaling}


def table(payload):
    """A Markdown table: per model and ε, the fast worst case, the standard suite, the times."""
    rows = list(payload["results"].values())
    stages = list(rows[0]["standard"]["attacks"]) if rows else []
    header = ["model", "clean", "ε", "fast: worst case",
              "standard: after " + " / ".join(stages), "fast s", "standard s", "standard ÷ fast"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in payload["results"].items():
        fast, standard = row["fast"], row["standard"]
        for e in payload["epsilons"]:
            key = str(float(e))
            steps = " / ".join(f"{standard['attacks'][s][key]:.1%}"
                               if s in standard["attacks"] else "–" for s in stages)
            lines.append(f"| {name} | {fast['clean_accuracy']:.1%} | {e:g} | "
                         f"{fast['robust_accuracy'][key]:.1%} | {steps} | {fast['seconds']:.0f} | "
                         f"{standard['seconds']:.0f} | {row['standard_over_fast']:.2f} |")
    scaling = payload.get("shard_scaling")
    if scaling:
        lines.append("")
        lines.append(scaling_line(scaling))
    return "\n".join(lines)


def scaling_line(scaling):
    """One sentence: the standard suite's examples per second as shards against one process."""
    return (f"Standard suite on {scaling['examples']} examples, one compute thread per process: "
            f"{scaling['processes']} shard processes {scaling['sharded_examples_per_second']:.1f} "
            f"examples/s, one process {scaling['one_process_examples_per_second']:.1f}: "
            f"**{scaling['speedup']:.2f}×** (same report: "
            f"{'yes' if scaling['same_report'] else 'NO'}).")


# One compute thread per process: TensorFlow's and XLA's CPU thread pools.
ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def shard_scaling(model, x, y, epsilons, seed, batch_size=32, processes=2):
    """Examples per second of the standard suite as `processes` shards against one process.

    Each process has one compute thread; a process's time runs from the start of its
    evaluation (after imports and loading) to its end, and the shards' time from the first
    start to the last end.

    Returns:
        A JSON-ready dict: seconds and examples per second of each, and the speed-up.
    """
    with tempfile.TemporaryDirectory() as folder:
        model_path, data_path = os.path.join(folder, "model.keras"), os.path.join(folder, "data.npz")
        model.save(model_path)
        np.savez(data_path, x=x, y=y)
        spans = {count: _timed_shards(model_path, data_path, epsilons, seed, batch_size, count,
                                      os.path.join(folder, f"state{count}"))
                 for count in (1, processes)}
    one, many = spans[1], spans[processes]
    return {"examples": int(len(y)), "batch_size": batch_size, "processes": processes,
            "one_process_seconds": one["seconds"], "sharded_seconds": many["seconds"],
            "one_process_examples_per_second": len(y) / one["seconds"],
            "sharded_examples_per_second": len(y) / many["seconds"],
            "speedup": one["seconds"] / many["seconds"],
            "same_report": one["report"] == many["report"]}


def _timed_shards(model_path, data_path, epsilons, seed, batch_size, count, state):
    env = {**os.environ, **ONE_THREAD, "TF_CPP_MIN_LOG_LEVEL": "3"}
    outputs = [f"{state}.timing{i}.json" for i in range(count)]
    workers = [subprocess.Popen(
        [sys.executable, "-m", "keras_bidir_cli.evaluation_bench", model_path, data_path,
         state, f"{i}/{count}", json.dumps({"epsilons": epsilons, "seed": seed,
                                            "batch_size": batch_size}), outputs[i]],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(count)]
    for worker in workers:
        _, err = worker.communicate(timeout=3600)
        if worker.returncode:
            raise RuntimeError(f"A shard process failed:\n{err[-3000:]}")
    timings = []
    for path in outputs:
        with open(path) as handle:
            timings.append(json.load(handle))
    return {"seconds": max(t["end"] for t in timings) - min(t["start"] for t in timings),
            "report": timings[0]["report"]}


def _shard_worker(model_path, data_path, state, shard, settings, output):
    """One shard process of `shard_scaling`: evaluates and writes its start and end times."""
    import keras

    import keras_bidir as kb
    from keras_bidir_cli import evaluation_data

    settings = json.loads(settings)
    model = keras.models.load_model(model_path)
    data, _ = evaluation_data.load(data_path)
    start = time.time()
    report = kb.evaluate_robustness(
        model, data, settings["epsilons"], clip_min=0.0, clip_max=1.0, suite="standard",
        seed=settings["seed"], batch_size=settings["batch_size"], verbose=0,
        state=state + ".npz", shard=shard)
    with open(output, "w") as handle:
        json.dump({"start": start, "end": time.time(), "report": report.to_dict()}, handle)


if __name__ == "__main__":
    _shard_worker(*sys.argv[1:7])
