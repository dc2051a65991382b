"""MindSpore .ckpt files (protobuf, no code), read and written with MindSpore's own functions."""

import os
import tempfile
from pathlib import Path

import mindspore
import numpy as np

from .common import BF16, CheckpointError


def read_ckpt(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every parameter of a MindSpore .ckpt, in its stored dtype (BF16 for bfloat16)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(path)
        if source.suffix != ".ckpt":  # load_checkpoint insists on the suffix
            source = Path(tmp, "model.ckpt")
            source.symlink_to(Path(path).resolve())
        try:
            params = mindspore.load_checkpoint(str(source))
        except (ValueError, RuntimeError, TypeError) as err:
            raise CheckpointError(f"{path}: corrupt or truncated MindSpore .ckpt ({err})") from err
    arrays = {name: p.asnumpy() for name, p in params.items()}
    bf16 = {name for name, p in params.items() if p.dtype == mindspore.bfloat16}
    return {name: a.view(np.uint16).view(BF16) if name in bf16 else a for name, a in arrays.items()}


def write_ckpt(
    state_dict: dict[str, np.ndarray], path: str | os.PathLike, fp16: bool = False
) -> None:
    """Save a state dict as a MindSpore .ckpt under its own names; floats in fp16 if asked."""
    path = Path(path)
    params = []
    for name, array in state_dict.items():
        array = np.asarray(array)
        if fp16 and np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float16)
        params.append({"name": name, "data": mindspore.Tensor(array)})
    partial = path.with_name(f".{path.name}.partial.ckpt")  # save_checkpoint wants the suffix
    try:
        mindspore.save_checkpoint(params, str(partial))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
