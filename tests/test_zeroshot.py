"""workbench.zeroshot: OpenAI's prompt ensembling, predictions, template ranking and selection."""

import numpy as np
import pytest
from helpers import softmax
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.utils.validation import check_is_fitted

import clip
from workbench import data, prompts
from workbench.features import image_features, l2_normalize
from workbench.zeroshot import (
    ZeroShotClassifier,
    class_weights,
    embed_prompts,
    forward_select_templates,
    template_accuracies,
    top_k_accuracy,
)

TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "{}"]
CLASSES = ["cat", "dog", "red star"]


def _encode(model, texts):
    """Unit text embeddings in float64, straight from the model."""
    return l2_normalize(model.encode_text(clip.tokenize(texts)).asnumpy().astype(np.float64))


def _weights(model, classnames, templates):
    """OpenAI's ensemble written out: per class, the mean over templates of the mean over
    synonyms of unit prompt embeddings, normalised."""
    rows = []
    for c in classnames:
        names = [c] if isinstance(c, str) else c
        rows.append(np.mean([_encode(model, [t.format(s) for s in names]).mean(0)
                             for t in templates], axis=0))  # fmt: skip
    return l2_normalize(np.stack(rows))


@pytest.fixture(scope="module")
def shapes_features(tiny_clip):
    """Unit image features of 30 shapes test images, their labels and class names."""
    model, preprocess = tiny_clip
    images = data.shapes_dataset("test", 30)
    x = image_features(model, preprocess, images, normalize=True, progress=False)
    return x, images.labels, images.classes


def test_class_weights_are_openais_ensemble(tiny_clip):
    model, _ = tiny_clip
    classifier = ZeroShotClassifier(model, CLASSES, templates=TEMPLATES).fit()
    expected = np.stack([l2_normalize(_encode(model, [t.format(c) for t in TEMPLATES]).mean(axis=0))
                         for c in CLASSES])  # fmt: skip
    assert classifier.weights_.shape == (3, expected.shape[1])
    np.testing.assert_allclose(classifier.weights_, expected, atol=1e-6)
    star = _encode(model, ["a drawing of a red star."])[0]
    np.testing.assert_allclose(classifier.text_embeddings_[1, 2], star, atol=1e-6)
    synonyms = ZeroShotClassifier(model, [["happy", "smiling"], "sad"], templates=TEMPLATES[:2])
    happy = [t.format(s) for t in TEMPLATES[:2] for s in ("happy", "smiling")]
    expected = l2_normalize(_encode(model, happy).mean(axis=0))
    np.testing.assert_allclose(synonyms.fit().weights_[0], expected, atol=1e-6)


def test_embed_prompts_averages_synonyms_per_template():
    rng = np.random.default_rng(0)
    prompts_ = [f"{t} {s}" for t in ("a", "b") for s in ("x", "y", "z")]
    vectors = dict(zip(prompts_, rng.normal(size=(6, 4)) * rng.uniform(1, 5, (6, 1)), strict=True))
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return np.stack([vectors[t] for t in texts])

    embedded = embed_prompts(encode, [["x", "y"], "z"], ["a {}", "b {}"])
    unit = {p: v / np.sqrt((v**2).sum()) for p, v in vectors.items()}
    assert embedded.shape == (2, 2, 4) and len(calls) == 1
    assert sorted(calls[0]) == sorted(prompts_)
    np.testing.assert_allclose(embedded[0, 0], (unit["a x"] + unit["a y"]) / 2)
    np.testing.assert_allclose(embedded[1, 1], unit["b z"])
    with pytest.raises(ValueError, match="at least one class name"):
        embed_prompts(encode, [], ["a {}"])
    with pytest.raises(ValueError, match="at least one template"):
        embed_prompts(encode, ["x"], [])


