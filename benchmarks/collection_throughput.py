"""End-to-end images/s of building a collection from JPEG files (decode + preprocess + encode).

    .venv/bin/python benchmarks/collection_throughput.py [--model demo|ViT-B/32] [-n N] [--no-ray]

In one invocation, on the same files and model: a single-threaded loop (load_image, preprocess,
encode one image at a time), the local engine (`workbench.collection.build`, decoding in threads
while the model encodes batches) and 2 Ray workers, each with PyNative and `jit=True` encoders.
For ViT-B/32 (random weights of OpenAI's initialisation, made by .venv-ref's reference tooling),
also OpenAI's code fed by a torch DataLoader with 2 workers (benchmarks/speed_worker.py's files
case, in .venv-ref; median of repeated passes after a warm-up). The demo model reads 256x256
pictures of its shapes; ViT-B/32 photo-like files of 640x480 and 500x375 (speed.write_jpegs).

A build's "wall" rate counts everything (listing, model load, compile, writing); "steady" counts
the shards after each worker's first, whose time includes loading and compiling once per worker.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from host import describe
from PIL import Image
from speed import MAKER, random_weights, run_worker, write_jpegs

import clip
from workbench.collection import build
from workbench.data import load_image
from workbench.demo import shapes


def write_shapes(folder: Path, n: int, size: int) -> None:
    """n demo shapes pictures scaled to size x size, saved as JPEG (quality 90)."""
    for i, sample in enumerate(shapes.generate("test", n, 0)):
        path = folder / f"{i // 100:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(sample.image).resize((size, size), Image.Resampling.BICUBIC)
        image.save(path, quality=90)


def single_loop(model_name: str, paths: list[Path], jit: bool) -> float:
    """images/s of decode, preprocess and encode one image at a time in one thread."""
    model, preprocess = clip.load(model_name, jit=jit)
    model.encode_image(preprocess(load_image(paths[0]))).asnumpy()  # compile and warm up
    started = time.perf_counter()
    for path in paths:
        model.encode_image(preprocess(load_image(path))).asnumpy()
    return len(paths) / (time.perf_counter() - started)


def engine(folder: Path, out: Path, model: str, jit: bool, **options) -> tuple:
    """(images/s of the whole build, images/s of the shards after each worker's first)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = build(folder, out, model=model, jit=jit, progress=False, **options)
    wall = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in (out / "shards").glob("*.json")]
    by_worker: dict = {}
    for record in sorted(records, key=lambda r: r["finished"]):
        by_worker.setdefault(record["pid"], []).append(record)
    # workers run concurrently: the steady rate is their rates added up
    rates = [
        sum(r["rows"] for r in done[1:]) / sum(r["seconds"] for r in done[1:])
        for done in by_worker.values()
        if len(done) > 1
    ]
    return summary.items / wall, sum(rates) if rates else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo", choices=["demo", "ViT-B/32"])
    parser.add_argument("-n", type=int, default=None, help="JPEG files (demo 2000, ViT-B/32 512)")
    parser.add_argument("--size", type=int, default=256, help="pixels per side of demo files")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--shards", type=int, default=8, help="shards the files are cut into")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    vit = args.model == "ViT-B/32"
    count = args.n or (512 if vit else 2000)
    work, ray = Path(tempfile.mkdtemp(prefix="collection-bench-")), None
    try:
        if vit:
            if not MAKER.exists():
                raise SystemExit(f"{MAKER} is missing: `make .venv-ref/.installed` builds it")
            model = str(random_weights(work, ("ViT-B-32",))["ViT-B-32"])
            write_jpegs(work / "jpeg", count)
            files = f"{count} photo-like JPEGs of 640x480 and 500x375"
        else:
            model = "demo"
            write_shapes(work / "jpeg", count, args.size)
            files = f"{count} JPEGs of {args.size}x{args.size}"
        print(describe("mindspore", "numpy", "pillow", "ray"))
        print(f"model {args.model}, {files}, batch {args.batch_size}, {args.shards} shards")
        paths = sorted((work / "jpeg").rglob("*.jpg"))
        shard = -(-count // args.shards)
        results = {}
        if vit:
            measured = run_worker("torch", "files ViT-B/32", work, quick=False)
            rate = next(v for k, v in measured.items() if k.endswith("images/s"))
            results["OpenAI's code, DataLoader with 2 workers"] = (rate, None)
        if not args.no_ray:  # started once, so its start-up is not counted in either build
            import ray

            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            except Exception as err:  # Ray's start-up times out on an overloaded machine
                print(f"Ray did not start ({err}); its rows are left out")
                args.no_ray, ray = True, None
        for jit in (False, True):
            mode = "jit" if jit else "PyNative"
            loop = single_loop(model, paths, jit)
            results[f"single-threaded loop, batch 1, {mode}"] = (loop, None)
            results[f"local engine, {mode}"] = engine(
                work / "jpeg", work / "local", model, jit, shard_size=shard,
                batch_size=args.batch_size,
            )  # fmt: skip
            if not args.no_ray:
                results[f"2 Ray workers, {mode}"] = engine(
                    work / "jpeg", work / "ray", model, jit, engine="ray", workers=2,
                    shard_size=shard, batch_size=args.batch_size,
                )  # fmt: skip
        reference = results.get("OpenAI's code, DataLoader with 2 workers", (None,))[0]
        header = f"{'':44} {'images/s wall':>14} {'steady':>8} {'vs loop':>8}"
        print(header + (f" {'vs OpenAI':>10}" if reference else ""))
        for name, (wall, steady) in results.items():
            mode = "jit" if name.endswith("jit") else "PyNative"
            loop = results.get(f"single-threaded loop, batch 1, {mode}", (None,))[0]
            row = f"{name:44} {wall:14.1f} {f'{steady:.1f}' if steady else '':>8}"
            row += f" {f'{wall / loop:.1f}x' if loop and 'loop' not in name else '':>8}"
            if reference and "OpenAI" not in name:
                row += f" {wall / reference:9.2f}x" + (
                    f" ({steady / reference:.2f}x steady)" if steady else ""
                )
            print(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if ray is not None:
            ray.shutdown()


if __name__ == "__main__":
    main()
