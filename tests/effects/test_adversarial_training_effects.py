"""Robustness effects on real data (UCI digits), with tiny budgets."""

import numpy as np

import keras_bidir as kb
from keras_bidir import evaluation, policies
from keras_bidir_cli.demo import digits_cnn
from conftest import compile_classifier, tiny_cnn

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


def test_pgd_lowers_accuracy_at_least_as_much_as_fgsm(trained_plain, digits):
    _, (x_test, y_test) = digits
    clean = evaluation.robust_accuracy(trained_plain, x_test, y_test, None)
    fgsm = evaluation.robust_accuracy(trained_plain, x_test, y_test, policies.FGSM(0.1, **CLIP))
    pgd = evaluation.robust_accuracy(
        trained_plain, x_test, y_test, policies.PGD(0.1, steps=10, restarts=2, **CLIP)
    )
    assert clean > 0.9
    assert pgd <= fgsm < clean


def test_worst_case_over_restarts_is_per_example(trained_plain, digits):
    _, (x_test, y_test) = digits
    attack = policies.PGD(0.1, steps=5, restarts=3, **CLIP)
    worst = evaluation.correct_under_attack(trained_plain, x_test, y_test, attack, seed=1)
    single = evaluation.correct_under_attack(
        trained_plain, x_test, y_test, policies.PGD(0.1, steps=5, **CLIP), seed=1
    )
    # Same seed: the first restart is the single run, so worst ⊆ single.
    assert not (worst & ~single).any()


def test_pgd_training_raises_robust_accuracy_far_above_plain(trained_plain, digits):
    (x_train, y_train), (x_test, y_test) = digits
    model = kb.BidirectionalModel(digits_cnn(0), policies.PGD(0.2, steps=3, **CLIP), seed=0)
    compile_classifier(model)
    model.fit(x_train, y_train, batch_size=64, epochs=10, verbose=0)
    attack = policies.PGD(0.2, steps=20, restarts=2, **CLIP)
    robust_plain = evaluation.robust_accuracy(trained_plain, x_test, y_test, attack)
    robust_adv = evaluation.robust_accuracy(model, x_test, y_test, attack)
    clean_adv = evaluation.robust_accuracy(model, x_test, y_test, None)
    assert robust_plain < 0.15
    print(f"robust: plain {robust_plain:.3f}, PGD-trained {robust_adv:.3f}; clean {clean_adv:.3f}")
    assert robust_adv > robust_plain + 0.3
    assert clean_adv > 0.85


def test_evaluation_handles_probability_outputs_and_one_hot_labels(digits):
    (x_train, y_train), (x_test, y_test) = digits
    model = tiny_cnn(0, softmax=True)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=3, verbose=0)
    one_hot = np.eye(10)[y_test]
    clean_sparse = evaluation.robust_accuracy(model, x_test, y_test, None)
    clean_onehot = evaluation.robust_accuracy(model, x_test, one_hot, None)
    assert clean_sparse == clean_onehot > 0.5
    fgsm = evaluation.robust_accuracy(model, x_test, y_test, policies.FGSM(0.2, **CLIP))
    assert fgsm < clean_sparse