def test_predictions_are_scaled_cosine_similarities(tiny_clip):
    model, preprocess = tiny_clip
    classifier = ZeroShotClassifier(model, CLASSES, templates=TEMPLATES, preprocess=preprocess)
    classifier.fit()
    x = np.random.default_rng(0).normal(size=(6, classifier.weights_.shape[1])).astype(np.float32)
    scale = np.exp(float(model.logit_scale.asnumpy()))
    logits = scale * l2_normalize(x.astype(np.float64)) @ _weights(model, CLASSES, TEMPLATES).T
    np.testing.assert_allclose(classifier.decision_function(x), logits, rtol=1e-5)
    np.testing.assert_allclose(classifier.predict_proba(x), softmax(logits), rtol=1e-5)
    ranked = np.argsort(-logits, axis=1)
    np.testing.assert_array_equal(classifier.predict(x), ranked[:, 0])
    assert classifier.score(x, ranked[:, 0]) == 1.0 and classifier.score(x, ranked[:, 1]) == 0.0
    assert classifier.score(x, ranked[:, 1], k=2) == 1.0
    assert classifier.score(x, ranked[:, 2], k=2) == 0.0
    images = data.shapes_dataset("test", 4)
    direct = classifier.predict_proba(image_features(model, preprocess, images, progress=False))
    np.testing.assert_allclose(classifier.predict_proba(images), direct, atol=1e-6)


def test_labels_are_what_predict_returns_and_score_reads(tiny_clip):
    model, _ = tiny_clip
    labels = np.array(["c", "d", "s"])
    classifier = ZeroShotClassifier(model, CLASSES, templates=TEMPLATES, labels=labels).fit()
    np.testing.assert_array_equal(classifier.classes_, labels)
    x = np.random.default_rng(1).normal(size=(8, classifier.weights_.shape[1])).astype(np.float32)
    ranked = np.argsort(-(x @ _weights(model, CLASSES, TEMPLATES).T), axis=1)
    np.testing.assert_array_equal(classifier.predict(x), labels[ranked[:, 0]])
    assert classifier.score(x, labels[ranked[:, 0]]) == 1.0
    assert classifier.score(x, list(labels[ranked[:, 1]])) == 0.0
    assert classifier.score(x, labels[ranked[:, 1]], k=2) == 1.0
    with pytest.raises(ValueError, match=r"not among the classifier's classes_: \['q', 'x'\]"):
        ZeroShotClassifier(model, CLASSES, labels=labels).fit(x[:3], ["c", "x", "q"])
    with pytest.raises(ValueError, match=r"classes_: \[2\]"):
        classifier.score(x[:2], [2, 2])
    with pytest.raises(ValueError, match="3 distinct labels"):
        ZeroShotClassifier(model, CLASSES, labels=["c", "c", "s"]).fit()
    with pytest.raises(ValueError, match="3 distinct labels"):
        ZeroShotClassifier(model, CLASSES, labels=["c", "d"]).fit()


def test_a_scikit_learn_estimator_whose_clones_share_the_model(tiny_clip, shapes_features):
    model, preprocess = tiny_clip
    x = shapes_features[0]
    classifier = ZeroShotClassifier(model, CLASSES, templates=TEMPLATES, preprocess=preprocess)
    with pytest.raises(TypeError):
        ZeroShotClassifier(model, CLASSES, TEMPLATES)  # options are keyword-only
    for method in (classifier.predict, classifier.decision_function, classifier.image_features):
        with pytest.raises(NotFittedError):
            method(x)
    copy = clone(classifier)
    assert copy.model is model and copy.preprocess is not preprocess
    assert copy.classnames == CLASSES and copy.classnames is not classifier.classnames
    assert copy.get_params().keys() == classifier.get_params().keys()
    classifier.fit()
    with pytest.raises(NotFittedError):
        check_is_fitted(clone(classifier))
    np.testing.assert_array_equal(clone(classifier).fit().predict(x), classifier.predict(x))
    expected = (x @ _weights(model, CLASSES, TEMPLATES).T).argmax(1)
    np.testing.assert_array_equal(copy.fit().predict(x), expected)


