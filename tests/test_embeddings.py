"""workbench.embeddings: projections, the modality gap against hand computations, the plots."""

import sys
import types
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.offsetbox import AnnotationBbox

import clip
from workbench import embeddings
from workbench.demo import shapes
from workbench.features import image_features, text_features
from workbench.figures import OKABE_ITO

matplotlib.use("Agg")
DEMO = Path(__file__).resolve().parents[1] / "clip" / "weights" / "demo.ckpt"


def _clusters(n: int = 30, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = rng.normal(0, 1, (3, d))
    return centres[labels] + rng.normal(0, 0.1, (n, d)), labels


def test_modality_gap_is_the_distance_between_normalised_centroids():
    d = 8
    image = np.zeros((5, d))
    image[:, 0] = [1, 2, 3, 4, 5]  # all along e0 once normalised
    text = np.zeros((3, d))
    text[:, 1] = [0.5, 7, 9]  # all along e1
    assert embeddings.modality_gap(image, text) == pytest.approx(np.sqrt(2))
    rng = np.random.default_rng(0)
    image, text = rng.normal(1, 1, (20, d)), rng.normal(-1, 1, (12, d))
    unit_image = image / np.sqrt((image**2).sum(1, keepdims=True))
    unit_text = text / np.sqrt((text**2).sum(1, keepdims=True))
    centroid_gap = unit_image.mean(0) - unit_text.mean(0)
    assert embeddings.modality_gap(image, text) == pytest.approx(
        np.sqrt(centroid_gap @ centroid_gap)
    )
    assert embeddings.modality_gap(image, image * 3) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="width"):
        embeddings.modality_gap(image, text[:, :4])


def test_pca_keeps_distances_of_points_on_a_great_circle():
    angles = np.linspace(0, 2, 12)
    rotation = np.linalg.qr(np.random.default_rng(1).normal(size=(10, 10)))[0]
    features = np.stack([np.cos(angles), np.sin(angles)], 1) @ rotation[:2] * 5  # norm 5
    points = embeddings.project(features, "pca")
    unit = features / 5
    original = np.linalg.norm(unit[:, None] - unit[None], axis=-1)
    np.testing.assert_allclose(np.linalg.norm(points[:, None] - points[None], axis=-1), original,
                               atol=1e-9)  # fmt: skip


def test_tsne_separates_clusters_and_umap_is_optional(monkeypatch):
    features, labels = _clusters()
    points = embeddings.project(features, "tsne")
    assert points.shape == (30, 2)
    centroids = np.stack([points[labels == c].mean(0) for c in range(3)])
    spread = max(np.linalg.norm(points[labels == c] - centroids[c], axis=1).max() for c in range(3))
    gaps = [np.linalg.norm(centroids[a] - centroids[b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert min(gaps) > spread
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(ImportError, match="pip install umap-learn"):
        embeddings.project(features, "umap")
    fitted = []

    class UMAP:  # stands in for umap-learn's
        def __init__(self, n_components, random_state):
            fitted.append((n_components, random_state))

        def fit_transform(self, x):
            return x[:, :2]

    monkeypatch.setitem(sys.modules, "umap", types.SimpleNamespace(UMAP=UMAP))
    assert embeddings.project(features, "umap", seed=3).shape == (30, 2)
    assert fitted == [(2, 3)]
    with pytest.raises(ValueError, match="pca"):
        embeddings.project(features, "mds")


def test_projection_plot_has_labels_stars_and_thumbnails():
    features, labels = _clusters(12)
    texts = np.random.default_rng(2).normal(size=(3, 16))
    images = [np.full((8, 8, 3), 40 * i, np.uint8) for i in range(12)]
    ax = embeddings.plot_projection(features, labels, ["circle", "square", "star"], texts, "pca",
                                    images=images).axes[0]  # fmt: skip
    assert ax.get_xlabel().startswith("PC 1") and ax.get_ylabel().startswith("PC 2")
    assert "PCA of image and text embeddings" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["circle", "square", "star"]
    assert sum(isinstance(a, AnnotationBbox) for a in ax.artists) == 12
    assert [t.get_text() for t in ax.texts] == ['"circle"', '"square"', '"star"']
    points = embeddings.project(np.concatenate([features, texts]), "pca")
    ax = embeddings.plot_projection(features, labels, None, texts, "tsne", points=points).axes[0]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), points[:12][labels == 0])
    assert ax.get_xlabel() == "t-SNE 1 (arbitrary units)"
    with pytest.raises(ValueError, match="one text embedding per class"):
        embeddings.plot_projection(features, labels, ["a", "b"], texts)


def test_projection_draws_colour_named_classes_in_their_colour():
    features, labels = _clusters(12)
    ax = embeddings.plot_projection(features, labels, ["red", "circle", "cyan"]).axes[0]
    dots = [to_hex(c.get_facecolor()[0]) for c in ax.collections]
    assert dots[0] == to_hex("red") and dots[2] == to_hex("cyan")
    assert dots[1] == to_hex(OKABE_ITO[1])


def test_modality_gap_plot_joins_pairs():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(10, 8)) + 2
    text = rng.normal(size=(10, 8)) - 2
    ax = embeddings.plot_modality_gap(image, text).axes[0]
    assert len(ax.lines) == 10
    assert f"{embeddings.modality_gap(image, text):.3f}" in ax.get_title()
    assert ax.get_xlabel().startswith("PC 1")
    with pytest.raises(ValueError, match="equal shapes"):
        embeddings.plot_modality_gap(image, text[:5])


def test_similarity_plot_writes_each_cosine_in_its_cell():
    rng = np.random.default_rng(4)
    image, text = rng.normal(size=(3, 8)), rng.normal(size=(2, 8))
    images = [np.zeros((8, 8, 3), np.uint8)] * 3
    ax = embeddings.plot_similarity(image, text, images, ["a cat", "a dog"]).axes[0]
    cosine = (text / np.linalg.norm(text, axis=1, keepdims=True)) @ (
        image / np.linalg.norm(image, axis=1, keepdims=True)
    ).T
    assert [t.get_text() for t in ax.texts] == [f"{cosine[y, x]:.2f}" for x in range(3)
                                                for y in range(2)]  # fmt: skip
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a cat", "a dog"]
    assert ax.figure.axes[1].get_ylabel() == "cosine similarity"
    assert ax.get_title() == "Cosine similarity between text and image features"
    assert len(ax.get_images()) == 4  # the matrix and three thumbnails
    with pytest.raises(ValueError, match="2 captions and 3 images"):
        embeddings.plot_similarity(image, text, images[:2], ["a cat", "a dog"])


def test_modality_gap_of_a_model(tiny_clip):
    model, preprocess = tiny_clip
    samples = shapes.generate("test", 20, 0, objects=1)
    image = image_features(model, preprocess, [s.image for s in samples], progress=False)
    text = text_features(model, [s.caption for s in samples], progress=False)
    gap = embeddings.modality_gap(image, text)
    assert 0 < gap < 2


def test_modality_gap_of_the_demo_model():
    model, preprocess = clip.load(str(DEMO))
    samples = shapes.generate("test", 200, 0)
    image = image_features(model, preprocess, [s.image for s in samples], progress=False)
    text = text_features(model, [s.caption for s in samples], progress=False)
    assert 0.1 < embeddings.modality_gap(image, text) < 1.5
