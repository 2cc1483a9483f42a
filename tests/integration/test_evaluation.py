import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_bidir as kb
from keras_bidir import evaluation, losses, policies
from conftest import compile_classifier

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


class Quantize(keras.layers.Layer):
    """Rounds inputs to 4 levels: the gradient through it is zero (masked)."""

    def call(self, x):
        return keras.ops.round(x * 4.0) / 4.0


def masked_copy(model):
    quantized = keras.Sequential([keras.Input((8, 8, 1)), Quantize(), *model.layers])
    return quantized


def test_dlr_loss_matches_numpy():
    logits = np.array([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.0, 0.5]], dtype="float32")
    y = np.array([0, 2])
    got = keras.ops.convert_to_numpy(losses.dlr_loss(y, logits))
    s0, s1 = np.sort(logits[0]), np.sort(logits[1])
    expected = [-(3.0 - 1.0) / (s0[-1] - s0[-3]), -(1.0 - 2.0) / (s1[-1] - s1[-3])]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # Invariant to shifting and scaling the logits.
    np.testing.assert_allclose(keras.ops.convert_to_numpy(losses.dlr_loss(y, logits * 7 + 3)), expected, rtol=1e-4)


def test_apgd_checkpoints_follow_the_paper():
    assert policies.apgd.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]  # as AutoAttack's n_iter=100


# The second backend runs the L2 cross-entropy case: L∞ APGD-CE and APGD-T (DLR) run there in
# the standard suite's cascade (test_standard_attacks.py).
@pytest.mark.parametrize("loss,norm", [
    ("ce", "linf"), ("dlr", "linf"), pytest.param("ce", "l2", marks=pytest.mark.backends), ("dlr", "l2")])
def test_apgd_stays_in_ball_and_is_at_least_as_strong_as_fgsm(trained_plain, digits, loss, norm):
    _, (x, y) = digits
    x, y = x[:128], y[:128]
    apgd = policies.APGD(0.15, steps=20, loss=loss, norm=norm, **CLIP)
    x_adv = keras.ops.convert_to_numpy(apgd.perturb(trained_plain, x, y))
    delta = (x_adv - x).reshape(len(x), -1)
    bound = np.abs(delta).max(1) if norm == "linf" else np.sqrt((delta ** 2).sum(1))
    assert (bound <= 0.15 + 1e-5).all() and x_adv.min() >= 0 and x_adv.max() <= 1
    fgsm = evaluation.robust_accuracy(trained_plain, x, y, policies.FGSM(0.15, norm=norm, **CLIP))
    assert evaluation.robust_accuracy(trained_plain, x, y, apgd) <= fgsm