def test_grid_search_over_templates(tiny_clip):
    model, _ = tiny_clip
    classes, rng = ["circle", "square", "triangle"], np.random.default_rng(0)
    candidates = [["a photo of a {}."], ["a drawing of a {}."], ["a photo of a {}.", "{}"]]
    weights = [_weights(model, classes, t) for t in candidates]
    # image features near the drawing prompts' class weights: that template should win
    y_index = np.arange(60) % 3
    x = (weights[1][y_index] + rng.normal(0, 0.1, (60, weights[1].shape[1]))).astype(np.float32)
    y = np.array(classes)[y_index]  # string labels, mapped to classes through labels=
    search = GridSearchCV(ZeroShotClassifier(model, classes, labels=classes),
                          {"templates": candidates}, cv=StratifiedKFold(3)).fit(x, y)  # fmt: skip
    folds = [test for _, test in StratifiedKFold(3).split(x, y)]
    unit = l2_normalize(x.astype(np.float64))
    expected = [np.mean([np.mean((unit[f] @ w.T).argmax(1) == y_index[f]) for f in folds])
                for w in weights]  # fmt: skip
    assert len(set(expected)) == 3, expected  # the search has something to choose
    np.testing.assert_allclose(search.cv_results_["mean_test_score"], expected)
    best = int(np.argmax(expected))
    assert search.best_params_ == {"templates": candidates[best]}
    assert search.best_estimator_.model is model
    np.testing.assert_array_equal(search.predict(x), np.array(classes)[(unit @ weights[best].T)
                                                                       .argmax(1)])  # fmt: skip


def test_top_k_accuracy_by_hand():
    scores = np.array([[0.1, 0.5, 0.4], [0.3, 0.2, 0.5], [0.7, 0.2, 0.1]])
    assert top_k_accuracy(scores, [2, 0, 0], k=1) == pytest.approx(1 / 3)
    assert top_k_accuracy(scores, [2, 0, 0], k=2) == 1.0
    with pytest.raises(ValueError, match="k must be between 1 and the class count 3"):
        top_k_accuracy(scores, [2, 0, 0], k=5)


def _designed(tiny_clip):
    """A classifier whose 3 templates x 2 classes embed at chosen angles in a plane, and 4 labelled
    image features: template 0 alone gets 3/4, template 1 alone 3/4, both together 4/4, 2 1/4."""
    model, _ = tiny_clip
    classifier = ZeroShotClassifier(model, ["a", "b"], templates=["{}", "x {}", "y {}"]).fit()
    width = classifier.weights_.shape[1]

    def at(degrees):
        v = np.zeros(width)
        v[:2] = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        return v

    classifier.text_embeddings_ = np.array([[at(0), at(90)], [at(0), at(30)], [at(90), at(0)]])
    return classifier, np.stack([at(a) for a in (10, 20, 40, 80)]).astype(np.float32), [0, 0, 1, 1]


def test_template_accuracies(tiny_clip):
    classifier, x, y = _designed(tiny_clip)
    assert template_accuracies(classifier, x, y) == {"{}": 0.75, "x {}": 0.75, "y {}": 0.25}
    assert template_accuracies(classifier, x, y, k=2) == {"{}": 1.0, "x {}": 1.0, "y {}": 1.0}


def test_forward_selection_adds_while_accuracy_rises(tiny_clip):
    classifier, x, y = _designed(tiny_clip)
    # both first-step candidates score 0.75: the earlier wins; then "x {}" lifts it to 1.0 and
    # adding "y {}" too leaves it at 1.0, so selection stops
    assert forward_select_templates(classifier, x, y) == [("{}", 0.75), ("x {}", 1.0)]
    assert forward_select_templates(classifier, x, y, max_templates=1) == [("{}", 0.75)]
    np.testing.assert_allclose(class_weights(classifier.text_embeddings_, [0, 1])[1, :2],
                               [np.cos(np.radians(60)), np.sin(np.radians(60))])  # fmt: skip


def test_template_evaluation_leaves_an_unfitted_classifier_unfitted(tiny_clip, shapes_features):
    model, _ = tiny_clip
    x, y, names = shapes_features
    unfitted = ZeroShotClassifier(model, names, templates=TEMPLATES)
    expected = {t: np.mean((x @ _weights(model, names, [t]).T).argmax(1) == y) for t in TEMPLATES}
    assert template_accuracies(unfitted, x, y) == pytest.approx(expected)
    path = forward_select_templates(unfitted, x, y, max_templates=1)
    assert path == [(max(TEMPLATES, key=expected.get), pytest.approx(max(expected.values())))]
    with pytest.raises(NotFittedError):
        check_is_fitted(unfitted)


