"""safetensors files, through the safetensors package (which MindSpore itself depends on)."""

import os
from pathlib import Path

import numpy as np
import safetensors

from .common import BF16, CheckpointError

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": BF16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}  # fmt: skip


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file, in its stored dtype (BF16 for bfloat16)."""
    try:
        entries = safetensors.deserialize(Path(path).read_bytes())
    except safetensors.SafetensorError as err:
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({err})") from err
    tensors = {}
    for name, entry in entries:
        if entry["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {entry['dtype']}")
        data = np.frombuffer(entry["data"], _DTYPES[entry["dtype"]])
        tensors[name] = data.reshape(entry["shape"])
    return tensors
