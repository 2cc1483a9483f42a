import contextlib
import io
import json
import os
import shlex

import pytest

import keras_bidir_cli as cli


def test_unknown_policy_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["demo", "--policy", "nonsense"])
    assert error.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--epsilon", "0"], ["--epsilon", "-1"], ["--epochs", "0"]])
def test_bad_numbers_are_rejected(args, capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", *args])
    assert "must be" in capsys.readouterr().err


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    # ε = 0.5: after 2 epochs nothing is robust at it, so AutoAttack's cascade ends after
    # its first attack (at 0.2 a third of the digits survived into APGD-T, FAB-T and Square:
    # 4 minutes of a smoke test).
    with contextlib.redirect_stdout(printed):
        cli.main(["demo", "--epochs", "2", "--steps", "2", "--epsilon", "0.5",
                  "--eval-epsilons", "0.5", "--output-dir", str(out), "--quiet", "--no-checks"])
    return out, printed.getvalue()


def test_demo_smoke(demo_run, capsys):
    out, _ = demo_run
    for name in ("plain.keras", "bidirectional.keras", "accuracy_vs_epsilon.png", "results.json"):
        assert os.path.getsize(out / name) > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"plain", "bidirectional"}
    for row in results["rows"].values():
        worst, pgd = row["robust_accuracy"]["0.5"], row["pgd20x2_accuracy"]["0.5"]
        assert 0.0 <= worst <= pgd <= row["clean_accuracy"] <= 1.0
        assert set(row["attacks"]) == {"FGSM", "PGD-20x2", "APGD-CE", "APGD-DLR"}
        # AutoAttack's standard suite at the training ε: at least as strong as the fast set.
        assert row["standard"]["epsilon"] == 0.5 and "standard suite" in row["standard"]["summary"]
        assert row["standard"]["robust_accuracy"] <= pgd + 0.02
    assert os.path.getsize(out / "flipped_examples.png") > 1000
    assert "AutoAttack ε=0.5" in demo_run[1]


