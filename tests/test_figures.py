"""Every workbench figure function: returns its Figure, draws one panel into a given ax without
making a figure, labels it, and uses colour-blind-safe colours by default."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 (after the backend is chosen)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from workbench import embeddings, figures, saliency  # noqa: E402
from workbench.zeroshot import ZeroShotResult  # noqa: E402

RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (32, 32, 3), np.uint8)
FEATURES = RNG.normal(size=(12, 8))
TEXTS = RNG.normal(size=(3, 8))
RESULT = ZeroShotResult(np.array([[0.7, 0.2, 0.1]]), np.array([[2, 0, 1]]),
                        np.array([[2, 0, 1]]), ["cat", "dog", "red star"])  # fmt: skip

FIGURES = {
    "plot_projection": lambda ax: embeddings.plot_projection(
        FEATURES, np.arange(12) % 3, ["a", "b", "c"], TEXTS, ax=ax
    ),
    "plot_modality_gap": lambda ax: embeddings.plot_modality_gap(FEATURES, FEATURES + 1, ax=ax),
    "plot_similarity": lambda ax: embeddings.plot_similarity(
        FEATURES[:3], TEXTS[:2], [IMAGE] * 3, ["a cat", "a dog"], ax=ax
    ),
    "overlay": lambda ax: saliency.overlay(IMAGE, RNG.random((32, 32)), ax),
    "plot_text_relevance": lambda ax: saliency.plot_text_relevance(
        ["a", "red", "star"], [0.1, 0.6, 0.3], ax
    ),
    "ZeroShotResult.plot": lambda ax: RESULT.plot(ax=ax),
}


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


@pytest.mark.parametrize("name", FIGURES)
def test_draws_into_the_given_axes_and_returns_its_figure(name):
    figure = Figure()
    ax = figure.add_subplot()
    before = plt.get_fignums()
    returned = FIGURES[name](ax)
    assert plt.get_fignums() == before  # no figure of its own
    assert isinstance(returned, Figure) and returned is ax.figure
    assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()


@pytest.mark.parametrize("name", FIGURES)
def test_without_axes_makes_one_figure(name):
    before = len(plt.get_fignums())
    returned = FIGURES[name](None)
    assert isinstance(returned, Figure) and len(plt.get_fignums()) == before + 1
    assert returned.axes[0].get_title()


def test_a_panel_of_a_subfigure_returns_the_whole_figure():
    figure = plt.figure()
    left, right = figure.subfigures(1, 2)
    returned = saliency.overlay(IMAGE, RNG.random((32, 32)), left.add_subplot())
    assert returned is figure
    assert embeddings.plot_modality_gap(FEATURES, FEATURES + 1, ax=right.add_subplot()) is figure


def test_default_colours_are_colour_blind_safe():
    overlay = saliency.overlay(IMAGE, RNG.random((32, 32))).axes[0]
    assert overlay.get_images()[1].get_cmap().name == "inferno"
    similarity = FIGURES["plot_similarity"](None).axes[0]
    assert similarity.get_images()[0].get_cmap().name == "viridis"
    projection = FIGURES["plot_projection"](None).axes[0]
    dots = [to_hex(c.get_facecolor()[0]) for c in projection.collections[:3]]
    assert dots == [to_hex(c) for c in figures.OKABE_ITO[:3]]
    gap = FIGURES["plot_modality_gap"](None).axes[0]
    assert {to_hex(c.get_facecolor()[0]) for c in gap.collections} <= {
        to_hex(c) for c in figures.OKABE_ITO
    }
    assert (
        saliency.overlay(IMAGE, RNG.random((32, 32)), cmap="cividis")
        .axes[0]
        .get_images()[1]
        .get_cmap()
        .name
        == "cividis"
    )


def test_classes_beyond_the_palette_change_marker():
    assert len(set(figures.OKABE_ITO)) == 8
    pairs = {(figures.colour(i), figures.marker(i)) for i in range(len(figures.OKABE_ITO) * 3)}
    assert len(pairs) == 24  # every class its own colour and marker pair
    labels = np.arange(12) % 10
    ax = embeddings.plot_projection(FEATURES, labels, [f"class {i}" for i in range(10)]).axes[0]
    first, ninth = ax.collections[0], ax.collections[8]
    assert to_hex(first.get_facecolor()[0]) == to_hex(ninth.get_facecolor()[0])
    assert not np.array_equal(first.get_paths()[0].vertices, ninth.get_paths()[0].vertices)


def test_text_relevance_bars_are_the_scores():
    ax = saliency.plot_text_relevance(["a", "red", "star"], [0.1, 0.6, 0.3]).axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([0.1, 0.6, 0.3])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "red", "star"]
    with pytest.raises(ValueError, match="3 words but 2 scores"):
        saliency.plot_text_relevance(["a", "red", "star"], [0.1, 0.6])
