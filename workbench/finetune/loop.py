"""The training loop: symmetric InfoNCE, AdamW, warm-up + cosine, clipping, accumulation, locked
towers, checkpoints that resume exactly, evaluation hooks, and msrun data parallelism."""

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mindspore as ms
import numpy as np
from mindspore import Tensor, amp, nn, ops
from tqdm.auto import tqdm

from clip.checkpoints import write_ckpt
from clip.checkpoints.mindspore_ckpt import CONFIG_KEY, read_ckpt
from clip.model import CLIP

MAX_LOGIT_SCALE = math.log(100)  # open_clip clamps the learnt temperature to at most 100
TEXT_TOWER = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
              "text_projection")  # fmt: skip
Batches = Callable[[int], tuple[Tensor, Tensor, Tensor]]  # step -> images, token ids, eot


def infonce(logits: Tensor) -> Tensor:
    """Symmetric InfoNCE of logits_per_image (N, N) whose matching pairs are on the diagonal."""
    labels = ops.arange(logits.shape[0], dtype=ms.int32)
    return (ops.cross_entropy(logits, labels) + ops.cross_entropy(logits.T, labels)) / 2


def contrastive_loss(model: CLIP, images: Tensor, tokens: Tensor, eot: Tensor):
    """Symmetric InfoNCE over a batch of matching (image, text) pairs, and the logits."""
    logits = model.logits(model.visual(images), model.encode_tokens(tokens, eot))
    return infonce(logits), logits


class AdamW(nn.Cell):
    """AdamW (decoupled weight decay, bias-corrected) with the learning rate passed at each step.

    MindSpore's nn.AdamWeightDecay has no bias correction, so it is not the AdamW of CLIP's papers.
    """

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


def weight_decays(params: list, weight_decay: float) -> list[float]:
    """Per parameter: no decay for gains, biases, embeddings and the logit scale, as in CLIP."""
    return [weight_decay if p.ndim >= 2 and "embedding" not in p.name else 0.0 for p in params]


def _blocks(name: str, prefix: str) -> int | None:
    rest = name[len(prefix) :] if name.startswith(prefix) else None
    return int(rest.split(".")[0]) if rest else None


def trainable(
    model: CLIP, *, lock_image: bool = False, lock_text: bool = False,
    projections_only: bool = False, unfreeze_last: int | None = None,
) -> list[ms.Parameter]:  # fmt: skip
    """The parameters a run trains: all, less a locked tower (LiT: lock_image), only the two
    projections and the logit scale, or in each unlocked tower only its last unfreeze_last blocks
    and what follows them."""
    resnet = model.config.resnet
    if lock_image and lock_text:
        raise ValueError("lock_image and lock_text together leave only the logit scale to train")
    if unfreeze_last is not None and (unfreeze_last < 0 or resnet):
        raise ValueError("unfreeze_last must be a count >= 0 of transformer blocks (a ResNet "
                         "image tower: use lock_image or projections_only)")  # fmt: skip
    projections = ("visual.attnpool.c_proj." if resnet else "visual.proj", "text_projection")
    chosen = []
    for name, param in model.parameters_and_names():
        if not param.requires_grad or (lock_image and name.startswith("visual.")):
            continue
        if lock_text and name.startswith(TEXT_TOWER):
            continue
        if projections_only and not name.startswith((*projections, "logit_scale")):
            continue
        if unfreeze_last is not None:
            image = name.startswith("visual.")
            tower = model.visual.transformer if image else model.transformer
            prefix = "visual.transformer.resblocks." if image else "transformer.resblocks."
            block = _blocks(name, prefix)
            early = ("visual.conv1", "visual.class_embedding", "visual.positional_embedding",
                     "visual.ln_pre", "token_embedding", "positional_embedding")  # fmt: skip
            if name.startswith(early) or (block is not None and
                                          block < tower.layers - unfreeze_last):  # fmt: skip
                continue
        chosen.append(param)
    return chosen


@dataclass
class History:
    """What a run measured: the loss and rate of every step, and each evaluation's values."""

    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # {"step": s, name: value, ...}


