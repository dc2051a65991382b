"""Train the demo CLIP on synthetic shapes from scratch, with workbench.finetune's training loop.

The shipped model: python -m workbench.demo.train --seed 0 --steps 1150 --out clip/weights/demo.ckpt
"""

import argparse
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor

from clip import tokenize
from clip.model import CLIP, CLIPConfig
from clip.transform import transform

from ..finetune.loop import fine_tune, save
from . import shapes
from .evaluate import evaluate

# The real BPE vocabulary and context: clip.load reads the result like any OpenAI checkpoint.
DEMO = CLIPConfig(embed_dim=64, image_resolution=shapes.SIZE, vision_layers=4, vision_width=128,
                  vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=64,
                  transformer_layers=3)  # fmt: skip
TEXT_LENGTH = 32  # every caption fits; causal attention makes the padding beyond eot irrelevant


def initialise(model: CLIP, seed: int) -> None:
    """OpenAI's initialize_parameters rules (for both transformers) from a seeded numpy RNG."""
    rng = np.random.default_rng(seed)
    patch = model.visual.conv1.weight.shape[-1]
    for name, param in model.parameters_and_names():
        tower = model.visual.transformer if name.startswith("visual.") else model.transformer
        width, proj_std = tower.width, tower.width**-0.5 * (2 * tower.layers) ** -0.5
        std = {
            "token_embedding.weight": 0.02,
            "positional_embedding": 0.01,
            "text_projection": width**-0.5,
            "visual.conv1.weight": (3 * patch * patch) ** -0.5,
            "visual.class_embedding": width**-0.5,
            "visual.positional_embedding": width**-0.5,
            "visual.proj": width**-0.5,
        }.get(name)
        blocks = {".attn.in_proj_weight": width**-0.5, ".mlp.c_fc.weight": (2 * width) ** -0.5,
                  ".attn.out_proj.weight": proj_std, ".mlp.c_proj.weight": proj_std}  # fmt: skip
        std = next((v for k, v in blocks.items() if name.endswith(k)), std)
        if std is not None:
            param.set_data(Tensor(rng.normal(0, std, param.shape).astype(np.float32)))
        elif name.endswith("bias"):
            param.set_data(Tensor(np.zeros(param.shape, np.float32)))
        elif not name.endswith((".weight", "logit_scale")):
            raise RuntimeError(f"initialise has no rule for parameter {name}")


class Batches:
    """Preprocessed images, token ids and eot positions of consecutive train samples."""

    def __init__(self, seed: int, batch_size: int):
        self.seed, self.batch_size, self.taken = seed, batch_size, 0
        self.preprocess = transform(shapes.SIZE)
        self.tokens: dict[str, np.ndarray] = {}

    def __call__(self, step: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Batch `step` (default: the next one): images (N, 3, 64, 64), token ids
        (N, TEXT_LENGTH), eot positions (N,)."""
        start = self.taken if step is None else step * self.batch_size
        samples = shapes.generate("train", self.batch_size, self.seed, start=start)
        self.taken = start + self.batch_size
        captions = [s.caption for s in samples]
        if new := sorted({c for c in captions if c not in self.tokens}):
            self.tokens.update(zip(new, tokenize(new).asnumpy(), strict=True))
        tokens = np.stack([self.tokens[c] for c in captions])
        if tokens[:, TEXT_LENGTH:].any():
            raise RuntimeError(f"a caption is longer than TEXT_LENGTH={TEXT_LENGTH} tokens")
        tokens = tokens[:, :TEXT_LENGTH]
        images = np.stack([self.preprocess(s.image) for s in samples])
        return Tensor(images), Tensor(tokens), Tensor(tokens.argmax(-1).astype(np.int32))


def train(
    seed: int = 0,
    steps: int = 1150,
    batch_size: int = 128,
    lr: float = 1e-3,
    warmup: int = 100,
    weight_decay: float = 0.1,
    clip_norm: float = 1.0,
    config: CLIPConfig = DEMO,
    jit: bool = True,
    progress: bool = True,
) -> tuple[CLIP, list[float]]:
    """A CLIP trained from scratch on the shapes train split; also the loss of every step."""
    ms.set_seed(seed)
    model = CLIP(config)
    initialise(model, seed)
    batches = Batches(seed, batch_size)
    history = fine_tune(model, batches, steps=steps, lr=lr, warmup=warmup,
                        weight_decay=weight_decay, clip_norm=clip_norm, jit=jit,
                        progress=progress, desc="train")  # fmt: skip
    return model, history.loss


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1150, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--out", default="clip/weights/demo.ckpt")
    parser.add_argument("--no-jit", action="store_true", help="run eagerly (PyNative)")
    args = parser.parse_args(argv)
    ms.runtime.launch_blocking()  # the default busy-waiting threads leave kernels one core
    start = time.perf_counter()
    model, losses = train(args.seed, args.steps, args.batch_size, args.lr, args.warmup,
                          jit=not args.no_jit)  # fmt: skip
    save(model, args.out, fp16=True)  # the shipped file: half the size, clip.load reads fp32
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s, "
          f"final loss {np.mean(losses[-20:]):.3f}; wrote {args.out}")  # fmt: skip
    for name, value in evaluate(model, transform(shapes.SIZE)).items():
        print(f"zero-shot {name:14s} {value:.1%}")


if __name__ == "__main__":
    main()
