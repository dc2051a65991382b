"""Checkpoint files of every format users hold -> {OpenAI name: numpy array}; canonical .ckpt out.

The format is told from the file's bytes, never its name: zip (torch.save, TorchScript, .npz),
pickle (legacy torch.save), safetensors header, MindSpore .ckpt protobuf. A model folder as
open_clip or the Hugging Face hub saves it (or a weights file in one) also gives its config.
"""

import io
import json
import math
import os
import zipfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..config import CLIPConfig, UnsupportedModel, from_hf, from_open_clip, model_config
from .common import BF16, CheckpointError, bf16_to_fp32, dtype_name
from .mindspore_ckpt import CONFIG_KEY, read_ckpt, write_ckpt
from .names import canonical, naming
from .safetensors_file import read_safetensors
from .torch_formats import BoundedZip, read_torch_legacy, read_torch_zip, zip_kind

__all__ = [
    "FORMATS", "Checkpoint", "CheckpointError", "detect_format", "read_checkpoint",
    "read_state_dict", "write_ckpt",
]  # fmt: skip

FORMATS = {
    "torchscript": "TorchScript archive (OpenAI .pt)",
    "torch-zip": "torch.save zip",
    "torch-legacy": "torch.save legacy pickle",
    "safetensors": "safetensors",
    "mindspore-ckpt": "MindSpore .ckpt",
    "npz": "numpy .npz",
}

_WEIGHT_SUFFIXES = {".pt", ".bin", ".safetensors", ".ckpt", ".npz"}


def _npy(data: bytes, where: str) -> np.ndarray:
    """The array of a .npy file's bytes, its size checked against its header before any use."""
    file = io.BytesIO(data)
    version = np.lib.format.read_magic(file)
    if version not in ((1, 0), (2, 0)):
        raise CheckpointError(f"{where}: unsupported .npy version {version}; re-save with np.savez")
    read_header = np.lib.format.read_array_header_1_0
    if version == (2, 0):
        read_header = np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(file)
    if dtype.hasobject:
        raise CheckpointError(f"{where}: holds Python objects (a pickle), refused; no weights do")
    count, offset = math.prod(shape), file.tell()
    if count * dtype.itemsize != len(data) - offset:  # np.load would allocate the header's size
        raise CheckpointError(
            f"{where}: its header says {count * dtype.itemsize:,} bytes of data, it holds "
            f"{len(data) - offset:,}"
        )
    array = np.frombuffer(data, dtype, count, offset)
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


def _read_npz(path) -> dict[str, np.ndarray]:
    """The arrays of a .npz, each member inflated with a bound (a deflate bomb is refused)."""
    with BoundedZip(path) as archive:
        return {n[:-4]: _npy(archive.read(n), f"{path}: {n}") for n in archive.namelist()}


_READERS = {
    "torchscript": read_torch_zip,
    "torch-zip": read_torch_zip,
    "torch-legacy": read_torch_legacy,
    "safetensors": read_safetensors,
    "mindspore-ckpt": read_ckpt,
    "npz": _read_npz,
}


class Checkpoint(NamedTuple):
    """A checkpoint as read: its format, naming convention, canonical state dict, stored dtypes,
    and its architecture: from its config file or stored config, OpenAI's rules for OpenAI's
    TorchScript .pt, else None (the shapes leave activation and heads open)."""

    format: str
    naming: str
    state_dict: dict[str, np.ndarray]
    dtypes: Counter
    config: CLIPConfig | None = None


# What open_clip and the Hugging Face hub save in a model folder: a config and weights files, by
# preference
_FOLDERS = {
    "open_clip_config.json": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    "config.json": ("model.safetensors", "pytorch_model.bin"),
}


