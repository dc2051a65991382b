"""MindSpore .ckpt files (protobuf, no code), read and written with MindSpore's own functions.

The .ckpt files this project writes may hold the model's config as a JSON string, CONFIG_KEY.
"""

import os
import tempfile
from pathlib import Path

import mindspore
import numpy as np

from .common import BF16, CheckpointError

CONFIG_KEY = "clip_config"


def read_ckpt(path: str | os.PathLike) -> dict[str, np.ndarray | str]:
    """Every parameter of a MindSpore .ckpt, in its stored dtype (BF16 for bfloat16), and the
    config string if it holds one (other strings saved beside the weights are not weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(path)
        if source.suffix != ".ckpt":  # load_checkpoint insists on the suffix
            source = Path(tmp, "model.ckpt")
            source.symlink_to(Path(path).resolve())
        try:
            params = mindspore.load_checkpoint(str(source))
        except (ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{path}: corrupt or truncated MindSpore .ckpt ({err})") from err
    config = params.get(CONFIG_KEY)
    params = {name: p for name, p in params.items() if not isinstance(p, str)}
    bf16 = {name for name, p in params.items() if p.dtype == mindspore.bfloat16}
    arrays = {name: p.asnumpy() for name, p in params.items()}
    arrays = {n: a.view(np.uint16).view(BF16) if n in bf16 else a for n, a in arrays.items()}
    return arrays if not isinstance(config, str) else {**arrays, CONFIG_KEY: config}


def write_ckpt(
    state_dict: dict[str, np.ndarray],
    path: str | os.PathLike,
    fp16: bool = False,
    config: str | None = None,
) -> None:
    """Save a state dict as a MindSpore .ckpt under its own names; floats in fp16 if asked; a
    config (CLIPConfig.to_json) is stored beside the weights."""
    path = Path(path)
    params = []
    for name, array in state_dict.items():
        array = np.asarray(array)
        if fp16 and np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float16)
        params.append({"name": name, "data": mindspore.Tensor(array)})
    partial = path.with_name(f".{path.name}.partial.ckpt")  # save_checkpoint wants the suffix
    try:
        extra = None if config is None else {CONFIG_KEY: config}
        mindspore.save_checkpoint(params, str(partial), append_dict=extra)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
