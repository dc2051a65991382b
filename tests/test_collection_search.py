"""Collection.search end to end: a folder of generated images built by workbench.collection.build
with the demo model, searched by text, image and embedding, against brute-force numpy over the
files on disk; a grown source's new shards added to the index."""

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from mindspore import Tensor
from PIL import Image

import clip
from workbench.collection import Collection, build
from workbench.demo import shapes

QUERIES = ["a red circle", "a photo of a small blue square.", "a green triangle"]


@pytest.fixture(scope="module")
def demo():
    return clip.load("demo")


def _write_images(folder, start: int, count: int) -> None:
    folder.mkdir(exist_ok=True)
    for i, s in enumerate(shapes.generate("test", count, start=start), start):
        Image.fromarray(s.image).save(folder / f"{i:04d}.png")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A collection of 45 generated images and one empty file, in shards of 16."""
    root = tmp_path_factory.mktemp("collection")
    _write_images(root / "images", 0, 45)
    (root / "images" / "0045.png").write_bytes(b"")
    build(root / "images", root / "out", model="demo", shard_size=16, progress=False)
    return root


def on_disk(out):
    """Unit float64 embeddings, keys, paths and errors of every row, read with numpy and pyarrow."""
    embeddings = np.concatenate([np.load(p) for p in sorted((out / "img_emb").glob("*.npy"))])
    tables = [pq.read_table(p) for p in sorted((out / "metadata").glob("*.parquet"))]
    keys = [k for t in tables for k in t.column("key").to_pylist()]
    paths = [p for t in tables for p in t.column("path").to_pylist()]
    errors = [e for t in tables for e in t.column("error").to_pylist()]
    embeddings = embeddings.astype(np.float64)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings / np.where(norms == 0, 1, norms), keys, paths, errors


def brute_force(out, query: np.ndarray, k: int):
    """(keys, scores) of the k good rows nearest a query, in numpy."""
    embeddings, keys, _, errors = on_disk(out)
    good = np.array([e is None for e in errors])
    scores = np.where(good, embeddings @ (query / np.linalg.norm(query)), -np.inf)
    order = np.argsort(-scores)[:k]
    return [keys[i] for i in order], scores[order]


def _text(model, text: str) -> np.ndarray:
    return model.encode_text(clip.tokenize([text])).asnumpy()[0].astype(np.float64)


def _image(model, preprocess, path) -> np.ndarray:
    with Image.open(path) as image:
        return model.encode_image(Tensor(preprocess(image)[None])).asnumpy()[0].astype(np.float64)


def _check(results, keys, scores) -> None:
    assert [hit["key"] for hit in results] == keys
    np.testing.assert_allclose([hit["score"] for hit in results], scores, atol=1e-4)


@pytest.mark.parametrize("kind", [None, "flat", "ivf"])
def test_text_image_and_embedding_queries_equal_brute_force(built, demo, kind):
    out = built / "out"
    collection = Collection.open(out)
    if kind:
        collection.build_index(kind, recall_queries=100, progress=False)
    model, preprocess = demo
    exhaustive = {"nprobe": 100} if kind == "ivf" else {}
    for text in QUERIES:
        _check(collection.search(text, k=5, **exhaustive), *brute_force(out, _text(model, text), 5))
    path = built / "images" / "0007.png"
    expected = brute_force(out, _image(model, preprocess, path), 4)
    assert expected[0][0] == "0007.png"
    _check(collection.search(path, k=4, **exhaustive), *expected)
    with Image.open(path) as image:
        _check(collection.search(image, k=4, **exhaustive), *expected)
    _check(collection.search(str(path), k=4, **exhaustive), *expected)
    vector = np.random.default_rng(0).standard_normal(64)
    _check(collection.search(vector, k=6, **exhaustive), *brute_force(out, vector, 6))
    batch = collection.search(QUERIES, k=3, **exhaustive)
    assert [r.query for r in batch] == [repr(q) for q in QUERIES]
    for text, results in zip(QUERIES, batch, strict=True):
        _check(results, *brute_force(out, _text(model, text), 3))
    shutil.rmtree(out / "index", ignore_errors=True)  # the other tests search without an index


def test_results_and_collection_describe_themselves(built):
    collection = Collection.open(built / "out")
    embeddings, keys, paths, errors = on_disk(built / "out")
    assert len(collection) == 46 and collection.shards == [0, 1, 2]
    assert errors.count(None) == 45 and errors[keys.index("0045.png")].startswith("empty")
    info = collection.info()
    assert info == {"items": 46, "errors": 1, "shards": 3, "model": "demo", "embed_dim": 64,
                    "dtype": "float16", "index": "none (exact search, shard by shard)"}  # fmt: skip
    assert "items 46, errors 1" in repr(collection) and "<table>" in collection._repr_html_()
    results = collection.search("a red circle", k=3)
    hit = results[0]
    row = keys.index(hit["key"])
    assert hit["path"] == paths[row] and hit["error"] is None and hit["rank"] == 1
    assert (hit["shard"], hit["row"]) == divmod(row, 16)
    text = repr(results).splitlines()
    assert text[0] == "3 results for 'a red circle'" and hit["key"] in text[1]
    assert f"{hit['score']:.3f}" in text[1]
    page = results._repr_html_()
    assert page.count("<img src='data:image/png;base64,") == 3 and f"{hit['score']:.3f}" in page


def test_a_grown_source_updates_the_index(tmp_path, demo):
    _write_images(tmp_path / "images", 0, 20)
    out = tmp_path / "out"
    build(tmp_path / "images", out, model="demo", shard_size=8, progress=False)
    collection = Collection.open(out)
    first = collection.build_index("flat", progress=False)
    assert first["shards"] == [0, 1, 2] and first["ntotal"] == 20
    _write_images(tmp_path / "images", 20, 10)
    build(tmp_path / "images", out, model="demo", shard_size=8, progress=False)
    with pytest.raises(ValueError, match="older than the collection.*update_index"):
        collection.search("a red circle")
    updated = collection.update_index(progress=False)
    assert updated["shards"] == [0, 1, 2, 3, 4] and updated["ntotal"] == 30
    query = _text(demo[0], "a red circle")
    _check(collection.search("a red circle", k=30), *brute_force(out, query, 30))
