"""workbench.retrieval: top-k by cosine similarity, text to image and image to image."""

import numpy as np
import pytest

import clip
from workbench import data
from workbench.features import image_features
from workbench.retrieval import image_to_image, search, text_to_image

ANGLES = np.radians([0, 50, 95, 180, 10])
GALLERY = np.stack([np.cos(ANGLES), np.sin(ANGLES)], 1) * [[1], [2], [0.5], [3], [1]]


def test_search_ranks_by_cosine():
    below = [np.cos(np.radians(-60)), np.sin(np.radians(-60))]
    indices, scores = search(np.array([[2.0, 0.0], below]), GALLERY, k=3)
    np.testing.assert_array_equal(indices, [[0, 4, 1], [0, 4, 1]])
    np.testing.assert_allclose(scores[0], np.cos(np.radians([0, 10, 50])), rtol=1e-6)
    np.testing.assert_allclose(scores[1], np.cos(np.radians([60, 70, 110])), rtol=1e-6)
    one, top = search(np.array([-1.0, 0.1]), GALLERY, k=2)  # a single query: 1-D results
    np.testing.assert_array_equal(one, [3, 2])
    assert top.shape == (2,) and top[0] == pytest.approx(np.cos(np.arctan(0.1)), rel=1e-6)


def test_image_to_image_excludes_the_query_itself():
    gallery = np.concatenate([GALLERY, GALLERY[:1] * 5])  # item 5 points where item 0 does
    indices, scores = image_to_image(gallery, [0, 5], k=2)
    np.testing.assert_array_equal(indices, [[5, 4], [0, 4]])
    np.testing.assert_allclose(scores[:, 0], [1, 1], rtol=1e-6)
    by_features, _ = image_to_image(gallery, gallery[[0]], k=2)
    np.testing.assert_array_equal(by_features, [[0, 5]])  # features are not excluded


def test_text_to_image_uses_the_models_text_features(tiny_clip):
    model, preprocess = tiny_clip
    images = image_features(model, preprocess, data.shapes_dataset("test", 8), progress=False)
    texts = ["a red circle", "a blue star"]
    indices, scores = text_to_image(model, texts, images, k=8)
    text = model.encode_text(clip.tokenize(texts)).asnumpy()
    cosine = (text / np.linalg.norm(text, axis=1, keepdims=True)) @ (
        images / np.linalg.norm(images, axis=1, keepdims=True)).T  # fmt: skip
    np.testing.assert_array_equal(indices, np.argsort(-cosine, axis=1))
    np.testing.assert_allclose(scores, np.sort(cosine, axis=1)[:, ::-1], atol=1e-6)
    single, _ = text_to_image(model, "a red circle", images, k=3)
    np.testing.assert_array_equal(single, indices[0, :3])


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="k must be between 1 and 5"):
        search(GALLERY[:1], GALLERY, k=6)
    with pytest.raises(ValueError, match="k must be between 1 and 4"):
        image_to_image(GALLERY, [0], k=5)
    with pytest.raises(ValueError, match="of one width"):
        search(np.ones((1, 3)), GALLERY)
