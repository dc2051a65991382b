"""Index build time, query latency and recall@10 for 1 million 512-d unit vectors: exact vs
approximate (HNSW, IVF).

Two data sets of float32 unit vectors, each written as a collection (shards of 10,000) and indexed
through `Collection.build_index`: "isotropic" (normalised Gaussian vectors, what the issue asks;
every point is nearly as far from its neighbours as from anything, the worst case for any
approximate index) and "clustered" (around 10,000 centres, cosine ~0.7 to their centre, closer to
how image embeddings group). Queries: 1,000 held-out vectors of the same distribution. The
approximate indexes' efSearch / nprobe are those build_index tuned to recall@10 >= 0.95 on
leave-one-out collection rows; recall@10 is measured again on the held-out queries against the
exact index.
Run: .venv/bin/python benchmarks/index.py [-n 1000000] [--threads 2] [--approximate hnsw,ivf]
"""

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def unit(x):
    import numpy as np

    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors(kind: str, rng, rows: int, dim: int, centres):
    """rows unit vectors of a data set kind."""
    if kind == "isotropic":
        return unit(rng.standard_normal((rows, dim), dtype="float32"))
    noise = rng.standard_normal((rows, dim), dtype="float32") / dim**0.5
    return unit(centres[rng.integers(len(centres), size=rows)] + noise)


def write_collection(root: Path, kind: str, n: int, dim: int, shard_size: int, seed: int):
    """A collection folder of n vectors in the on-disk layout; returns held-out queries."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((10_000, dim), dtype="float32"))
    print_ = {"embed_dim": dim, "dtype": "float32", "benchmark": kind}
    for folder in ("img_emb", "metadata", "shards"):
        (root / folder).mkdir(parents=True)
    description = {"model": "none", "embed_dim": dim, "dtype": "float32", "fingerprint": print_,
                   "source": {"benchmark": kind}}  # fmt: skip
    (root / "collection.json").write_text(json.dumps(description))
    for shard, start in enumerate(range(0, n, shard_size)):
        rows = min(shard_size, n - start)
        np.save(
            root / "img_emb" / f"img_emb_{shard:06d}.npy", vectors(kind, rng, rows, dim, centres)
        )
        keys = [str(start + i) for i in range(rows)]
        table = pa.table({"key": keys, "path": keys, "caption": pa.nulls(rows, pa.string()),
                          "size": pa.array([0] * rows, pa.int64()),
                          "error": pa.nulls(rows, pa.string())})  # fmt: skip
        pq.write_table(table, root / "metadata" / f"metadata_{shard:06d}.parquet")
        record = {"fingerprint": print_, "rows": rows, "captions": 0, "errors": 0}
        (root / "shards" / f"{shard:06d}.json").write_text(json.dumps(record))
    return vectors(kind, rng, 1000, dim, centres)


def query_times(index, report: dict, queries, single: int) -> tuple[float, float, object]:
    """Seconds for the batch of queries, median seconds of single queries, the batch's ids."""
    from workbench.collection import index as indexes

    start = time.perf_counter()
    _, found = indexes.search(index, report, queries, 10)
    batch = time.perf_counter() - start
    indexes.search(index, report, queries[:1], 10)  # warm-up
    times = []
    for q in range(single):
        start = time.perf_counter()
        indexes.search(index, report, queries[q : q + 1], 10)
        times.append(time.perf_counter() - start)
    return batch, statistics.median(times), found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="vectors")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--single", type=int, default=10, help="single queries timed (median)")
    parser.add_argument("--sets", default="clustered,isotropic")
    parser.add_argument("--nlist", type=int, default=1024, help="IVF lists (sqrt(n) for 1M)")
    parser.add_argument("--ef-construction", type=int, default=None, help="HNSW build effort")
    parser.add_argument("--approximate", default="hnsw,ivf", help="approximate kinds to compare")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import faiss
    from host import describe

    from workbench.collection import Collection
    from workbench.collection import index as indexes

    faiss.omp_set_num_threads(args.threads)
    print(f"{describe('faiss-cpu', 'numpy')}; faiss {args.threads} threads")
    print(f"{args.n:,} x {args.dim} float32 unit vectors, 1,000 held-out queries, k = 10\n")
    kinds = ["flat", *args.approximate.split(",")]
    rows = []
    for data in args.sets.split(","):
        root = Path(tempfile.mkdtemp(prefix=f"index-bench-{data}-"))
        try:
            start = time.perf_counter()
            queries = write_collection(root, data, args.n, args.dim, 10_000, 0)
            written = time.perf_counter() - start
            collection = Collection.open(root)
            print(f"{data}: wrote {len(collection):,} vectors in {written:.1f} s", flush=True)
            exact = None
            for name in kinds:
                options = {"nlist": args.nlist} if name == "ivf" else {}
                if name == "hnsw" and args.ef_construction:
                    options["ef_construction"] = args.ef_construction
                report = collection.build_index(name, recall_queries=1000, progress=False,
                                                **options)  # fmt: skip
                index = indexes.read(root / "index", report)
                batch, single, found = query_times(index, report, queries, args.single)
                del index
                exact = exact or (batch, single, found)
                recall = indexes.recall_at_k(found, exact[2])
                rows.append((data, report, batch, single, recall, exact))
                tuned = ""
                if "curve" in report:
                    curve = {k: round(v, 3) for k, v in report["curve"].items()}
                    tuned = f"; {report['parameter']} {report['value']}, tuning curve {curve}"
                print(f"  {name}: {report['factory']}, built in {report['build_seconds']:.1f} s, "
                      f"batch {batch:.2f} s, single {1000 * single:.2f} ms, held-out recall@10 "
                      f"{recall:.3f}{tuned}", flush=True)  # fmt: skip
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(
        "\n| data | index | build s | 1,000 queries s | q/s | single query ms | speed-up batch / "
        "single | recall@10 held-out (leave-one-out at build) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for data, report, batch, single, recall, exact in rows:
        tuned = f" {report['parameter']} {report['value']}" if "curve" in report else ""
        build = f" ({report['recall_at_10']:.3f})" if "curve" in report else ""
        print(
            f"| {data} | `{report['factory']}`{tuned} | {report['build_seconds']:.1f} | "
            f"{batch:.2f} | {1000 / batch:.0f} | {1000 * single:.2f} | {exact[0] / batch:.1f} / "
            f"{exact[1] / single:.1f} | {recall:.3f}{build} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
