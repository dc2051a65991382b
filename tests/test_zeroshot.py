"""workbench.zeroshot: OpenAI's prompt ensembling, predictions, template ranking and selection."""

import numpy as np
import pytest

import clip
from workbench import data, prompts
from workbench.features import image_features
from workbench.zeroshot import (
    ZeroShotClassifier,
    class_weights,
    forward_select_templates,
    template_accuracies,
    top_k_accuracy,
)

TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "{}"]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _encode(model, texts):
    return _unit(model.encode_text(clip.tokenize(texts)).asnumpy().astype(np.float64))


def test_class_weights_are_openais_ensemble(tiny_clip):
    model, _ = tiny_clip
    classifier = ZeroShotClassifier(model, ["cat", "dog", "red star"], TEMPLATES).fit()
    expected = np.stack([_unit(_encode(model, [t.format(c) for t in TEMPLATES]).mean(axis=0))
                         for c in ["cat", "dog", "red star"]])  # fmt: skip
    assert classifier.weights_.shape == (3, expected.shape[1])
    np.testing.assert_allclose(classifier.weights_, expected, atol=1e-6)
    star = _encode(model, ["a drawing of a red star."])[0]
    np.testing.assert_allclose(classifier.text_embeddings_[1, 2], star, atol=1e-6)
    synonyms = ZeroShotClassifier(model, [["happy", "smiling"], "sad"], TEMPLATES[:2]).fit()
    happy = [t.format(s) for t in TEMPLATES[:2] for s in ("happy", "smiling")]
    np.testing.assert_allclose(synonyms.weights_[0], _unit(_encode(model, happy).mean(axis=0)),
                               atol=1e-6)  # fmt: skip


def test_predictions_are_scaled_cosine_similarities(tiny_clip):
    model, preprocess = tiny_clip
    classifier = ZeroShotClassifier(model, ["cat", "dog", "red star"], TEMPLATES, preprocess).fit()
    x = np.random.default_rng(0).normal(size=(6, classifier.weights_.shape[1])).astype(np.float32)
    scale = np.exp(float(model.logit_scale.asnumpy()))
    logits = scale * _unit(x.astype(np.float64)) @ classifier.weights_.T
    np.testing.assert_allclose(classifier.decision_function(x), logits, rtol=1e-5)
    proba = classifier.predict_proba(x)
    np.testing.assert_allclose(proba, np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                               rtol=1e-5)  # fmt: skip
    np.testing.assert_array_equal(classifier.predict(x), logits.argmax(1))
    y = logits.argmax(1)
    assert classifier.score(x, y) == 1.0 and classifier.score(x, (y + 1) % 3) == 0.0
    assert classifier.score(x, (y + 1) % 3, k=3) == 1.0
    images = data.shapes("test", 4)
    direct = classifier.predict_proba(image_features(model, preprocess, images, progress=False))
    np.testing.assert_allclose(classifier.predict_proba(images), direct, atol=1e-6)


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
    classifier = ZeroShotClassifier(model, ["a", "b"], ["{}", "x {}", "y {}"]).fit()
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


def test_seed_zero_shot_flow_on_cifar100_format_data(tiny_clip, cifar_shapes):
    model, preprocess = tiny_clip
    test = data.cifar100(cifar_shapes[0], "test")[:40]
    classifier = ZeroShotClassifier(model, test.classes, prompts.templates("CIFAR100")[:3],
                                    preprocess).fit()  # fmt: skip
    x = image_features(model, preprocess, test, normalize=True, progress=False)
    predicted = classifier.predict(x)
    assert predicted.shape == (40,) and set(predicted) <= set(range(30))
    assert classifier.score(x, test.labels) == np.mean(predicted == test.labels)
    assert classifier.score(test, test.labels, k=5) >= classifier.score(x, test.labels)


def test_bad_use_is_named(tiny_clip):
    model, _ = tiny_clip
    with pytest.raises(ValueError, match=r"exactly one '\{\}'"):
        ZeroShotClassifier(model, ["a"], ["a photo"]).fit()
    with pytest.raises(TypeError, match="lists of strings, not one string"):
        ZeroShotClassifier(model, ["a"], "a photo of a {}.").fit()
    with pytest.raises(ValueError, match="non-empty strings"):
        ZeroShotClassifier(model, ["a", ""]).fit()
    with pytest.raises(RuntimeError, match="not fitted"):
        ZeroShotClassifier(model, ["a"]).predict(np.zeros((1, 32), np.float32))
    classifier = ZeroShotClassifier(model, ["a", "b"]).fit()
    with pytest.raises(ValueError, match="width 5; this model's is 32"):
        classifier.predict(np.zeros((1, 5), np.float32))
    with pytest.raises(ValueError, match="pass preprocess="):
        classifier.predict(data.shapes("test", 1))
