"""OpenAI's CLIP in MindSpore: available_models, load, tokenize."""

import os
import warnings
from pathlib import Path

from tqdm.auto import tqdm

from .checkpoints import model_files, read_checkpoint
from .config import AssumedConfigWarning, CLIPConfig, read_config
from .device import select_device
from .hub import MODELS, SHIPPED, available_models, download
from .model import CLIP, build_model
from .tokenizer import tokenize
from .transform import Preprocess, transform

__all__ = ["available_models", "load", "tokenize", "CLIP", "CLIPConfig", "Preprocess"]
__version__ = "0.1.0"
PROGRESS_BYTES = 64 << 20  # files this large take seconds to read and build: load shows progress


def load(
    name: str | os.PathLike,
    device: str | None = None,
    jit: bool = False,
    download_root: str | os.PathLike | None = None,
    *,
    config: "CLIPConfig | dict | str | os.PathLike | None" = None,
    progress: bool | None = None,
) -> tuple[CLIP, Preprocess]:
    """A CLIP model and its preprocess, from an OpenAI model name, "demo", a checkpoint file, or
    a model folder as open_clip or the Hugging Face hub save it.

    The architecture comes from config when given (an open_clip model name such as "ViT-H-14",
    a config dict or JSON file of open_clip or Hugging Face), else from the checkpoint's own
    config file, else from the weights' shapes with OpenAI's rules (QuickGELU, 64-wide heads),
    with an AssumedConfigWarning unless the file is OpenAI's own TorchScript .pt.

    Like OpenAI's `device=`, this chooses where MindSpore runs, for the whole process: it sets
    MindSpore's device target (device, or the best one present) and, on CPU, turns on MindSpore's
    launch_blocking (its default busy-waiting launch threads take a core from the kernels) and,
    unless set before, splits each kernel into one task per core where there are fewer than 25.
    Nothing else outside the returned model is changed.

    progress: a progress bar over reading and building; None shows it for weights
    files of PROGRESS_BYTES or more.
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
    if progress is None:
        weights = model_files(path)[0]
        progress = weights.is_file() and weights.stat().st_size >= PROGRESS_BYTES
    bar = tqdm(total=2, desc=f"reading {Path(path).name}", unit="step", disable=not progress)
    with bar:
        checkpoint = read_checkpoint(path)
        bar.update()
        bar.set_description("building the model")
        architecture = checkpoint.config if config is None else read_config(config)
        try:  # release: empties the state dict as the model takes its arrays
            model = build_model(checkpoint.state_dict, release=True, config=architecture)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error
        bar.update()
        bar.set_description(f"loaded {Path(path).name}")
    if architecture is None:
        warnings.warn(
            f"{path} has no config, so it is built with OpenAI's assumptions (QuickGELU, "
            "64-wide attention heads), which are wrong for most open_clip/LAION models; for such "
            "a model pass config= to clip.load: an open_clip model name (e.g. 'ViT-B-32', see "
            "clip.config.open_clip_names()), a config dict or a JSON config file",
            AssumedConfigWarning,
            stacklevel=2,
        )
    if jit:
        model.compile_encoders()
    built = model.config
    return model, transform(built.image_resolution, built.image_mean, built.image_std)
