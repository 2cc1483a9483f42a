import json
import os

import pytest

from keras_bidir import cli


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


def test_demo_smoke(tmp_path, capsys):
    out = tmp_path / "demo"
    cli.main(["demo", "--epochs", "2", "--steps", "2", "--eval-epsilons", "0.2",
              "--output-dir", str(out), "--quiet"])
    printed = capsys.readouterr().out
    assert "| plain |" in printed and "| bidirectional (PGD) |" in printed
    for name in ("plain.keras", "bidirectional.keras", "accuracy_vs_epsilon.png", "results.json"):
        assert os.path.getsize(out / name) > 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["rows"]) == {"plain", "bidirectional"}
    for row in results["rows"].values():
        assert 0.0 <= row["robust_accuracy"]["0.2"] <= row["clean_accuracy"] <= 1.0