def _state_path(path: Path) -> Path:
    return path.with_name(f"{path.stem}.optim.ckpt")


def save(model: CLIP, path: str | os.PathLike, *, fp16: bool = False) -> None:
    """Write the model's weights (OpenAI's names) and config as a MindSpore .ckpt."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    weights = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    write_ckpt(weights, path, fp16=fp16, config=model.config.to_json())


def save_checkpoint(path, model: CLIP, optimizer: AdamW, step: int, run: dict) -> None:
    """The fp32 weights at path (clip.load reads it) and, beside it as NAME.optim.ckpt, the
    optimizer's moments, the step and the run's options, which --resume needs."""
    path = Path(path)
    save(model, path)
    state = {"step": np.int64(step), "t": optimizer.t.asnumpy()}
    for p, m, v in zip(optimizer.params, optimizer.m, optimizer.v, strict=True):
        state[f"m.{p.name}"], state[f"v.{p.name}"] = m.asnumpy(), v.asnumpy()
    write_ckpt(state, _state_path(path), config=json.dumps(run, sort_keys=True))


def _resume(path: Path, model: CLIP, optimizer: AdamW, run: dict) -> int:
    """Load a checkpoint written by save_checkpoint into model and optimizer; the step reached."""
    from clip.checkpoints import read_state_dict

    state_file = _state_path(path)
    if not path.is_file() or not state_file.is_file():
        raise FileNotFoundError(f"--resume needs {path} and {state_file} (written every "
                                "checkpoint_every steps); neither or one is there")  # fmt: skip
    state = read_ckpt(state_file)
    saved = json.loads(state.pop(CONFIG_KEY))
    if diff := {k: (saved.get(k), v) for k, v in run.items() if saved.get(k) != v}:
        raise ValueError(f"{path} was written by a run with other options (saved, now): {diff}; "
                         "resume with the same options")  # fmt: skip
    weights = read_state_dict(path)
    for name, param in model.parameters_and_names():
        param.set_data(Tensor(np.asarray(weights[name], np.float32)))
    for p, m, v in zip(optimizer.params, optimizer.m, optimizer.v, strict=True):
        m.set_data(Tensor(state[f"m.{p.name}"]))
        v.set_data(Tensor(state[f"v.{p.name}"]))
    optimizer.t.set_data(Tensor(state["t"]))
    return int(state["step"])


def _world() -> tuple[int, int]:
    """This process's rank and the number of processes (1 unless launched by msrun)."""
    if "MS_WORKER_NUM" not in os.environ:
        return 0, 1
    from mindspore.communication import get_group_size, get_rank, init

    try:
        return get_rank(), get_group_size()
    except RuntimeError:
        init()
        return get_rank(), get_group_size()


def _check_precision(precision: str) -> None:
    if precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be 'fp32', 'fp16' or 'bf16', got {precision!r}")
    device = ms.get_context("device_target")
    if precision != "fp32" and device == "CPU":
        raise ValueError(
            f"precision={precision!r} needs a GPU or Ascend device (MindSpore's amp with loss "
            "scaling); on CPU training runs in fp32: precision='fp32'"
        )


def _evaluate(model: CLIP, evals: dict, step: int, history: History) -> dict:
    model.set_train(False)
    row = {"step": step}
    for name, evaluate in evals.items():
        value = evaluate(model)
        row.update({f"{name} {k}": v for k, v in value.items()} if isinstance(value, dict)
                   else {name: float(value)})  # fmt: skip
    model.set_train(True)
    history.evals.append(row)
    return row


