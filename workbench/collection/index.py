"""faiss indexes over a collection's image embeddings: built, measured, updated shard by shard.

An index lives in DIR/index/: the faiss file and report.json, the build report (kind, faiss factory
string, shards covered, ntotal, recall@10 against exact search for approximate kinds, seconds).
The report names the index file, and is written last, so a crash mid-write leaves the previous
index in force. Vector ids are `shard << 32 | row`: appending shards never renumbers old rows.
Bad items (error not null) are never added, so they are never returned.
"""

import json
import os
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
from tqdm.auto import tqdm

from ..retrieval import search as exact_search

KINDS = ("flat", "ivf", "hnsw")
APPROXIMATE = ("ivf", "hnsw")
# faiss's default of 40 leaves HNSW32 short of recall@10 0.95 on a million clustered vectors
EF_CONSTRUCTION = 128
SHARD_BITS = 32
REPORT = "report.json"


def ids_of(shard: int, rows: np.ndarray) -> np.ndarray:
    """Index ids of rows of a shard."""
    return (np.int64(shard) << SHARD_BITS) | np.asarray(rows, np.int64)


def shard_row(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard, row) of index ids."""
    ids = np.asarray(ids, np.int64)
    return ids >> SHARD_BITS, ids & ((1 << SHARD_BITS) - 1)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found top-k & true top-k| / k."""
    found, truth = np.asarray(found)[:, :k], np.asarray(truth)[:, :k]
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits) / k)


def exact_top_k(collection, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, ids) of unit queries over a collection, one shard in memory at a time.

    Missing places (fewer than k good items) hold score -inf and id -1.
    """
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    for shard in collection.shards:
        ids, vectors = collection.vectors(shard)
        if len(ids):
            found, scores = exact_search(queries, vectors, min(k, len(ids)))
            heap.add_result(np.ascontiguousarray(scores, np.float32), ids[found])
    heap.finalize()
    return heap.D, heap.I


def _factory(kind: str, count: int, nlist: int | None, m: int | None) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "flat":
        return "IDMap2,Flat"
    if kind == "hnsw":
        return f"IDMap2,HNSW{m or 32},Flat"
    # faiss's rule of thumb: about 4 sqrt(N) lists, each trained on at least 39 points
    nlist = nlist or max(1, min(int(4 * np.sqrt(count)), count // 39))
    return f"IVF{nlist},Flat"


def _sample(collection, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of up to count good rows drawn uniformly from the collection."""
    sizes = [collection.good_rows(shard) for shard in collection.shards]
    total = sum(sizes)
    chosen = np.sort(rng.choice(total, size=min(count, total), replace=False))
    ids, vectors, start = [], [], 0
    for shard, size in zip(collection.shards, sizes, strict=True):
        local = chosen[(chosen >= start) & (chosen < start + size)] - start
        start += size
        if len(local):
            shard_ids, shard_vectors = collection.vectors(shard)
            ids.append(shard_ids[local])
            vectors.append(shard_vectors[local])
    return np.concatenate(ids), np.concatenate(vectors)