def model_files(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """The weights file and config file (or None) of a checkpoint file, or of a model folder."""
    path = Path(path)
    for config_name, weights_names in _FOLDERS.items():
        if path.is_dir() and (path / config_name).is_file():
            if found := [path / n for n in weights_names if (path / n).is_file()]:
                return found[0], path / config_name
            raise CheckpointError(
                f"{path}: has {config_name} but none of {', '.join(weights_names)}"
            )
        if path.name in weights_names and (path.parent / config_name).is_file():
            return path, path.parent / config_name
    return path, None


def read_config_file(path: Path) -> CLIPConfig:
    """The architecture an open_clip_config.json or a Hugging Face config.json gives."""
    try:
        data = json.loads(path.read_text())
        if path.name == "open_clip_config.json":
            return from_open_clip(data)
        processor = path.parent / "preprocessor_config.json"
        return from_hf(data, json.loads(processor.read_text()) if processor.is_file() else None)
    except UnsupportedModel as err:
        raise UnsupportedModel(f"{path}: {err}") from err
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a readable model config ({err})") from err


def _is_ckpt(head: bytes) -> bool:
    """A protobuf `Checkpoint`: field 1 (a value), whose own field 1 is a short tag string."""
    if head[:1] != b"\n":
        return False
    i = 1
    while i < len(head) and head[i] & 0x80:  # the value's length, a varint
        i += 1
    tag = head[i + 1 : i + 3]  # the value's first field and the tag's length
    return len(tag) == 2 and tag[0] == 0x0A and 0 < tag[1] < 0x80


def _text_error(path: Path, head: bytes) -> CheckpointError | None:
    """The error for a text file (an error page, a Git LFS pointer, ...), or None if binary."""
    text = head.decode("utf-8", "ignore")
    if b"\0" in head or len(text) < max(len(head) - 3, 1):  # a cut multi-byte character may end it
        return None
    if text.startswith("version https://git-lfs"):
        return CheckpointError(f"{path}: is a Git LFS pointer, not weights; run `git lfs pull`")
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return CheckpointError(f"{path}: is a text file ({first!r}...), not a checkpoint")


def detect_format(path: str | os.PathLike) -> str:
    """The format of the file at `path` (a key of FORMATS), from its bytes."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES)
        hint = f"; pass a weights file in it, e.g. {path / inside[0]}" if inside else ""
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file{hint}")
    try:
        with open(path, "rb") as file:
            head = file.read(1024)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err.strerror})") from err
    if not head:
        raise CheckpointError(f"{path}: is empty (0 bytes); the download or copy was cut short")
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except Exception as err:  # BadZipFile, or what a damaged directory makes zipfile trip on
            raise CheckpointError(f"{path}: is a truncated or corrupt zip archive ({err})") from err
        if kind := zip_kind(names):
            return kind
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise CheckpointError(f"{path}: is a zip archive with neither data.pkl nor .npy arrays")
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "torch-legacy"
    header = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and 0 < header <= path.stat().st_size - 8:
        return "safetensors"
    if error := _text_error(path, head):
        raise error
    if _is_ckpt(head):
        return "mindspore-ckpt"
    if len(head) < 16:
        raise CheckpointError(
            f"{path}: is only {len(head)} bytes, too short for a checkpoint; the download or copy "
            "was cut short"
        )
    raise CheckpointError(
        f"{path}: unknown format (starts with {head[:16]!r}); expected a PyTorch .pt/.bin, "
        "safetensors, MindSpore .ckpt or numpy .npz file"
    )


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read any supported checkpoint file or model folder: format, naming, canonical state dict,
    stored dtypes, config."""
    path, config_file = model_files(path)
    config = None if config_file is None else read_config_file(config_file)
    fmt = detect_format(path)
    try:
        tensors = _READERS[fmt](path)
    except CheckpointError:
        raise
    except Exception as err:  # whatever a damaged file makes a reader trip on: one clear error
        raise CheckpointError(f"{path}: corrupt {FORMATS[fmt]} file ({err})") from err
    stored = tensors.pop(CONFIG_KEY, None) if fmt == "mindspore-ckpt" else None
    if stored is not None and config is None:
        try:
            config = CLIPConfig.from_json(stored)
        except ValueError as err:
            raise CheckpointError(f"{path}: holds a corrupt {CONFIG_KEY} ({err})") from err
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    convention = naming(tensors)
    tensors = canonical(tensors, path)
    if config is None and fmt == "torchscript":  # OpenAI's own format: its rules are the config
        try:
            config = model_config(tensors)
        except ValueError:
            pass  # not a CLIP: building it says what is missing
    dtypes = Counter(dtype_name(a) for a in tensors.values())
    state_dict = {k: bf16_to_fp32(v) if v.dtype == BF16 else v for k, v in tensors.items()}
    return Checkpoint(fmt, convention, state_dict, dtypes, config)


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """{OpenAI name: array} from any supported checkpoint; bfloat16 widened to float32 exactly."""
    return read_checkpoint(path).state_dict
