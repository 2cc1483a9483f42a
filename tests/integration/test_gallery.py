"""Pictures of attacks: flipped examples from reports, TensorBoard images, moved tokens."""

import keras
import numpy as np
import pytest

import keras_bidir as kb
from keras_bidir import callbacks, gallery, policies
from keras_bidir.layers import PerturbationPoint
from conftest import compile_classifier, tiny_cnn

# The pictures run attacks through the same compiled runner as the evaluation (whose tests run
# on both backends) and draw NumPy arrays; PerturbationStats' attack during fit runs on both
# (test_callbacks.py), its TensorBoard images (NumPy through tf.summary) on the first only.

CLIP = {"clip_min": 0.0, "clip_max": 1.0}


def test_report_plots_flipped_examples_with_both_labels(trained_plain, digits, tmp_path):
    _, (x, y) = digits
    report = kb.evaluate_robustness(trained_plain, (x[:100], y[:100]), [0.05, 0.1],
                                    checks=False, verbose=0, **CLIP)
    flipped = report.flipped_examples(count=4)
    assert len(flipped) == 4 and flipped.epsilon == 0.1
    predict = lambda a: trained_plain.predict_on_batch(a).argmax(-1)  # noqa: E731
    np.testing.assert_array_equal(predict(flipped.clean), flipped.labels)
    np.testing.assert_array_equal(predict(flipped.clean), flipped.clean_predictions)
    np.testing.assert_array_equal(predict(flipped.adversarial), flipped.adversarial_predictions)
    assert np.all(flipped.adversarial_predictions != flipped.labels)
    assert np.abs(flipped.adversarial - flipped.clean).max() <= 0.1 + 1e-6
    assert flipped.adversarial.min() >= 0.0 and flipped.adversarial.max() <= 1.0
    # The flipped examples are ones the evaluation counted as broken at the largest ε.
    assert len(flipped) <= round((report.clean_accuracy - report.robust_accuracy[0.1]) * 100)
    figure = report.plot_examples(tmp_path / "flipped.png", count=3)
    titles = [axis.get_title() for axis in figure.axes]
    assert len(titles) == 9
    for row in range(3):
        assert f"label {flipped.labels[row]}" in titles[3 * row]
        assert f"predicted {flipped.adversarial_predictions[row]}" in titles[3 * row + 1]
        assert titles[3 * row + 2].startswith("perturbation")
    assert (tmp_path / "flipped.png").stat().st_size > 5000


def test_reports_without_examples_say_why(digits):
    (x, _), _ = digits
    regressor = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                  keras.layers.Dense(1)])
    regressor.compile(loss="mse")
    targets = x[:20].reshape(20, -1).mean(axis=1, keepdims=True)
    report = kb.evaluate_robustness(regressor, (x[:20], targets), [0.1], checks=False, verbose=0)
    with pytest.raises(ValueError, match="regression has no prediction to flip"):
        report.plot_examples()


def test_token_shifts_rank_tokens_by_how_far_their_embedding_moved():
    clean = np.zeros((2, 4, 3))
    moved = clean.copy()
    moved[0, 2] = [3.0, 4.0, 0.0]  # 5
    moved[0, 0] = [0.0, 1.0, 0.0]  # 1
    moved[1, 3] = [0.0, 0.0, 2.0]  # 2, but padded
    moved[1, 1] = [0.0, 0.0, 0.5]
    ids = np.array([[7, 8, 9, 10], [1, 2, 3, 0]])
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool)
    words = [f"w{i}" for i in range(11)]
    shifts = gallery.token_shifts(clean, moved, ids, top=2, vocabulary=words, mask=mask)
    assert shifts[0] == [(2, "w9", 5.0), (0, "w7", 1.0)]
    assert shifts[1][0] == (1, "w2", 0.5)
    assert "`w9` (position 2, moved 5)" in gallery.format_token_shifts(shifts)


