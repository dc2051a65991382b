"""End-to-end images/s of building a collection from JPEG files (decode + preprocess + encode).

    .venv/bin/python benchmarks/collection_throughput.py [-n 300] [--size 256] [--model demo]

In one invocation: a single-threaded loop (load_image, preprocess, encode one image at a time,
the same model), the local engine (`workbench.collection.build`, decoding in threads while the
model encodes batches), and 2 Ray workers, each with PyNative and `jit=True` encoders. The local
engine's figures are wall time of the whole build (listing, model load, compile, writing) and the
shards' own embedding time. The reference of issue 18, OpenAI's code fed by a torch DataLoader
with 2 workers, needs torch and torchvision: benchmarks/speed.py's "files ViT-B/32" group runs it
beside `workbench.features` on the same files.
"""

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from host import describe
from PIL import Image

import clip
from workbench.collection import build
from workbench.data import load_image
from workbench.demo import shapes


def write_jpegs(folder: Path, n: int, size: int) -> list[Path]:
    """n demo shapes images scaled to size x size, saved as JPEG (quality 90)."""
    paths = []
    for i, sample in enumerate(shapes.generate("test", n, 0)):
        path = folder / f"{i // 100:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(sample.image).resize((size, size), Image.Resampling.BICUBIC)
        image.save(path, quality=90)
        paths.append(path)
    return paths


def single_loop(model_name: str, paths: list[Path], jit: bool) -> float:
    """images/s of decode, preprocess and encode one image at a time in one thread."""
    model, preprocess = clip.load(model_name, jit=jit)
    model.encode_image(preprocess(load_image(paths[0]))).asnumpy()  # compile and warm up
    started = time.perf_counter()
    for path in paths:
        model.encode_image(preprocess(load_image(path))).asnumpy()
    return len(paths) / (time.perf_counter() - started)


def engine(folder: Path, out: Path, model: str, jit: bool, **options) -> tuple[float, float]:
    """(images/s of the whole build, images/s within the shards) of one build."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = build(folder, out, model=model, jit=jit, progress=False, **options)
    wall = time.perf_counter() - started
    records = [json.loads(p.read_text()) for p in (out / "shards").glob("*.json")]
    # shards run concurrently under Ray: their own rate is items over the longest worker's time
    by_worker: dict = {}
    for record in records:
        by_worker[record["pid"]] = by_worker.get(record["pid"], 0) + record["seconds"]
    return summary.items / wall, summary.items / max(by_worker.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=300, help="JPEG files")
    parser.add_argument("--size", type=int, default=256, help="pixels per side of each file")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    print(describe("mindspore", "numpy", "ray"))
    print(f"model {args.model}, {args.n} JPEGs of {args.size}x{args.size}, batch {args.batch_size}")
    work = Path(tempfile.mkdtemp(prefix="collection-bench-"))
    try:
        paths = write_jpegs(work / "images", args.n, args.size)
        shard = max(1, args.n // 4)  # 4 shards: 2 per Ray worker
        results = {}
        if not args.no_ray:  # started once, so its start-up is not counted in either build
            import ray

            try:
                ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            except Exception as err:  # Ray's start-up times out on an overloaded machine
                print(f"Ray did not start ({err}); its rows are left out")
                args.no_ray = True
        for jit in (False, True):
            mode = "jit" if jit else "PyNative"
            results[f"single-threaded loop, batch 1, {mode}"] = (
                single_loop(args.model, paths, jit),
                None,
            )
            results[f"local engine, {mode}"] = engine(
                work / "images", work / "local", args.model, jit, shard_size=shard,
                batch_size=args.batch_size,
            )  # fmt: skip
            if not args.no_ray:
                results[f"2 Ray workers, {mode}"] = engine(
                    work / "images", work / "ray", args.model, jit, engine="ray", workers=2,
                    shard_size=shard, batch_size=args.batch_size,
                )  # fmt: skip
        print(f"{'':44} {'images/s (wall)':>16} {'in shards':>10} {'vs loop':>8}")
        for name, (wall, inner) in results.items():
            mode = "jit" if name.endswith("jit") else "PyNative"
            loop = results.get(f"single-threaded loop, batch 1, {mode}", (None,))[0]
            ratio = f"{wall / loop:.1f}x" if loop and "loop" not in name else ""
            shown = f"{inner:.1f}" if inner else ""
            print(f"{name:44} {wall:16.1f} {shown:>10} {ratio:>8}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if not args.no_ray:
            ray.shutdown()


if __name__ == "__main__":
    main()
