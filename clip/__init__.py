"""OpenAI's CLIP in MindSpore: available_models, load, tokenize."""

import os
from pathlib import Path

from .checkpoints import read_state_dict
from .device import select_device
from .hub import MODELS, SHIPPED, available_models, download
from .model import CLIP, build_model
from .tokenizer import tokenize
from .transform import Preprocess, transform

__all__ = ["available_models", "load", "tokenize", "CLIP", "Preprocess"]
__version__ = "0.1.0"


def load(
    name: str | os.PathLike,
    device: str | None = None,
    jit: bool = False,
    download_root: str | os.PathLike | None = None,
) -> tuple[CLIP, Preprocess]:
    """A CLIP model and its preprocess, from an OpenAI model name, "demo", or a checkpoint path.

    Like OpenAI's `device=`, this chooses where MindSpore runs, for the whole process: it sets
    MindSpore's device target (device, or the best one present) and, on CPU, turns on MindSpore's
    launch_blocking (its default busy-waiting launch threads take a core from the kernels).
    Nothing else outside the returned model is changed.
    """
    if str(name) in MODELS:
        path = download(str(name), download_root)
    elif str(name) in SHIPPED:
        path = SHIPPED[str(name)]
    elif Path(name).exists():
        path = Path(name)
    else:
        raise RuntimeError(
            f"Model {name} not found; available models = {available_models()}, "
            f"shipped: {list(SHIPPED)}, or a checkpoint path"
        )
    select_device(device)
    state_dict = read_state_dict(path)
    try:
        model = build_model(state_dict, release=True)  # empties state_dict
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    if jit:
        model.compile_encoders()
    return model, transform(model.visual.input_resolution)
