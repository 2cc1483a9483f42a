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
