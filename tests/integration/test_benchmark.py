import json

import numpy as np
import pytest

import keras_bidir_cli as cli
from keras_bidir_cli import benchmark


def test_targets_follow_the_issue():
    assert benchmark.target_ratio("fgsm", 1) == 2.1
    assert benchmark.target_ratio("pgd7", 1) == pytest.approx(8.4)
    assert benchmark.target_ratio("free4", 4) == pytest.approx(4.4)
    assert benchmark.target_ratio("gaussian_noise", 1) is None


def test_bench_speed_smoke(tmp_path, capsys):
    code = cli.main(["bench", "--configs", "fgsm", "free4", "--rounds", "1", "--no-memory",
                     "--output-dir", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| fgsm |" in out and "| free4 |" in out and "| plain |" in out
    payload = json.loads((tmp_path / "speed.json").read_text())
    assert payload["ratio_to_plain"]["plain"] == 1.0
    assert payload["weight_updates_per_step"] == {"plain": 1, "fgsm": 1, "free4": 4}
    assert all(v > 0 for v in payload["median_step_seconds"].values())
    assert payload["timed_steps"]["fgsm"] == 10  # 1400 // 128 full batches


def test_cpu_memory_child_reports_a_footprint():
    result = benchmark.measure_cpu_memory(["plain"], batch_size=64, steps=2)
    assert result["plain"]["delta_mib"] > 0


def test_speed_plot_is_drawn_from_the_bench_json(tmp_path):
    speed = {"mode": "speed", "machine": {"device": "CPU"},
             "ratio_to_plain": {"plain": 1.0, "free4": 4.0},
             "weight_updates_per_step": {"plain": 1, "free4": 4}}
    path = tmp_path / "speed.png"
    assert benchmark.plot(speed, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _row(name, seed, seconds, worst, clean=0.98):
    return {"name": name, "seed": seed, "epochs": 30, "train_seconds": seconds,
            "clean_accuracy": clean, "pgd20x2_accuracy": worst + 0.02,
            "worst_case_accuracy": worst, "overfitting_events": int(name == "fgsm")}


def test_frontier_summary_ratios_per_seed_and_marks_the_undominated(tmp_path):
    from keras_bidir_cli import frontier

    rows = [_row("plain", 0, 10.0, 0.0), _row("plain", 1, 20.0, 0.02),
            _row("fgsm", 0, 15.0, 0.50), _row("fgsm", 1, 30.0, 0.54),      # 1.5x, 52 %
            _row("free8", 0, 12.0, 0.66), _row("free8", 1, 24.0, 0.68),    # 1.2x, 67 %
            _row("pgd7", 0, 40.0, 0.62), _row("pgd7", 1, 80.0, 0.64),      # 4.0x, 63 %
            _row("strong", 0, 25.0, 0.70), _row("strong", 1, 50.0, 0.72),  # 2.5x, 71 %
            _row("plain", 2, 10.0, 0.0), _row("noisy", 0, 10.0, 0.1), _row("noisy", 1, 60.0, 0.1),
            _row("noisy", 2, 25.0, 0.1)]  # ratios 1.0, 3.0, 2.5: median 2.5
    summary = frontier.summarize(rows)
    assert summary["fgsm"]["cost"] == pytest.approx(1.5) and summary["fgsm"]["cost_max"] == 1.5
    assert summary["free8"]["worst_case_accuracy"] == pytest.approx(0.67)
    assert summary["free8"]["worst_case_accuracy_std"] == pytest.approx(np.std([0.66, 0.68], ddof=1))
    assert summary["fgsm"]["overfitting_events"] == 2
    assert summary["plain"]["overfitting_events"] is None  # not adversarially trained
    assert summary["noisy"]["cost"] == 2.5 and summary["noisy"]["cost_min"] == 1.0
    adjacent = dict(_row("late", 0, 30.0, 0.5), plain_seconds=20.0)  # timed next to its plain
    assert frontier.summarize(rows + [adjacent])["late"]["cost"] == 1.5
    assert {n for n, e in summary.items() if e["frontier"]} == {"plain", "free8", "strong"}
    table = frontier.table(summary)
    assert "| **free8** | 30 | 98.0% ± 0.0% | 69.0% ± 1.4% | 67.0% ± 1.4% | 1.20 (1.20–1.20) | 0 | 2 |" in table
    path = tmp_path / "frontier.png"
    assert frontier.plot([{"summary": summary, "protocol": {"name": "digits", "epsilon": 0.2}}],
                         str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_collapse_counts_once_until_robustness_recovers():
    from keras_bidir_cli.frontier import collapse_events

    assert collapse_events([0.1, 0.4, 0.5, 0.52]) == 0
    assert collapse_events([0.1, 0.5, 0.45, 0.32]) == 0    # −18 points: not a collapse
    assert collapse_events([0.1, 0.5, 0.05, 0.02, 0.4, 0.0]) == 2
    assert collapse_events([0.6, 0.35]) == 0          # −25 points, but above half the best
    assert collapse_events([0.6, 0.25]) == 1


def test_frontier_run_trains_times_and_evaluates_a_recipe():
    import dataclasses

    from keras_bidir_cli import frontier

    protocol = dataclasses.replace(frontier.PROTOCOLS["digits"], epochs=6)  # 1 epoch of free-8
    (x, y), (x_test, y_test) = protocol.load()
    data = ((x[:256], y[:256]), (x_test[:64], y_test[:64]))
    # The standard suite's own path is timed and checked by the --evaluation test below.
    row = frontier.train_and_evaluate(protocol, "recipe_fast", frontier._configs()["recipe_fast"],
                                      0, data, suite="fast")
    assert row["epochs"] == 1 and row["train_seconds"] > 0 and row["plain_seconds"] > 0
    assert 0.0 <= row["worst_case_accuracy"] <= row["pgd20x2_accuracy"] <= row["clean_accuracy"]
    assert row["overfitting_events"] == 0 and "autoattack_accuracy" not in row


def test_frontier_summary_is_drawn_on_autoattack_when_every_run_has_it():
    from keras_bidir_cli import frontier

    def row(name, seed, seconds, fast, standard):
        return {"name": name, "seed": seed, "epochs": 30, "train_seconds": seconds,
                "plain_seconds": 10.0, "clean_accuracy": 0.98, "pgd20x2_accuracy": fast + 0.02,
                "worst_case_accuracy": fast, "autoattack_accuracy": standard,
                "overfitting_events": 0}

    rows = [row("plain", 0, 10.0, 0.01, 0.0), row("a", 0, 15.0, 0.70, 0.60),
            row("b", 0, 30.0, 0.65, 0.64)]  # b: weaker on the fast set, stronger under AutoAttack
    summary = frontier.summarize(rows)
    assert frontier.robust_measure(summary) == "autoattack_accuracy"
    assert summary["b"]["frontier"] and summary["a"]["frontier"]
    assert summary["b"]["autoattack_accuracy"] == 0.64
    text = frontier.table(summary)
    assert "**AutoAttack (standard suite)**" in text and "**64.0%**" in text
    del rows[2]["autoattack_accuracy"]  # one run without it: the fast set is the measure
    assert frontier.robust_measure(frontier.summarize(rows)) == "worst_case_accuracy"
    assert "AutoAttack" not in frontier.table(frontier.summarize(rows))


def test_evaluation_bench_times_both_suites_and_tabulates_them(trained_plain, digits):
    from keras_bidir_cli import evaluation_bench

    _, (x, y) = digits
    rows = evaluation_bench.evaluate_both(trained_plain, x[:60], y[:60], [0.3], seed=0)
    fast, standard = rows["fast"], rows["standard"]
    assert set(fast["attacks"]) == {"FGSM", "PGD-20x2", "APGD-CE", "APGD-DLR"}
    assert list(standard["attacks"])[:6] == ["APGD-CE", "APGD-T", "FAB-T", "Square", "PGD-20x2",
                                             "APGD-DLR"]
    assert rows["standard_over_fast"] == pytest.approx(standard["seconds"] / fast["seconds"])
    # The cascade's rows never rise, and its first row is APGD-CE on every example.
    after = [r["0.3"] for r in standard["attacks"].values()]
    assert after == sorted(after, reverse=True) and after[-1] == standard["robust_accuracy"]["0.3"]
    assert after[0] == pytest.approx(fast["attacks"]["APGD-CE"]["0.3"], abs=0.05)
    payload = {"epsilons": [0.3], "results": {"plain": {"train_seconds": 1.0, **rows}}}
    line = evaluation_bench.table(payload).splitlines()[-1]
    assert line.startswith("| plain |") and f"{rows['standard_over_fast']:.2f}" in line
    payload["shard_scaling"] = {"examples": 1797, "processes": 2, "speedup": 9.0 / 4.75,
                                "sharded_examples_per_second": 9.0,
                                "one_process_examples_per_second": 4.75, "same_report": True}
    assert evaluation_bench.table(payload).splitlines()[-1] == (
        "Standard suite on 1797 examples, one compute thread per process: 2 shard processes "
        "9.0 examples/s, one process 4.8: **1.89×** (same report: yes).")