def test_evaluate_command(demo_run, tmp_path, capsys):
    out = tmp_path / "eval"
    # The demo ends with the exact command that evaluates its model; run it.
    printed = demo_run[1].split("Evaluate the robust model again (any radii):")[1].split()
    command = shlex.split(" ".join(printed))
    assert os.path.basename(command[0]) == "keras-bidir" and command[1] == "evaluate"
    assert command[2] == str(demo_run[0] / "bidirectional.keras")
    args = command[1:command.index("--epsilons")] + ["--epsilons", "0.4", "0.5"]
    code = cli.main(args + ["--limit", "100", "--output-dir", str(out), "--no-checks"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "**worst case**" in printed and "| after APGD-T |" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["num_examples"] == 100 and set(report["robust_accuracy"]) == {"0.4", "0.5"}
    assert report["suite"] == "standard" and report["cascade"]
    assert (out / "robustness.png").stat().st_size > 1000
    assert (out / "examples.png").stat().st_size > 1000


def test_evaluate_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no such model file"):
        cli.main(["evaluate", str(tmp_path / "missing.keras")])


@pytest.fixture(scope="module")
def plain_model_file(trained_plain, tmp_path_factory):
    """The shared plain (policy-less) model as a file: its data range is unknown."""
    path = tmp_path_factory.mktemp("evaluate_own_data") / "plain.keras"
    trained_plain.save(path)
    return path


def test_evaluate_reads_the_users_npz_with_its_range(plain_model_file, digits, tmp_path, capsys):
    _, (x_test, y_test) = digits
    np = pytest.importorskip("numpy")
    np.savez(tmp_path / "mine.npz", x=x_test[:48], y=y_test[:48])
    common = ["evaluate", str(plain_model_file), "--data", str(tmp_path / "mine.npz"),
              "--suite", "fast", "--no-checks", "--epsilons", "0.1", "--output-dir",
              str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"input range is unknown.*--clip-min 0 --clip-max 1"):
        cli.main(common)
    assert cli.main(common + ["--clip-min", "0", "--clip-max", "1"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["num_examples"] == 48 and report["data"].endswith("mine.npz")
    expected = kb_robust(plain_model_file, x_test[:48], y_test[:48])
    assert report["clean_accuracy"] == pytest.approx(expected)


def test_evaluate_as_two_shards_writes_one_report(plain_model_file, digits, tmp_path, capsys):
    import threading

    _, (x_test, y_test) = digits
    np = pytest.importorskip("numpy")
    np.savez(tmp_path / "mine.npz", x=x_test[:48], y=y_test[:48])
    common = ["evaluate", str(plain_model_file), "--data", str(tmp_path / "mine.npz"),
              "--suite", "fast", "--no-checks", "--epsilons", "0.1", "--clip-min", "0",
              "--clip-max", "1", "--batch-size", "16", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"pass state=.*--state PATH"):
        cli.main(common + ["--shard", "0/2"])
    with pytest.raises(SystemExit, match=r"--shard: shard must read 'i/n'"):
        cli.main(common + ["--shard", "two"])
    # Two shards, as two processes would run them (here two threads, each loading the model).
    sharded = common + ["--state", str(tmp_path / "state.npz")]
    codes = {}
    other = threading.Thread(target=lambda: codes.update(one=cli.main(sharded + ["--shard", "1/2"])))
    other.start()
    codes["zero"] = cli.main(sharded + ["--shard", "0/2"])
    other.join(timeout=600)
    assert codes == {"zero": 0, "one": 0}
    assert "Shard 1 of 2 done; shard 0 writes the report files." in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert sorted(p.name for p in tmp_path.glob("state.npz.*")) == ["state.npz.0-of-2",
                                                                     "state.npz.1-of-2"]
    single = common[:-1] + [str(tmp_path / "single")]
    assert cli.main(single) == 0
    expected = json.loads((tmp_path / "single" / "report.json").read_text())
    assert report == expected


def kb_robust(model_file, x, y):
    import keras

    import keras_bidir as kb

    return kb.evaluation.robust_accuracy(keras.models.load_model(model_file), x, y, None)


def test_evaluate_reads_a_function_of_the_users_module(plain_model_file, digits, tmp_path,
                                                       monkeypatch):
    _, (x_test, y_test) = digits
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "x.npy", x_test[:40])
    np.save(tmp_path / "y.npy", y_test[:40])
    (tmp_path / "my_data.py").write_text(
        "import numpy as np\n\ndef test_set():\n"
        f"    return np.load({str(tmp_path / 'x.npy')!r}), np.load({str(tmp_path / 'y.npy')!r})\n")
    monkeypatch.chdir(tmp_path)
    code = cli.main(["evaluate", str(plain_model_file), "--data", "my_data:test_set", "--suite",
                     "fast", "--no-checks", "--epsilons", "0.1", "--clip-min", "0",
                     "--clip-max", "1", "--output-dir", str(tmp_path / "out")])
    assert code == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["num_examples"] == 40


@pytest.mark.parametrize("make, message", [
    (lambda np, d, x, y: np.savez(d, x=x.reshape(len(x), -1), y=y),
     r"expects examples of shape \(8, 8, 1\), but the data has examples of shape \(64,\)"),
    (lambda np, d, x, y: np.savez(d, images=x, labels=y),
     r"holds \['images', 'labels'\]; it needs arrays named x and y"),
    (lambda np, d, x, y: np.savez(d, x=x, y=y[:-1]), "inputs but .* labels"),
    (lambda np, d, x, y: d.write_bytes(b"not an archive"), "is not a NumPy .npz archive"),
])
def test_evaluate_refuses_data_it_cannot_use_in_one_line(plain_model_file, digits, tmp_path,
                                                         make, message):
    np = pytest.importorskip("numpy")
    _, (x_test, y_test) = digits
    path = tmp_path / "bad.npz"
    make(np, path, x_test[:16], y_test[:16])
    with pytest.raises(SystemExit, match=message):
        cli.main(["evaluate", str(plain_model_file), "--data", str(path), "--clip-min", "0",
                  "--clip-max", "1", "--suite", "fast", "--no-checks"])
    with pytest.raises(SystemExit, match="is not a bundled name"):
        cli.main(["evaluate", str(plain_model_file), "--data", "no-such-thing"])
