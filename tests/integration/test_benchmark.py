import json

import pytest

from keras_bidir.apps import benchmark, cli


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


def test_plots_are_drawn_from_the_bench_json(tmp_path):
    from keras_bidir.apps import benchmark

    speed = {"mode": "speed", "machine": {"device": "CPU"},
             "ratio_to_plain": {"plain": 1.0, "free4": 4.0},
             "weight_updates_per_step": {"plain": 1, "free4": 4}}
    quality = {"mode": "quality", "rows": {
        "plain": {"train_seconds": 10.0, "clean_accuracy": 0.99, "worst_case_accuracy": 0.01},
        "pgd7": {"train_seconds": 40.0, "clean_accuracy": 0.98, "worst_case_accuracy": 0.6}}}
    for name, payload in (("speed", speed), ("quality", quality)):
        path = tmp_path / f"{name}.png"
        assert benchmark.plot(payload, str(path))
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