def fine_tune(
    model: CLIP,
    batches: Batches,
    *,
    steps: int,
    lr: float = 1e-5,
    warmup: int = 0,
    weight_decay: float = 0.1,
    clip_norm: float | None = 1.0,
    accumulate: int = 1,
    lock_image: bool = False,
    lock_text: bool = False,
    projections_only: bool = False,
    unfreeze_last: int | None = None,
    precision: str = "fp32",
    evals: dict[str, Callable[[CLIP], float | dict]] | None = None,
    eval_every: int | None = None,
    out: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    jit: bool = False,
    progress: bool = True,
    desc: str = "fine-tune",
    callback: Callable[[History], None] | None = None,
) -> History:
    """Train model in place on batches(step) (each a global batch of matching pairs) for steps
    optimiser steps; the loss and evaluations it measured.

    accumulate splits each batch into micro-batches whose gradients add up to the whole batch's
    (their features are cached, as in open_clip, so every pair still meets every negative); under
    msrun the batch is split over the processes the same way, gradients summed by all-reduce.
    evals run before training, every eval_every steps and at the end. With out, the model is
    written there at the end and every checkpoint_every steps with the optimizer state, so that
    resume=True continues a stopped run to the result of an uninterrupted one.
    """
    _check_precision(precision)
    if steps < 1 or accumulate < 1:
        raise ValueError(f"steps and accumulate must be >= 1, got {steps} and {accumulate}")
    if (checkpoint_every or resume) and out is None:
        raise ValueError("checkpoint_every and resume need out= (the checkpoint path)")
    evals = evals or {}
    rank, world = _world()
    chunks = world * accumulate
    params = trainable(model, lock_image=lock_image, lock_text=lock_text,
                       projections_only=projections_only, unfreeze_last=unfreeze_last)  # fmt: skip
    optimizer = AdamW(params, weight_decays(params, weight_decay))
    rates = schedule(lr, steps, warmup)
    run = dict(steps=steps, lr=lr, warmup=warmup, weight_decay=weight_decay, clip_norm=clip_norm,
               accumulate=accumulate, world=world, trained=[p.name for p in params])  # fmt: skip
    history, start = History(), 0
    if resume:
        start = _resume(Path(out), model, optimizer, run)
    image_locked = not any(p.name.startswith("visual.") for p in params)
    text_locked = not any(p.name.startswith(TEXT_TOWER) for p in params)

    def encode(images, tokens, eot):
        image, text = model.visual(images), model.encode_tokens(tokens, eot)
        # a locked tower needs no backward pass
        image = ops.stop_gradient(image) if image_locked else image
        return image, ops.stop_gradient(text) if text_locked else text

    def whole(images, tokens, eot):
        logits = model.logits(*encode(images, tokens, eot))
        return infonce(logits), logits

    def part(images, tokens, eot, cached_image, cached_text, mask):
        """The batch's loss with one micro-batch's features live and the others cached."""
        image, text = encode(images, tokens, eot)
        reps = cached_image.shape[0] // image.shape[0]
        image = ops.where(mask, ops.tile(image, (reps, 1)), cached_image)
        text = ops.where(mask, ops.tile(text, (reps, 1)), cached_text)
        return infonce(model.logits(image, text)), image

    scaler = None
    if precision != "fp32":  # GPU or Ascend (_check_precision): amp's O2 with dynamic loss scaling
        if chunks > 1 or jit:
            raise ValueError("mixed precision runs without accumulate, msrun or jit here")
        half = ms.float16 if precision == "fp16" else ms.bfloat16
        amp.auto_mixed_precision(model, "O2", dtype=half)
        scaler = amp.DynamicLossScaler(scale_value=2**16, scale_factor=2, scale_window=1000)

    def scaled(images, tokens, eot):
        loss, logits = whole(images, tokens, eot)
        return (loss if scaler is None else scaler.scale(loss)), logits

    grad_whole = ms.value_and_grad(scaled, None, optimizer.params, has_aux=True)
    grad_part = ms.value_and_grad(part, None, optimizer.params, has_aux=True)
    reduce = None
    if world > 1:
        reduce = nn.DistributedGradReducer(optimizer.params, mean=False, degree=world)
        gather = ops.AllGather()

    def update(grads, rate):
        if clip_norm is not None:
            norm = ops.sqrt(ops.stack([(g * g).sum() for g in grads]).sum())
            scale = ops.minimum(clip_norm / (norm + 1e-6), 1.0)  # clip_by_global_norm: 0-d -> 1-d
            grads = tuple(g * scale for g in grads)
        optimizer(grads, rate)
        ops.assign(model.logit_scale, ops.clamp(model.logit_scale, 0.0, MAX_LOGIT_SCALE))

    def step_whole(images, tokens, eot, rate):
        (loss, logits), grads = grad_whole(images, tokens, eot)
        if scaler is None:
            update(grads, rate)
        else:  # a step whose scaled gradients overflowed is skipped, and the scale lowered
            loss, grads = scaler.unscale(loss), scaler.unscale(grads)
            finite = amp.all_finite(grads)
            scaler.adjust(finite)
            if finite:
                update(grads, rate)
        hits = (logits.argmax(-1) == ops.arange(logits.shape[0], dtype=ms.int32)).astype(ms.float32)
        return loss, hits.mean()

    def grads_part(images, tokens, eot, cached_image, cached_text, mask):
        (loss, _), grads = grad_part(images, tokens, eot, cached_image, cached_text, mask)
        return loss, grads

    def apply(grads, rate):
        update(grads, rate)
        return optimizer.t

    encode_eval = ms.jit(encode) if jit else encode
    step_whole = ms.jit(step_whole) if jit else step_whole
    grads_part = ms.jit(grads_part) if jit else grads_part
    apply = ms.jit(apply) if jit else apply

    def step_chunks(images, tokens, eot, rate):
        size = images.shape[0] // chunks
        mine = range(rank * accumulate, (rank + 1) * accumulate)
        local = [(images[j * size : (j + 1) * size], tokens[j * size : (j + 1) * size],
                  eot[j * size : (j + 1) * size]) for j in mine]  # fmt: skip
        cached = [encode_eval(*chunk) for chunk in local]
        cached_image, cached_text = (ops.cat([c[i] for c in cached]) for i in (0, 1))
        if world > 1:  # every process's features, in global batch order
            cached_image, cached_text = gather(cached_image), gather(cached_text)
        total, grads = None, None
        for j, chunk in zip(mine, local, strict=True):
            mask = Tensor((np.arange(len(cached_image)) // size == j)[:, None])
            loss, g = grads_part(*chunk, cached_image, cached_text, mask)
            grads = g if grads is None else tuple(a + b for a, b in zip(grads, g, strict=True))
            total = loss
        if reduce is not None:
            grads = reduce(grads)
        apply(grads, rate)
        logits = model.logits(cached_image, cached_text)
        hits = (logits.argmax(-1) == ops.arange(logits.shape[0], dtype=ms.int32)).astype(ms.float32)
        return total, hits.mean()

    model.set_train(True)
    report = rank == 0
    if evals and start == 0:
        _evaluate(model, evals, 0, history)
    bar = tqdm(range(start, steps), desc=desc, disable=not (progress and report),
               initial=start, total=steps)  # fmt: skip
    for i in bar:
        images, tokens, eot = batches(i)
        if images.shape[0] % chunks:
            raise ValueError(f"batch size {images.shape[0]} is not divisible by accumulate x "
                             f"processes = {chunks}")  # fmt: skip
        rate = Tensor(rates[i], ms.float32)
        run_step = step_whole if chunks == 1 else step_chunks
        loss, accuracy = run_step(images, tokens, eot, rate)
        history.loss.append(float(loss.asnumpy()))
        history.lr.append(rates[i])
        if not np.isfinite(history.loss[-1]):
            raise RuntimeError(f"loss is {history.loss[-1]} at step {i}; lower the learning rate")
        bar.set_postfix(loss=f"{history.loss[-1]:.3f}", acc=f"{float(accuracy.asnumpy()):.2f}")
        done = i + 1
        if evals and report and eval_every and done % eval_every == 0 and done < steps:
            _evaluate(model, evals, done, history)
        if report and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            save_checkpoint(out, model, optimizer, done, run)
        if callback is not None and report:
            callback(history)
    if evals and report:
        _evaluate(model, evals, steps, history)
        if callback is not None:
            callback(history)
    model.set_train(False)
    if out is not None and report:
        save_checkpoint(out, model, optimizer, steps, run)
    return history