def test_report_worst_case_is_per_example_and_checks_pass_for_a_normal_model(trained_plain, digits, tmp_path):
    _, (x, y) = digits
    report = kb.evaluate_robustness(trained_plain, (x, y), [0.05, 0.1], clip_min=0.0, clip_max=1.0, verbose=0)
    assert set(report.accuracy) == {"FGSM", "PGD-20x2", "APGD-CE", "APGD-DLR"}
    for eps in report.epsilons:
        assert report.robust_accuracy[eps] <= min(r[eps] for r in report.accuracy.values())
    assert report.robust_accuracy[0.1] <= report.robust_accuracy[0.05] <= report.clean_accuracy
    assert report.passed_checks, report.to_markdown()
    text = report.to_markdown()
    assert "**worst case**" in text and "[pass] large_epsilon" in text
    assert json.loads(json.dumps(report.to_dict()))["robust_accuracy"]["0.1"] == report.robust_accuracy[0.1]
    report.plot(tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


@pytest.mark.backends
def test_masked_gradients_are_flagged(trained_plain, digits):
    _, (x, y) = digits
    masked = masked_copy(trained_plain)
    with pytest.warns(UserWarning, match="Gradient-masking check 'input_gradients' failed"):
        report = kb.evaluate_robustness(masked, (x[:200], y[:200]), [0.1], clip_min=0.0,
                                        clip_max=1.0, verbose=0)
    failed = {c.name for c in report.checks if not c.passed}
    assert "input_gradients" in failed
    assert not report.passed_checks
    gradient_check = next(c for c in report.checks if c.name == "input_gradients")
    assert gradient_check.details["zero_fraction"] == 1.0
    assert "rounding" in gradient_check.message


def test_evaluate_robustness_accepts_datasets_and_custom_attacks(trained_plain, digits):
    _, (x, y) = digits
    ds = tf.data.Dataset.from_tensor_slices((x[:100], y[:100])).batch(32)
    report = kb.evaluate_robustness(trained_plain, ds, [0.1, 0.2],
                                    attacks={"PGD-5": policies.PGD(0.5, steps=5, **CLIP)},
                                    checks=False, verbose=0)
    assert list(report.accuracy) == ["PGD-5"] and report.num_examples == 100
    with pytest.raises(ValueError, match="epsilons must be a non-empty list"):
        kb.evaluate_robustness(trained_plain, (x, y), [0.0])


def test_strongest_attack_beats_or_ties_pgd20_on_adversarially_trained_model(digits):
    (x_train, y_train), (x_test, y_test) = digits
    from keras_bidir_cli.demo import digits_cnn

    model = kb.BidirectionalModel(digits_cnn(0), policies.PGD(0.2, steps=3, **CLIP), seed=0)
    compile_classifier(model)
    model.fit(x_train, y_train, batch_size=64, epochs=6, verbose=0)
    report = kb.evaluate_robustness(model, (x_test, y_test), [0.2], verbose=0)
    pgd20 = evaluation.robust_accuracy(model, x_test, y_test, policies.PGD(0.2, steps=20, **CLIP))
    assert report.robust_accuracy[0.2] <= pgd20
    assert min(report.accuracy["APGD-CE"][0.2], report.accuracy["APGD-DLR"][0.2]) <= pgd20 + 0.01
    assert report.passed_checks, report.to_markdown()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="TensorFlow's retracing warning; on JAX this checked nothing (18 s)")
def test_evaluation_compiles_each_attack_once(trained_plain, digits, caplog):
    _, (x_test, y_test) = digits
    # Two batches (64 and a ragged 2) at three radii: 6 calls of each attack, past
    # TensorFlow's retracing warning (5 traces) if each call traced anew.
    with caplog.at_level(logging.WARNING, logger="tensorflow"):
        kb.evaluate_robustness(trained_plain, (x_test[:66], y_test[:66]), [0.1, 0.2, 0.3],
                               batch_size=64, verbose=0, clip_min=0.0, clip_max=1.0)
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def test_gradient_free_check_flags_masking_that_square_sees_through(trained_plain, digits):
    _, (x, y) = digits
    attacks = {**kb.evaluation.default_attacks(0.1, **CLIP),
               "Square-300": policies.Square(0.1, queries=300, **CLIP)}
    honest = kb.evaluate_robustness(trained_plain, (x[:100], y[:100]), [0.1], attacks=attacks,
                                    verbose=0)
    check = next(c for c in honest.checks if c.name == "gradient_free")
    assert check.passed, check.message
    with pytest.warns(UserWarning, match="'gradient_free' failed"):
        masked = kb.evaluate_robustness(masked_copy(trained_plain), (x[:100], y[:100]), [0.1],
                                        attacks=attacks, verbose=0)
    check = next(c for c in masked.checks if c.name == "gradient_free")
    square, gradient = check.details["0.1"]
    assert not check.passed and square < gradient - 0.02 and "Square-300" in check.message


def test_cascade_gradient_free_check_flags_masking(trained_plain, digits):
    _, (x, y) = digits
    attacks = {"PGD-10": policies.PGD(0.1, steps=10, **CLIP),
               "Square-300": policies.Square(0.1, queries=300, **CLIP)}
    honest = kb.evaluate_robustness(trained_plain, (x[:100], y[:100]), [0.1], attacks=attacks,
                                    cascade=True, verbose=0)
    assert honest.cascade and honest.suite == "custom"
    assert next(c for c in honest.checks if c.name == "gradient_free").passed
    with pytest.warns(UserWarning, match="'gradient_free' failed"):
        masked = kb.evaluate_robustness(masked_copy(trained_plain), (x[:100], y[:100]), [0.1],
                                        attacks=attacks, cascade=True, verbose=0)
    check = next(c for c in masked.checks if c.name == "gradient_free")
    # The share Square broke is the drop from the row before it to its own row.
    rows = masked.accuracy
    assert check.details["0.1"] == pytest.approx(rows["PGD-10"][0.1] - rows["Square-300"][0.1])
    assert not check.passed and check.details["0.1"] > 0.02


