"""Train the demo CLIP on synthetic shapes: symmetric InfoNCE, AdamW, warm-up + cosine, clipping.

The shipped model: python -m workbench.demo.train --seed 0 --steps 1150 --out clip/weights/demo.ckpt
"""

import argparse
import math
import time
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops
from tqdm.auto import tqdm

from clip import tokenize
from clip.checkpoints import write_ckpt
from clip.model import CLIP, CLIPConfig
from clip.transform import transform

from . import shapes
from .evaluate import evaluate

# The real BPE vocabulary and context: clip.load reads the result like any OpenAI checkpoint.
DEMO = CLIPConfig(embed_dim=64, image_resolution=shapes.SIZE, vision_layers=4, vision_width=128,
                  vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=64,
                  transformer_layers=3)  # fmt: skip
TEXT_LENGTH = 32  # every caption fits; causal attention makes the padding beyond eot irrelevant
MAX_LOGIT_SCALE = math.log(100)


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


def contrastive_loss(model: CLIP, images: Tensor, tokens: Tensor, eot: Tensor):
    """Symmetric InfoNCE over a batch of matching (image, text) pairs, and the logits."""
    logits = model.logits(model.visual(images), model.encode_tokens(tokens, eot))
    labels = ops.arange(logits.shape[0], dtype=ms.int32)
    loss = (ops.cross_entropy(logits, labels) + ops.cross_entropy(logits.T, labels)) / 2
    return loss, logits


class AdamW(nn.Cell):
    """AdamW (decoupled weight decay) with the learning rate passed at each step."""

    def __init__(self, params: list, decay: list[float], betas=(0.9, 0.98), eps: float = 1e-6):
        super().__init__()
        self.params = ms.ParameterTuple(params)
        self.m = self.params.clone("m", "zeros")
        self.v = self.params.clone("v", "zeros")
        self.decay, self.betas, self.eps = tuple(decay), betas, eps
        self.t = ms.Parameter(Tensor(0.0, ms.float32), name="t", requires_grad=False)

    def construct(self, grads, lr):
        b1, b2 = self.betas
        t = self.t + 1
        ops.assign(self.t, t)
        c1, c2 = 1 - ops.pow(b1, t), 1 - ops.pow(b2, t)
        for p, m, v, g, wd in zip(self.params, self.m, self.v, grads, self.decay):  # noqa: B905 (jit: no strict)
            ops.assign(m, b1 * m + (1 - b1) * g)
            ops.assign(v, b2 * v + (1 - b2) * g * g)
            ops.assign(p, p - lr * ((m / c1) / (ops.sqrt(v / c2) + self.eps) + wd * p))
        return t


def schedule(lr: float, steps: int, warmup: int) -> list[float]:
    """Linear warm-up to lr over warmup steps, then cosine decay to 0."""
    return [
        lr * (s + 1) / warmup if s < warmup
        else lr * 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        for s in range(steps)
    ]  # fmt: skip


class Batches:
    """Preprocessed images, token ids and eot positions of consecutive train samples."""

    def __init__(self, seed: int, batch_size: int):
        self.seed, self.batch_size, self.taken = seed, batch_size, 0
        self.preprocess = transform(shapes.SIZE)
        self.tokens: dict[str, np.ndarray] = {}

    def __call__(self) -> tuple[Tensor, Tensor, Tensor]:
        """The next batch: images (N, 3, 64, 64), token ids (N, TEXT_LENGTH), eot positions (N,)."""
        samples = shapes.generate("train", self.batch_size, self.seed, start=self.taken)
        self.taken += self.batch_size
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
    model.set_train(True)
    params = model.trainable_params()
    # no decay for gains, biases, embeddings and the logit scale, as in CLIP's training code
    decay = [weight_decay if p.ndim >= 2 and "embedding" not in p.name else 0.0 for p in params]
    optimizer = AdamW(params, decay)
    rates = schedule(lr, steps, warmup)

    def forward(images, tokens, eot):
        return contrastive_loss(model, images, tokens, eot)

    grad_fn = ms.value_and_grad(forward, None, optimizer.params, has_aux=True)

    def step(images, tokens, eot, rate):
        (loss, logits), grads = grad_fn(images, tokens, eot)
        norm = ops.sqrt(ops.stack([(g * g).sum() for g in grads]).sum())
        scale = ops.minimum(clip_norm / (norm + 1e-6), 1.0)  # ops.clip_by_global_norm makes 0-d 1-d
        optimizer(tuple(g * scale for g in grads), rate)
        ops.assign(model.logit_scale, ops.clamp(model.logit_scale, 0.0, MAX_LOGIT_SCALE))
        hits = (logits.argmax(-1) == ops.arange(logits.shape[0], dtype=ms.int32)).astype(ms.float32)
        return loss, hits.mean()

    step = ms.jit(step) if jit else step
    batches = Batches(seed, batch_size)
    losses = []
    bar = tqdm(range(steps), desc="train", disable=not progress)
    for i in bar:
        loss, accuracy = step(*batches(), Tensor(rates[i], ms.float32))
        losses.append(float(loss.asnumpy()))
        if not np.isfinite(losses[-1]):
            raise RuntimeError(f"loss is {losses[-1]} at step {i}; lower --lr")
        bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{float(accuracy.asnumpy()):.2f}")
    model.set_train(False)
    return model, losses


def save(model: CLIP, path: str | Path) -> None:
    """Write the model's weights (OpenAI's names) and config as an fp16 MindSpore .ckpt."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    weights = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    write_ckpt(weights, path, fp16=True, config=model.config.to_json())


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
    save(model, args.out)
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s, "
          f"final loss {np.mean(losses[-20:]):.3f}; wrote {args.out}")  # fmt: skip
    for name, value in evaluate(model, transform(shapes.SIZE)).items():
        print(f"zero-shot {name:14s} {value:.1%}")


if __name__ == "__main__":
    main()