def test_seed_zero_shot_flow_on_cifar100_format_data(tiny_clip, cifar_shapes):
    model, preprocess = tiny_clip
    test = data.cifar100(cifar_shapes[0], "test")[:40]
    templates = prompts.templates("CIFAR100")[:3]
    classifier = ZeroShotClassifier(model, test.classes, templates=templates,
                                    preprocess=preprocess).fit()  # fmt: skip
    x = image_features(model, preprocess, test, normalize=True, progress=False)
    ranked = np.argsort(-(x @ _weights(model, test.classes, templates).T), axis=1)
    np.testing.assert_array_equal(classifier.predict(x), ranked[:, 0])
    assert classifier.score(x, test.labels) == pytest.approx(np.mean(ranked[:, 0] == test.labels))
    top5 = np.mean([label in row[:5] for label, row in zip(test.labels, ranked, strict=True)])
    assert classifier.score(test, test.labels, k=5) == pytest.approx(top5)


def test_bad_use_is_named(tiny_clip):
    model, _ = tiny_clip
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        ZeroShotClassifier(model, ["a"], templates=["a photo"]).fit()
    with pytest.raises(TypeError, match="lists of strings, not one string"):
        ZeroShotClassifier(model, ["a"], templates="a photo of a {}.").fit()
    with pytest.raises(ValueError, match="non-empty strings"):
        ZeroShotClassifier(model, ["a", ""]).fit()
    with pytest.raises(NotFittedError):
        ZeroShotClassifier(model, ["a"]).predict(np.zeros((1, 32), np.float32))
    classifier = ZeroShotClassifier(model, ["a", "b"]).fit()
    with pytest.raises(ValueError, match="width 5; this model's is 32"):
        classifier.predict(np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="pass preprocess="):
        classifier.predict(data.shapes_dataset("test", 1))


def test_top_k_result_shows_the_most_probable_classes(tiny_clip):
    model, preprocess = tiny_clip
    names = ["cat", ["dog", "puppy"], "red star", "<b>bold</b>"]
    classifier = ZeroShotClassifier(model, names, templates=TEMPLATES, labels=list("abcd")).fit()
    x = np.random.default_rng(1).normal(size=(12, classifier.weights_.shape[1])).astype(np.float32)
    proba = classifier.predict_proba(x)
    result = classifier.top_k(x, k=3)
    order = np.argsort(-proba, axis=1)[:, :3]  # an independent ranking
    np.testing.assert_array_equal(result.columns, order)
    np.testing.assert_allclose(result.probabilities, np.sort(proba, axis=1)[:, ::-1][:, :3])
    np.testing.assert_array_equal(result.labels[:, 0], classifier.predict(x))
    shown = ["cat", "dog / puppy", "red star", "<b>bold</b>"]
    text, page = repr(result), result._repr_html_()
    assert text.startswith("Zero-shot top 3 of 4 classes, 12 images")
    for i in range(10):
        ranked = zip(order[i], proba[i, order[i]], strict=True)
        row = ", ".join(f"{shown[c]} {100 * p:.1f}%" for c, p in ranked)
        assert f"image {i}: {row}" in text
        assert all(f"{100 * p:.1f}%" in page for p in proba[i, order[i]])
    assert "image 10:" not in text and "... 2 more images" in text
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    one = classifier.top_k(x[:1], k=4)
    lines = repr(one).splitlines()
    assert lines[0] == "Zero-shot top 4 of 4 classes, 1 image"
    for line, c in zip(lines[2:], order[0].tolist() + [int(np.argmin(proba[0]))], strict=True):
        assert line.split()[1] == shown[c].split()[0]
        assert line.endswith(f"{100 * proba[0, c]:.2f}%")
    bars = one.plot().axes[0].patches
    np.testing.assert_allclose([b.get_width() for b in bars], 100 * np.sort(proba[0])[::-1])
    with pytest.raises(ValueError, match="k must be between 1 and the class count 4"):
        classifier.top_k(x, k=5)