def test_standard_suite_and_its_refusals(trained_plain, digits):
    _, (x, y) = digits
    with pytest.raises(ValueError, match="suite must be one of"):
        kb.evaluate_robustness(trained_plain, (x[:10], y[:10]), [0.1], suite="autoattack")
    regressor = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(1)])
    regressor.compile(loss="mse")
    targets = x[:10].reshape(10, -1).mean(axis=1, keepdims=True)
    with pytest.raises(ValueError, match="use suite='fast'"):
        kb.evaluate_robustness(regressor, (x[:10], targets), [0.1], suite="standard")
    with pytest.raises(ValueError, match="pass cascade=False"):
        kb.evaluate_robustness(regressor, (x[:10], targets), [0.1], cascade=True)
    with pytest.raises(ValueError, match=r"\['Square'\] ascend a classification margin"):
        kb.evaluate_robustness(regressor, (x[:10], targets), [0.1],
                               attacks={"Square": policies.Square(0.1, queries=10)})
    attacks = kb.evaluation.standard_attacks(0.1, norm="l2", classes=3)
    assert list(attacks) == ["APGD-CE", "APGD-DLR", "FAB-T", "Square"]
    assert attacks["FAB-T"].targets == 2 and attacks["Square"].norm == "l2"
    assert "FAB-T" not in kb.evaluation.standard_attacks(0.1, classes=1)


@pytest.mark.parametrize("cascade", [True, False], ids=["cascade", "independent"])
def test_the_report_is_the_worst_case_over_every_attack_the_call_ran(trained_plain, digits,
                                                                     cascade):
    # Before: the masking checks' PGD-5 / PGD-20 broke examples the report still counted robust.
    _, (x, y) = digits
    x, y = x[:100], y[:100]
    report = kb.evaluate_robustness(trained_plain, (x, y), [0.05, 0.1],
                                    attacks={"FGSM": policies.FGSM(0.1, **CLIP)},
                                    cascade=cascade, verbose=0, **CLIP)
    at = lambda attack, seed=0: evaluation.correct_under_attack(  # noqa: E731
        trained_plain, x, y, attack, seed=seed)
    clean = at(None)
    fgsm = {e: at(policies.FGSM(e, **CLIP)) for e in (0.05, 0.1)}
    # The checks ran PGD-5 and PGD-20 at the middle radius (0.1 of [0.05, 0.1]), seed 0.
    pgd = at(policies.PGD(0.1, steps=5, **CLIP)) & at(policies.PGD(0.1, steps=20, **CLIP))
    if cascade:  # robust at 0.1 needs robust at 0.05
        expected = clean & fgsm[0.05] & fgsm[0.1] & pgd
    else:
        expected = clean & fgsm[0.1] & pgd
    assert (clean & fgsm[0.1]).mean() >= expected.mean() + 0.03  # PGD breaks what FGSM left
    assert report.robust_accuracy[0.1] == pytest.approx(expected.mean())
    assert report.robust_accuracy[0.05] == pytest.approx((clean & fgsm[0.05]).mean())
    if cascade:
        assert report.accuracy[evaluation.CHECK_ATTACKS][0.1] == report.robust_accuracy[0.1]


def test_restarts_run_every_attack_with_further_seeds(trained_plain, digits):
    _, (x, y) = digits
    x, y = x[:100], y[:100]
    attack = policies.PGD(0.1, steps=3, **CLIP)
    report = kb.evaluate_robustness(trained_plain, (x, y), [0.1], attacks={"PGD-3": attack},
                                    restarts=3, checks=False, verbose=0, **CLIP)
    runs = [evaluation.correct_under_attack(trained_plain, x, y, attack, seed=s) for s in range(3)]
    assert report.robust_accuracy[0.1] == pytest.approx(np.mean(runs[0] & runs[1] & runs[2]))
    assert report.restarts == 3 and report.summary()["restarts"] == 3
    assert "3 restarts" in report.summary_line()
    with pytest.raises(ValueError, match="restarts must be an integer >= 1"):
        kb.evaluate_robustness(trained_plain, (x, y), [0.1], restarts=0, verbose=0)
