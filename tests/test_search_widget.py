"""SearchExplorer without a browser: set the query and k, check the grid shows Collection.search's
results."""

import html

import pytest
from PIL import Image

from workbench.collection import Collection, build
from workbench.demo import shapes
from workbench.widgets import SearchExplorer


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_widget")
    (root / "images").mkdir()
    for i, s in enumerate(shapes.generate("test", 30)):
        Image.fromarray(s.image).save(root / "images" / f"{i:04d}.png")
    build(root / "images", root / "out", model="demo", shard_size=12, progress=False)
    return Collection.open(root / "out")


def _shown(explorer, expected) -> None:
    """The explorer holds and displays exactly the expected results."""
    assert [(h["key"], h["score"]) for h in explorer.results] == [
        (h["key"], h["score"]) for h in expected
    ]
    grid = explorer.grid.value
    assert grid.count("<figure") == len(expected)
    positions = [grid.index(f"{h['rank']}. {h['score']:.3f}<br>{html.escape(h['key'])}")
                 for h in expected]  # fmt: skip
    assert positions == sorted(positions)  # best first


def test_search_explorer_shows_collection_search(collection):
    explorer = SearchExplorer(collection, "a red circle", k=5)
    _shown(explorer, collection.search("a red circle", k=5))
    assert explorer.error is None and "5 of 30 items" in explorer.summary.value
    assert "application/vnd.jupyter.widget-view+json" in explorer._repr_mimebundle_()
    explorer.box.value = "a blue star"
    _shown(explorer, collection.search("a blue star", k=5))
    explorer.k.value = 9
    _shown(explorer, collection.search("a blue star", k=9))
    image = str(collection.path.parent / "images" / "0004.png")
    explorer.box.value = image
    _shown(explorer, collection.search(image, k=9))
    assert explorer.results[0]["key"] == "0004.png"


def test_search_explorer_reports_bad_queries(collection):
    explorer = SearchExplorer(collection.path)  # a folder is opened as a collection
    assert explorer.results is None and explorer.grid.value == ""
    explorer.box.value = "a " + "very " * 80 + "long text"
    assert "too long" in explorer.error and "too long" in explorer.message.value
    assert explorer.results is None and explorer.grid.value == ""
    explorer.box.value = "a green square"
    assert explorer.error is None and explorer.message.value == ""
    _shown(explorer, collection.search("a green square", k=8))
    with pytest.raises(ValueError, match="not a collection"):
        SearchExplorer(collection.path.parent / "images")
