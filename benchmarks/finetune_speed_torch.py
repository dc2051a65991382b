"""The reference for finetune_speed.py: OpenAI's CLIP trained by a plain PyTorch loop (symmetric
InfoNCE, AdamW without decay on gains/biases/embeddings, clipping at global norm 1, the logit
scale clamped) on one fixed batch; prints {"pairs_per_s": ...}. Runs in .venv-bench.

Usage: finetune_speed_torch.py DIR STEPS WARMUP (DIR holds weights.npz, images.npy, tokens.npy)
"""

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
from reference import openai_module  # noqa: E402


def main() -> None:
    folder, steps, warmup = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(2)
    state = {k: torch.from_numpy(v) for k, v in np.load(folder / "weights.npz").items()}
    model = openai_module("model").build_model(state).float().train()
    images = torch.from_numpy(np.load(folder / "images.npy"))
    tokens = torch.from_numpy(np.load(folder / "tokens.npy")).long()
    params = [p for p in model.parameters() if p.requires_grad]
    names = {id(p): n for n, p in model.named_parameters()}
    decay = [p for p in params if p.ndim >= 2 and "embedding" not in names[id(p)]]
    rest = [p for p in params if not (p.ndim >= 2 and "embedding" not in names[id(p)])]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=1e-5, betas=(0.9, 0.98), eps=1e-6)
    labels = torch.arange(len(images))
    stamps = []
    for _ in range(warmup + steps):
        logits, logits_t = model(images, tokens)
        loss = (torch.nn.functional.cross_entropy(logits, labels)
                + torch.nn.functional.cross_entropy(logits_t, labels)) / 2  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        stamps.append(time.perf_counter())
    print(json.dumps({"pairs_per_s": len(images) * steps / (stamps[-1] - stamps[warmup - 1])}))


if __name__ == "__main__":
    main()