def _tune(index, kind: str, queries, truth, self_ids, target: float) -> dict:
    """Smallest nprobe (IVF) or efSearch (HNSW) whose recall@10 reaches target, with the curve.

    nprobe stops at an eighth of the lists: scanning more is slower than exact search, so an index
    that misses the target there says so (target_reached false) instead of becoming exact.
    """
    name = "efSearch" if kind == "hnsw" else "nprobe"
    top = 1024 if kind == "hnsw" else max(1, faiss.extract_index_ivf(index).nlist // 8)
    space, curve, value = faiss.ParameterSpace(), {}, 1 if name == "nprobe" else 16
    while True:
        space.set_index_parameter(index, name, value)
        _, found = index.search(queries, 11)
        curve[value] = recall_at_k(_without(found, self_ids), truth)
        if curve[value] >= target or value >= top:
            break
        value = min(2 * value, top)
    return {"parameter": name, "value": value, "recall_at_10": curve[value], "curve": curve,
            "target_reached": curve[value] >= target}  # fmt: skip


def _without(ids: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    """The first 10 ids of each row other than that row's query (leave-one-out)."""
    return np.stack([row[row != own][:10] for row, own in zip(ids, self_ids, strict=True)])


def _write(directory: Path, index, report: dict) -> None:
    """Index file under a new name, then the report naming it (the commit point), then clean up."""
    directory.mkdir(parents=True, exist_ok=True)
    old = read_report(directory)
    name = f"{report['kind']}-{time.time_ns()}.faiss"
    handle, temp = tempfile.mkstemp(prefix=".index.", suffix=".tmp", dir=directory)
    os.close(handle)
    try:
        faiss.write_index(index, temp)
        os.replace(temp, directory / name)
        report = {**report, "file": name}
        handle, temp = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=directory)
        with os.fdopen(handle, "w") as file:
            json.dump(report, file, indent=1)
        os.replace(temp, directory / REPORT)
    finally:
        Path(temp).unlink(missing_ok=True)
    if old and old.get("file") != name:
        (directory / old["file"]).unlink(missing_ok=True)


def read_report(directory) -> dict | None:
    """The build report of the index in directory, or None when there is none."""
    path = Path(directory) / REPORT
    return json.loads(path.read_text()) if path.exists() else None


def read(directory, report: dict, *, writable: bool = False):
    """The faiss index a report names; a flat index memory-mapped unless it is to be written."""
    flags = 0 if writable or report["kind"] != "flat" else faiss.IO_FLAG_MMAP_IFC
    return faiss.read_index(str(Path(directory) / report["file"]), flags)


def search(index, report: dict, queries: np.ndarray, k: int, *, nprobe: int | None = None,
           ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(scores, ids) of the k best per query; nprobe or ef_search apply to this call only."""
    effort = {"nprobe": nprobe, "efSearch": ef_search}
    asked = {name: value for name, value in effort.items() if value is not None}
    usable = {"ivf": "nprobe", "hnsw": "efSearch"}.get(report["kind"])
    for name, value in asked.items():
        if name != usable:
            raise ValueError(f"{name} does not apply to a {report['kind']} index")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    space = faiss.ParameterSpace()
    default = {name: report.get("value") for name in asked}
    try:
        for name, value in asked.items():
            space.set_index_parameter(index, name, value)
        return index.search(queries, k)
    finally:
        for name, value in default.items():
            space.set_index_parameter(index, name, value)


def _add(index, collection, shards: list[int], progress: bool) -> None:
    for shard in tqdm(shards, unit="shard", disable=not progress, leave=False):
        ids, vectors = collection.vectors(shard)
        if len(ids):
            index.add_with_ids(vectors, ids)


def _measure(index, report: dict, collection, *, queries: int, target: float, seed: int) -> dict:
    """The report with recall@10 against exact search on leave-one-out queries (and the tuned
    search parameter) for an approximate index."""
    if report["kind"] not in APPROXIMATE or index.ntotal < 12:
        return report
    self_ids, sample = _sample(collection, queries, np.random.default_rng(seed))
    _, truth = exact_top_k(collection, sample, 11)
    tuned = _tune(index, report["kind"], sample, _without(truth, self_ids), self_ids, target)
    return {**report, "recall_queries": len(sample), "target_recall": target, **tuned}


def build(
    collection,
    *,
    kind: str = "flat",
    nlist: int | None = None,
    m: int | None = None,
    ef_construction: int = EF_CONSTRUCTION,
    train_size: int | None = None,
    recall_queries: int = 1000,
    target_recall: float = 0.95,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Build the collection's index of kind (flat: exact; ivf, hnsw: approximate, recall measured
    and nprobe or efSearch tuned to target_recall), write it, return its report.

    nlist: IVF lists (default about 4 sqrt(N)); m: HNSW links per node (32); ef_construction:
    HNSW candidates kept while linking (more: a better graph, a slower build); train_size: IVF
    training sample (40 per list); recall_queries: leave-one-out queries for recall@10.
    """
    started = time.perf_counter()
    count, dim = collection.good_count(), collection.embed_dim
    if count == 0:
        raise ValueError(f"{collection.path} has no good items to index")
    factory = _factory(kind, count, nlist, m)
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind == "hnsw":
        faiss.downcast_index(index.index).hnsw.efConstruction = ef_construction
    if not index.is_trained:  # IVF: by default 40 points per list, just above faiss's minimum
        size = train_size or 40 * faiss.extract_index_ivf(index).nlist
        _, sample = _sample(collection, size, np.random.default_rng(seed))
        index.train(sample)
    _add(index, collection, collection.shards, progress)
    report = {"kind": kind, "factory": factory, "embed_dim": dim, "shards": collection.shards,
              "ntotal": int(index.ntotal), "faiss": faiss.__version__,
              **({"ef_construction": ef_construction} if kind == "hnsw" else {})}  # fmt: skip
    report = _measure(index, report, collection, queries=recall_queries, target=target_recall,
                      seed=seed)  # fmt: skip
    report["build_seconds"] = round(time.perf_counter() - started, 3)
    _write(Path(collection.path) / "index", index, report)
    return read_report(Path(collection.path) / "index")


def update(collection, *, progress: bool = True, seed: int = 0) -> dict:
    """Add the shards the index does not cover yet (an IVF index keeps its trained lists) and
    re-measure recall for approximate kinds; returns the new report."""
    directory = Path(collection.path) / "index"
    report = read_report(directory)
    if report is None:
        raise ValueError(f"{collection.path} has no index yet; build one with build_index()")
    check(report, collection, stale_ok=True)
    new = [s for s in collection.shards if s not in report["shards"]]
    if not new:
        return report
    started = time.perf_counter()
    index = read(directory, report, writable=True)
    _add(index, collection, new, progress)
    report = {**report, "shards": sorted(report["shards"] + new), "ntotal": int(index.ntotal)}
    report = _measure(index, report, collection, queries=report.get("recall_queries", 1000),
                      target=report.get("target_recall", 0.95), seed=seed)  # fmt: skip
    report["update_seconds"] = round(time.perf_counter() - started, 3)
    _write(directory, index, report)
    return read_report(directory)


def check(report: dict, collection, *, stale_ok: bool = False) -> None:
    """Raise a ValueError naming the fix when the index does not match the collection's shards."""
    if report["embed_dim"] != collection.embed_dim:
        raise ValueError(
            f"the index holds {report['embed_dim']}-d vectors, the collection "
            f"{collection.embed_dim}-d ones; rebuild it with build_index()"
        )
    gone = sorted(set(report["shards"]) - set(collection.shards))
    if gone:
        raise ValueError(f"the index covers shards {gone} that the collection no longer has; "
                         "rebuild it with build_index()")  # fmt: skip
    missing = [s for s in collection.shards if s not in report["shards"]]
    if missing and not stale_ok:
        raise ValueError(f"the index is older than the collection: it covers "
                         f"{len(report['shards'])} of {len(collection.shards)} shards (missing "
                         f"{missing[:5]}{' ...' if len(missing) > 5 else ''}); run "
                         "update_index() to add them")  # fmt: skip
