"""What several test modules share: paths of the committed fixtures, measures, random weights."""

import dataclasses
import json
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pyarrow.parquet as pq

from clip.checkpoints import write_ckpt
from clip.model import CLIPConfig, model_config

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def relative_error(actual, expected) -> float:
    """Max abs error over max abs value, DESIGN.md's measure for features."""
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64, written independently of the code under test."""
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def random_state_dict(shapes: dict, rng: np.random.Generator | None = None) -> dict:
    """A state dict with the given names and shapes: random values, or empty placeholders."""
    if rng is None:
        return {k: np.empty(v, np.float16) for k, v in shapes.items()}
    state = {k: (rng.standard_normal(v, np.float32) * 0.02) for k, v in shapes.items()}
    for name in state:
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight")):
            state[name] += 1
        if name.endswith("running_var") or name == "ln_final.weight":
            state[name] = np.abs(state[name]) + 1
    state["logit_scale"] = np.float32(np.log(100))
    return state


def write_clip_ckpt(weights: dict, path, fp16: bool = False) -> None:
    """A .ckpt of an OpenAI-architecture CLIP holding its config, so loading it assumes nothing."""
    write_ckpt(weights, path, fp16=fp16, config=model_config(weights).to_json())


def openai_arguments(config: CLIPConfig) -> dict:
    """A config as the arguments of OpenAI's CLIP constructor (heads as a number, lists)."""
    arguments = dataclasses.asdict(config)
    for name in ("vision_head_width", "transformer_head_width", "vision_mlp_width",
                 "transformer_mlp_width", "activation", "image_mean", "image_std"):  # fmt: skip
        del arguments[name]
    if config.resnet:
        arguments["vision_layers"] = list(config.vision_layers)
    return {**arguments, "transformer_heads": config.transformer_heads}


def run_isolated(code: str, *, memory_mib: int = 2048, timeout: float = 60) -> CompletedProcess:
    """Run Python code in a fresh interpreter (the repository on its path) with its address space
    capped at memory_mib and a timeout, for inputs that may crash, hang or exhaust memory: a crash
    shows as a negative returncode or a MemoryError in stderr, not as a dead test session."""
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (memory_mib << 20, memory_mib << 20))

    return subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=cap,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).resolve().parents[1],
    )


def read_collection(out):
    """All shards' image and text embeddings and metadata rows, in manifest order."""
    manifest = json.loads((out / "manifest.json").read_text())
    images, texts, rows = [], [], []
    for shard in manifest["shards"]:
        n = shard["shard"]
        images.append(np.load(out / "img_emb" / f"img_emb_{n:06d}.npy"))
        if (out / "text_emb").exists():
            texts.append(np.load(out / "text_emb" / f"text_emb_{n:06d}.npy"))
        rows += pq.read_table(out / "metadata" / f"metadata_{n:06d}.parquet").to_pylist()
    return np.concatenate(images), (np.concatenate(texts) if texts else None), rows
