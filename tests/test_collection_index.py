"""workbench.collection.index: exact and approximate faiss indexes over a collection's shards,
checked against brute-force numpy; recall@10; updates that add only new shards."""

import json

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workbench.collection import index as indexes
from workbench.collection.search import Collection


def write_shard(root, shard: int, embeddings, *, errors=None, paths=None, captions=None) -> None:
    """One shard of a collection in the on-disk layout (DESIGN.md), written directly."""
    embeddings = np.asarray(embeddings)
    rows = len(embeddings)
    errors = errors if errors is not None else [None] * rows
    keys = [f"{shard:06d}{i:04d}" for i in range(rows)]
    paths = paths if paths is not None else [f"images/{k}.png" for k in keys]
    captions = captions if captions is not None else [None] * rows
    for folder in ("img_emb", "metadata", "shards"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    np.save(root / "img_emb" / f"img_emb_{shard:06d}.npy", embeddings)
    table = pa.table({"key": keys, "path": [str(p) for p in paths],
                      "caption": pa.array(captions, pa.string()),
                      "size": pa.array([100] * rows, pa.int64()),
                      "error": pa.array(errors, pa.string())})  # fmt: skip
    pq.write_table(table, root / "metadata" / f"metadata_{shard:06d}.parquet")
    print_ = {"embed_dim": embeddings.shape[1], "dtype": embeddings.dtype.name}
    record = {"fingerprint": print_, "rows": rows, "captions": 0,
              "errors": sum(e is not None for e in errors)}  # fmt: skip
    (root / "shards" / f"{shard:06d}.json").write_text(json.dumps(record))


def write_collection(root, shards, *, model: str = "demo", errors=None, **columns) -> None:
    """A collection folder holding the given (rows, D) shards; errors: {shard: {row: message}}."""
    root.mkdir(parents=True, exist_ok=True)
    dim, dtype = shards[0].shape[1], shards[0].dtype.name
    print_ = {"embed_dim": dim, "dtype": dtype}  # the part of a build's fingerprint readers check
    description = {"model": model, "embed_dim": dim, "dtype": dtype, "fingerprint": print_,
                   "source": {}}  # fmt: skip
    (root / "collection.json").write_text(json.dumps(description))
    for shard, embeddings in enumerate(shards):
        bad = (errors or {}).get(shard, {})
        write_shard(root, shard, embeddings, errors=[bad.get(i) for i in range(len(embeddings))],
                    **{k: v[shard] for k, v in columns.items()})  # fmt: skip


def unit(rng, rows: int, dim: int, dtype=np.float16) -> np.ndarray:
    x = rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


def clustered(rng, rows: int, dim: int, centres: int = 20) -> np.ndarray:
    """Unit vectors around a few centres, as embeddings of real images group."""
    middle = rng.standard_normal((centres, dim))
    x = middle[rng.integers(centres, size=rows)] + 0.6 * rng.standard_normal((rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def brute_force(shards, errors, queries, k):
    """Ids (shard << 32 | row) and float64 cosine scores of the k best good rows, in numpy."""
    rows, ids = [], []
    for s, embeddings in enumerate(shards):
        for r, vector in enumerate(np.asarray(embeddings, np.float64)):
            if r not in errors.get(s, {}):
                rows.append(vector / np.linalg.norm(vector))
                ids.append((s << 32) | r)
    gallery, ids = np.stack(rows), np.array(ids)
    queries = np.atleast_2d(queries).astype(np.float64)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ gallery.T
    order = np.argsort(-scores, axis=1)[:, :k]
    return ids[order], np.take_along_axis(scores, order, axis=1)


def result_ids(results) -> np.ndarray:
    return np.array([[(hit["shard"] << 32) | hit["row"] for hit in r] for r in results])


def result_scores(results) -> np.ndarray:
    return np.array([[hit["score"] for hit in r] for r in results])


@pytest.fixture
def small(tmp_path):
    """Three shards of 64-d float16 unit vectors, with bad rows (one of them not zeros)."""
    rng = np.random.default_rng(0)
    shards = [unit(rng, n, 64) for n in (50, 40, 30)]
    errors = {0: {3: "truncated"}, 2: {0: "not an image", 7: "0 bytes"}}
    shards[0][3] = 0
    shards[2][7] = 0
    queries = unit(rng, 6, 64, np.float32)
    shards[2][0] = queries[0]  # a bad row that would be every query's best match
    write_collection(tmp_path / "c", shards, errors=errors)
    return tmp_path / "c", shards, errors, queries


def test_recall_at_k_against_numpy():
    rng = np.random.default_rng(1)
    truth = np.stack([rng.permutation(100)[:10] for _ in range(20)])
    found = truth.copy()
    found[:, 7:] = rng.integers(100, 200, (20, 3))  # 3 of 10 wrong in every row
    found[5] = truth[5][::-1]  # order does not matter
    expected = np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert (
        indexes.recall_at_k(found, truth)
        == pytest.approx(expected)
        == pytest.approx(0.7 + 0.3 / 20)
    )


@pytest.mark.parametrize("kind", [None, "flat"])
def test_exact_search_equals_brute_force_and_skips_bad_rows(small, kind):
    path, shards, errors, queries = small
    collection = Collection.open(path)
    if kind:
        report = collection.build_index(kind, progress=False)
        assert report["ntotal"] == 117 and report["shards"] == [0, 1, 2]
        assert "recall_at_10" not in report  # exact: nothing to measure
    results = collection.search(queries, k=10)
    ids, scores = brute_force(shards, errors, queries, 10)
    np.testing.assert_array_equal(result_ids(results), ids)
    np.testing.assert_allclose(result_scores(results), scores, atol=1e-5)
    bad = {(s << 32) | r for s, rows in errors.items() for r in rows}
    assert not bad & set(result_ids(collection.search(queries, k=117)).ravel().tolist())
    everything = collection.search(queries[0], k=500)  # k above the good items: all of them
    assert len(everything) == 117 and everything[0]["key"] != "0000020000"


def _ids_in(index) -> np.ndarray:
    """Every id stored in a flat (IDMap2) or IVF index."""
    if isinstance(index, faiss.IndexIDMap2):
        return faiss.vector_to_array(index.id_map)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    return np.concatenate([faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                           for i in range(ivf.nlist) if lists.list_size(i)])  # fmt: skip


def test_approximate_recall_is_what_numpy_measures(tmp_path):
    rng = np.random.default_rng(2)
    shards = [clustered(rng, 700, 32), clustered(rng, 500, 32)]
    write_collection(tmp_path / "c", shards)
    collection = Collection.open(tmp_path / "c")
    report = collection.build_index("ivf", recall_queries=5000, target_recall=0.9, progress=False)
    assert report["factory"] == "IVF30,Flat" and report["recall_queries"] == 1200
    curve = {int(v): r for v, r in report["curve"].items()}
    assert report["parameter"] == "nprobe" and report["recall_at_10"] == curve[report["value"]]
    assert report["recall_at_10"] >= 0.9 and all(
        r < 0.9 for v, r in curve.items() if v < report["value"]
    )
    # every good row is a query (recall_queries >= items); its own row is left out of both lists
    index = faiss.read_index(str(tmp_path / "c" / "index" / report["file"]))
    vectors = np.concatenate([s.astype(np.float64) for s in shards])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.concatenate([(s << 32) | np.arange(len(x)) for s, x in enumerate(shards)])
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    truth = ids[np.argsort(-scores, axis=1)[:, :10]]
    for nprobe, recall in curve.items():
        index.nprobe = nprobe
        _, found = index.search(vectors.astype(np.float32), 11)
        found = [[i for i in row if i != own][:10] for row, own in zip(found, ids, strict=True)]
        expected = np.mean(
            [len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth, strict=True)]
        )
        assert recall == pytest.approx(expected)
    assert indexes.read(tmp_path / "c" / "index", report).nprobe == report["value"]
    missed = collection.build_index("ivf", recall_queries=200, target_recall=1.01, progress=False)
    assert not missed["target_reached"] and missed["value"] == 30 // 8  # no more than 1/8 of lists


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_update_adds_only_new_shards(tmp_path, kind, monkeypatch):
    rng = np.random.default_rng(3)
    shards = [clustered(rng, n, 32) for n in (400, 300, 250)]
    errors = {2: {5: "truncated"}}
    write_collection(tmp_path / "c", shards[:2])
    collection = Collection.open(tmp_path / "c")
    first = collection.build_index(kind, recall_queries=200, progress=False)
    assert first["shards"] == [0, 1] and first["ntotal"] == 700
    write_shard(tmp_path / "c", 2, shards[2], errors=[errors[2].get(i) for i in range(250)])
    with pytest.raises(ValueError, match=r"older than the collection.*2 of 3 shards.*update_index"):
        collection.search(shards[0][0].astype(np.float32))
    read = []
    original = Collection.vectors
    monkeypatch.setattr(Collection, "vectors", lambda self, s: read.append(s) or original(self, s))
    updated = collection.update_index(progress=False)
    if kind == "flat":
        assert read == [2]  # old shards are not read again
    assert updated["shards"] == [0, 1, 2] and updated["ntotal"] == 700 + 249
    directory = tmp_path / "c" / "index"
    index = indexes.read(directory, updated)
    stored = _ids_in(index)
    expected = [(s << 32) | r for s in range(3) for r in range(len(shards[s])) if (s, r) != (2, 5)]
    assert len(stored) == len(set(stored.tolist())) and sorted(stored.tolist()) == expected
    assert len(list(directory.glob("*.faiss"))) == 1  # the replaced index file is gone
    queries = unit(rng, 5, 32, np.float32)
    # probing all lists, or a wide enough graph search, is exact search
    effort = {"ivf": {"nprobe": 10**6}, "hnsw": {"ef_search": 2000}}.get(kind, {})
    ids, scores = brute_force(shards, errors, queries, 10)
    results = collection.search(queries, k=10, **effort)
    np.testing.assert_array_equal(result_ids(results), ids)
    np.testing.assert_allclose(result_scores(results), scores, atol=1e-5)
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    write_collection(fresh, shards, errors=errors)
    rebuilt = Collection.open(fresh)
    rebuilt.build_index("flat", progress=False)
    assert result_ids(rebuilt.search(queries, k=10)).tolist() == ids.tolist()
    assert collection.update_index(progress=False)["file"] == updated["file"]  # nothing new


def _centroids(index) -> np.ndarray:
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_ivf_first_index_keeps_its_quantiser(tmp_path):
    rng = np.random.default_rng(4)
    shards = [clustered(rng, 800, 16), clustered(rng, 200, 16)]
    write_collection(tmp_path / "c", shards[:1])
    collection = Collection.open(tmp_path / "c")
    first = collection.build_index("ivf", recall_queries=100, progress=False)
    centroids = _centroids(indexes.read(tmp_path / "c" / "index", first))
    write_shard(tmp_path / "c", 1, shards[1])
    updated = collection.update_index(progress=False)
    index = indexes.read(tmp_path / "c" / "index", updated)
    assert updated["factory"] == first["factory"] and index.ntotal == 1000
    np.testing.assert_array_equal(_centroids(index), centroids)


def test_errors_name_the_fix(small, tmp_path):
    path, shards, errors, queries = small
    with pytest.raises(ValueError, match="not a collection.*collection.json.*build"):
        Collection.open(tmp_path)
    collection = Collection.open(path)
    with pytest.raises(ValueError, match=r"width, got shape \(32,\)"):
        collection.search(np.ones(32, np.float32))
    for k in (0, -3, 2.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            collection.search(queries[0], k=k)
    with pytest.raises(ValueError, match="all zeros"):
        collection.search(np.zeros(64, np.float32))
    with pytest.raises(ValueError, match="kind must be one of"):
        collection.build_index("annoy")
    with pytest.raises(ValueError, match="no index yet.*build_index"):
        collection.update_index()
    collection.build_index("flat", progress=False)
    with pytest.raises(ValueError, match="nprobe does not apply to a flat index"):
        collection.search(queries[0], nprobe=4)
