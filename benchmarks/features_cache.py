"""Image feature extraction throughput without the on-disk cache, on a cache miss, and on a hit.

The model is the shipped demo CLIP when clip/weights/demo.ckpt exists, else the tiny random ViT of
tests/fixtures; the inputs are synthetic shapes images (64x64). A hit reads one .npy file after
hashing the inputs' pixels and the model's weights (the weights once per model).
Run: .venv/bin/python benchmarks/features_cache.py [-n 512] [--repeat 3] [--model PATH]
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "clip" / "weights" / "demo.ckpt"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=512, help="images")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (medians reported)")
    parser.add_argument("--model", help="checkpoint path (default: the demo model, else tiny)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import mindspore
    import numpy as np

    import clip
    from clip.checkpoints import write_ckpt
    from clip.config import model_config
    from workbench import data
    from workbench.features import image_features, weights_digest

    mindspore.runtime.launch_blocking()  # the default busy-waiting threads leave kernels one core
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or (DEMO if DEMO.exists() else Path(tmp) / "tiny.ckpt")
        if path == Path(tmp) / "tiny.ckpt":
            weights = dict(np.load(REPO / "tests" / "fixtures" / "tiny_vit_weights.npz"))
            write_ckpt(weights, path, config=model_config(weights).to_json())
        model, preprocess = clip.load(path)
        images = data.shapes_dataset("test", args.n)
        image_features(model, preprocess, images[:8], progress=False)  # warm-up
        start = time.perf_counter()
        weights_digest(model)
        digest = time.perf_counter() - start
        times: dict[str, list[float]] = {"no cache": [], "cache miss": [], "cache hit": []}
        results = {}
        for rnd in range(args.repeat):  # interleaved, so that a busy machine hurts all alike
            cache = Path(tmp) / f"cache{rnd}"
            for name, where in (("no cache", None), ("cache miss", cache), ("cache hit", cache)):
                start = time.perf_counter()
                results[name] = image_features(
                    model, preprocess, images, cache=where, progress=False
                )
                times[name].append(time.perf_counter() - start)
            assert np.array_equal(results["cache hit"], results["cache miss"]), "cache corrupted"
    times = {name: statistics.median(values) for name, values in times.items()}
    print(f"model {Path(path).name}, {args.n} images of {images.images.shape[1:3]} px, "
          f"weights digest (once per model) {digest * 1000:.0f} ms")  # fmt: skip
    for name, seconds in times.items():
        print(f"{name:10s} {seconds:8.3f} s  {args.n / seconds:10.0f} images/s")
    print(f"cache hit vs no cache: {times['no cache'] / times['cache hit']:.0f}x faster; "
          f"miss overhead {times['cache miss'] / times['no cache'] - 1:+.1%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
