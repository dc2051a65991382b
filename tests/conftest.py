"""Shared fixtures: the committed reference files of tests/fixtures/."""

import os

import numpy as np
import pytest

os.environ.setdefault("MS_DEV_LAUNCH_BLOCKING", "1")

from helpers import FIXTURES, write_clip_ckpt  # noqa: E402 (after the environment it reads at import)


@pytest.fixture(scope="session", params=["vit", "resnet"])
def tiny(request) -> tuple[dict, dict]:
    """A tiny random CLIP's fp16 weights and OpenAI's outputs for its inputs."""
    weights = dict(np.load(FIXTURES / f"tiny_{request.param}_weights.npz"))
    io = dict(np.load(FIXTURES / f"tiny_{request.param}_io.npz"))
    return weights, io


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """The tiny random ViT CLIP (64 px) with a full 49408-token vocabulary: (model, preprocess)."""
    import clip

    weights = dict(np.load(FIXTURES / "tiny_vit_weights.npz"))
    rng = np.random.default_rng(0)
    weights["token_embedding.weight"] = rng.normal(0, 0.02, (49408, 128)).astype(np.float16)
    path = tmp_path_factory.mktemp("tiny_clip") / "tiny.ckpt"
    write_clip_ckpt(weights, path)
    return clip.load(path)


@pytest.fixture(scope="session")
def cifar_shapes(tmp_path_factory) -> tuple:
    """CIFAR-10 and CIFAR-100 binary directories written by workbench.demo.cifar from 100 distinct
    shapes images, tiled: (root, train split, test split), splits as (images, shape, combo)."""
    from workbench.demo import cifar, shapes

    images, shape, combo = cifar.as_cifar(shapes.generate("test", 100, 0, objects=1))
    orders = [np.arange(50000) % 100, (np.arange(10000) * 7 + 3) % 100]
    train, test = ((images[i], shape[i], combo[i]) for i in orders)
    root = tmp_path_factory.mktemp("cifar")
    fine = [c.replace(" ", "_") for c in shapes.COMBOS]
    cifar.write_cifar10(root / "cifar-10-batches-bin", train[:2], test[:2], shapes.SHAPES)
    cifar.write_cifar100(root / "cifar-100-binary", train, test, shapes.SHAPES, fine)
    return root, train, test


@pytest.fixture(params=["all heads at once", "head by head"])
def attention(request, monkeypatch):
    """Each of the two ways _attention runs: all heads at once (small batches) or head by head."""
    every = request.param.startswith("all")
    monkeypatch.setattr("clip.model.PER_HEAD_TOKENS", 10**9 if every else 0)
