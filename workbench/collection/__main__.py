"""Command line: build a collection, describe it, search it.

python -m workbench.collection build SOURCE --out DIR [--model M] [--engine local|ray|msrun] ...
python -m workbench.collection info DIR
python -m workbench.collection index DIR [--kind flat|ivf|hnsw] [--update]
python -m workbench.collection search DIR "a red circle" [-k 10]
"""

import argparse
import json
import sys

from workbench.collection import CollectionError, build, status  # absolute: msrun runs this file
from workbench.collection.index import EF_CONSTRUCTION, KINDS


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m workbench.collection",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="embed an image folder, a table or webdataset tars")
    make.add_argument("source", help="image folder, .csv/.parquet with a 'path' column, or .tar(s)")
    make.add_argument("--out", required=True, help="the collection folder")
    make.add_argument("--model", default="demo", help="a clip.load name or checkpoint path")
    make.add_argument("--engine", choices=("local", "ray", "msrun"), default="local")
    make.add_argument(
        "--workers",
        type=int,
        help="Ray actors (default: the cluster's CPUs) or msrun ranks (default 2)",
    )
    make.add_argument("--shard-size", type=int, help="items per shard (default 10000)")
    make.add_argument("--batch-size", type=int, default=64)
    make.add_argument("--threads", type=int, help="decoding threads per worker")
    make.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    make.add_argument("--kind", choices=("folder", "table", "webdataset"))
    make.add_argument("--max-pixels", type=int, help="larger images are decompression bombs")
    make.add_argument("--device", help="Ascend, GPU or CPU (default: the best present)")
    make.add_argument("--jit", action="store_true", help="compiled encoders")
    make.add_argument("--address", help="Ray cluster to join (e.g. auto)")
    make.add_argument("--master-port", type=int, default=8118, help="msrun's scheduler port")
    make.add_argument("--overwrite", action="store_true", help="replace another model's collection")
    make.add_argument("--no-progress", action="store_true")
    info = commands.add_parser("info", help="model, items, shards done, bad items")
    info.add_argument("dir")
    info.add_argument("--json", action="store_true")
    index = commands.add_parser("index", help="build DIR/index/, or add new shards to it")
    index.add_argument("dir")
    index.add_argument("--kind", choices=KINDS, default="flat",
                       help="flat: exact; ivf, hnsw: approximate, recall@10 measured")  # fmt: skip
    index.add_argument("--nlist", type=int, help="IVF lists (default about 4 sqrt(N))")
    index.add_argument("--m", type=int, help="HNSW links per node (default 32)")
    index.add_argument("--ef-construction", type=int,
                       help=f"HNSW build effort (default {EF_CONSTRUCTION})")  # fmt: skip
    index.add_argument("--target-recall", type=float, help="for ivf, hnsw (default: build_index's)")
    index.add_argument("--update", action="store_true", help="add shards done since the build")
    index.add_argument("--no-progress", action="store_true")
    search = commands.add_parser("search", help="the nearest items to a text")
    search.add_argument("dir")
    search.add_argument("text")
    search.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            summary = build(
                args.source,
                args.out,
                model=args.model,
                engine=args.engine,
                workers=args.workers,
                shard_size=args.shard_size,
                batch_size=args.batch_size,
                threads=args.threads,
                dtype=args.dtype,
                kind=args.kind,
                max_pixels=args.max_pixels,
                device=args.device,
                jit=args.jit,
                overwrite=args.overwrite,
                progress=not args.no_progress,
                address=args.address,
                master_port=args.master_port,
            )
            if summary.shards:  # msrun's scheduler process has nothing to say
                print(summary)
        elif args.command == "info":
            described = status(args.dir)
            if args.json:
                print(json.dumps(described, indent=1))
            else:
                errors = ", ".join(f"{n} {k}" for k, n in described["errors"].items()) or "none"
                print(
                    f"collection {described['path']}\n"
                    f"model: {described['model']} ({described['embed_dim']}-d, "
                    f"{described['dtype']})\n"
                    f"source: {described['source']['kind']} {described['source']['path']}\n"
                    f"items: {described['items']} in {described['shards']} shards of "
                    f"{described['shard_size']}; {described['shards_done']} done "
                    f"({described['rows_done']} rows)\n"
                    f"bad items: {sum(described['errors'].values())} ({errors})\n"
                    f"on disk: {described['bytes'] / 2**20:.1f} MiB"
                )
        elif args.command == "index":
            from workbench.collection.search import Collection

            collection = Collection.open(args.dir)
            progress = not args.no_progress
            if args.update:
                report = collection.update_index(progress=progress)
            else:
                given = {"nlist": args.nlist, "m": args.m, "ef_construction": args.ef_construction,
                         "target_recall": args.target_recall}  # fmt: skip
                options = {name: value for name, value in given.items() if value is not None}
                report = collection.build_index(args.kind, progress=progress, **options)
            print(describe_index(report))
        else:
            from workbench.collection.search import Collection

            results = Collection.open(args.dir).search(args.text, k=args.k)
            print(results)
    except (CollectionError, ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def describe_index(report: dict) -> str:
    """One paragraph on an index report: what it is, its size, its measured recall."""
    seconds = report.get("update_seconds", report.get("build_seconds"))
    text = (f"index {report['factory']}: {report['ntotal']} vectors from "
            f"{len(report['shards'])} shards, {seconds:.1f} s")  # fmt: skip
    if "recall_at_10" in report:
        reached = "reached" if report["target_reached"] else "NOT reached"
        text += (f"\nrecall@10 {report['recall_at_10']:.3f} at {report['parameter']} "
                 f"{report['value']} (target {report['target_recall']} {reached})")  # fmt: skip
    return text


if __name__ == "__main__":
    sys.exit(main())