def _events(log_dir):
    import tensorflow as tf

    found = {}
    for path in sorted(log_dir.rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append((event.step, value))
    return found


def test_perturbation_stats_draws_flipped_examples_to_tensorboard(digits, tmp_path):
    import tensorflow as tf

    (x, y), _ = digits
    model = compile_classifier(kb.BidirectionalModel(tiny_cnn(0), policies.PGD(0.3, steps=3, **CLIP)))
    stats = callbacks.PerturbationStats(x[:64], y[:64], log_dir=tmp_path, images_every=2, count=3,
                                        every=1)
    model.fit(x[:256], y[:256], epochs=4, verbose=0, callbacks=[stats])
    images = _events(tmp_path)["perturbation/flipped_examples"]
    assert [step for step, _ in images] == [2, 4]
    picture = tf.io.decode_png(images[-1][1].tensor.string_val[2]).numpy()
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.shape[2] == 4


def test_perturbation_stats_lists_the_tokens_that_moved_most(tmp_path):
    keras.utils.set_random_seed(0)
    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(12, 4)(tokens)
    h = PerturbationPoint(name="embeddings")(h)
    model = keras.Model(tokens, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(h)))
    bidir = compile_classifier(kb.BidirectionalModel(model, policies.PGD(0.5, steps=2, norm="l2")))
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 12, (32, 6)).astype("int32")
    labels = ids[:, 0] % 2
    words = [f"tok{i}" for i in range(12)]
    stats = callbacks.PerturbationStats(ids[:4], labels[:4], log_dir=tmp_path, vocabulary=words)
    bidir.fit(ids, labels, epochs=1, verbose=0, callbacks=[stats])
    (step, value), = _events(tmp_path)["perturbation/tokens_moved_most/embeddings"]
    text = value.tensor.string_val[0].decode()
    assert step == 1 and text.count("- example") == 4 and "`tok" in text


def test_pictures_default_to_the_training_radius_and_keep_every_line_visible(trained_plain,
                                                                             digits):
    # Before: the largest ε (nearly everything broken), and the attack lines hidden under the
    # worst-case line.
    _, (x, y) = digits
    model = kb.BidirectionalModel(trained_plain, policies.FGSM(0.05, **CLIP))
    compile_classifier(model)
    report = kb.evaluate_robustness(model, (x[:100], y[:100]), [0.02, 0.05, 0.3], checks=False,
                                    verbose=0, suite="fast", cascade=True)
    flipped = report.flipped_examples(count=2)
    assert flipped.epsilon == 0.05 and flipped.radius_note == "the training ε"
    figure = report.plot_examples(count=2)
    assert "ε=0.05 (the training ε)" in figure._suptitle.get_text()
    assert report.flipped_examples(count=2, epsilon=0.3).epsilon == 0.3
    with pytest.raises(ValueError, match="no radius 0.1"):
        report.flipped_examples(count=2, epsilon=0.1)
    lines = report.plot().axes[0].get_lines()
    worst = next(line for line in lines if line.get_label() == "worst case")
    attacks = [line for line in lines if line is not worst]
    assert [line.get_label() for line in attacks] == [f"after {n}" for n in report.accuracy]
    assert all(line.get_zorder() > worst.get_zorder() for line in attacks)
    # The cascade's last row coincides with the worst case and is drawn on top of it.
    np.testing.assert_allclose(attacks[-1].get_ydata(), worst.get_ydata())
    plain = kb.evaluate_robustness(trained_plain, (x[:100], y[:100]), [0.02, 0.05, 0.3],
                                   checks=False, verbose=0, suite="fast")
    assert plain.flipped_examples(count=1).radius_note == "the middle radius"


def test_tabular_examples_are_drawn_as_feature_bars():
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = ((data.data - data.data.min(0)) / np.ptp(data.data, 0)).astype("float32")
    y = data.target.astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True))
    model.fit(x, y, epochs=10, verbose=0)
    flipped = gallery.flipped_examples(model, x[:100], y[:100], policies.PGD(0.2, steps=10, **CLIP))
    assert len(flipped) > 0 and not gallery.is_picture(flipped.clean[0])
    figure = flipped.plot(count=1)
    for axis in figure.axes:  # bars of the 30 features, not a 1-pixel strip
        assert len(axis.patches) == 30 and not axis.images
    assert gallery.is_picture(np.zeros(64)) and gallery.is_picture(np.zeros((8, 8, 1)))
