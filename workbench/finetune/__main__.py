"""Fine-tune a CLIP on image-text pairs; under msrun, data-parallel over its processes.

python -m workbench.finetune --data pairs.csv --model demo --out ft.ckpt [options]
msrun --worker_num=2 --local_worker_num=2 --master_port=8128 --join=True --log_dir=logs \
    python -m workbench.finetune --data pairs.csv --model demo --out ft.ckpt [options]
"""

import argparse
import json
import os

import mindspore as ms

import clip

from .data import PairBatches, open_pairs, split
from .evaluation import recall_hook, zero_shot_hook
from .loop import fine_tune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--data", required=True,
        help="a .csv/.jsonl/.parquet of (path, caption), a folder of class folders, a collection "
             "folder, or 'shapes'")  # fmt: skip
    add("--model", default="demo", help="a model name or checkpoint clip.load reads")
    add("--out", required=True, help="the fine-tuned .ckpt (clip.load reads it)")
    add("--steps", type=int, default=100, help="optimiser steps")
    add("--batch-size", type=int, default=32, help="pairs per step, over all processes")
    add("--accumulate", type=int, default=1, help="micro-batches per step")
    add("--lr", type=float, default=1e-5)
    add("--warmup", type=int, default=10, help="warm-up steps")
    add("--weight-decay", type=float, default=0.1)
    add("--clip-norm", type=float, default=1.0, help="global gradient norm clip")
    add("--seed", type=int, default=0, help="data order and validation split")
    add("--val-fraction", type=float, default=0.1, help="pairs held out for recall@k")
    add("--lock-image", action="store_true", help="LiT: train the text tower only")
    add("--lock-text", action="store_true")
    add("--projections-only", action="store_true")
    add("--unfreeze-last", type=int, default=None, help="train only the last N blocks per tower")
    add("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    add("--eval-every", type=int, default=None, help="steps between recall@k evaluations")
    add("--checkpoint-every", type=int, default=None, help="steps between checkpoints")
    add("--resume", action="store_true", help="continue the run whose checkpoint is --out")
    add("--jit", action="store_true", help="compile the step as a MindSpore graph")
    add("--history", default=None, help="write the loss and evaluations here as JSON")
    args = parser.parse_args(argv)

    if "MS_WORKER_NUM" in os.environ:  # launched by msrun: one process of a data-parallel run
        from mindspore.communication import get_rank, init

        init()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL,
                                     gradients_mean=False)  # fmt: skip
        rank = get_rank()
    else:
        rank = 0
    model, preprocess = clip.load(args.model)
    pairs = open_pairs(args.data)
    train, held_out = split(pairs, val_fraction=args.val_fraction, seed=args.seed)
    evals = {"recall": recall_hook(preprocess, held_out)}
    if pairs.classes is not None:
        evals["zero-shot"] = zero_shot_hook(preprocess, list(held_out.images), held_out.labels,
                                            pairs.classes)  # fmt: skip
    history = fine_tune(
        model, PairBatches(train, preprocess, args.batch_size, seed=args.seed,
                           context_length=model.context_length),
        steps=args.steps, lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
        clip_norm=args.clip_norm, accumulate=args.accumulate, lock_image=args.lock_image,
        lock_text=args.lock_text, projections_only=args.projections_only,
        unfreeze_last=args.unfreeze_last, precision=args.precision, evals=evals,
        eval_every=args.eval_every, out=args.out, checkpoint_every=args.checkpoint_every,
        resume=args.resume, jit=args.jit,
    )  # fmt: skip
    if rank:
        return
    if args.history:
        with open(args.history, "w") as file:
            json.dump({"loss": history.loss, "evals": history.evals}, file)
    for row in history.evals:
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                       for k, v in row.items()))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
