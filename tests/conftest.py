"""Shared fixtures: the committed reference files of tests/fixtures/."""

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MS_DEV_LAUNCH_BLOCKING", "1")

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def relative_error(actual, expected) -> float:
    """Max abs error over max abs value, DESIGN.md's measure for features."""
    return float(np.abs(np.asarray(actual) - expected).max() / np.abs(expected).max())


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="session", params=["vit", "resnet"])
def tiny(request) -> tuple[dict, dict]:
    """A tiny random CLIP's fp16 weights and OpenAI's outputs for its inputs."""
    weights = dict(np.load(FIXTURES / f"tiny_{request.param}_weights.npz"))
    io = dict(np.load(FIXTURES / f"tiny_{request.param}_io.npz"))
    return weights, io
