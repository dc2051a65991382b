"""MindSpore .ckpt files (protobuf, no code): read here field by field, written with MindSpore.

A .ckpt is the protobuf `Checkpoint { repeated Value value = 1; }`, each `Value` a tag and a
`TensorProto { dims, tensor_type, tensor_content }`; a large tensor is split over consecutive
values of one tag. MindSpore's own loader trusts `dims` (a file whose content is shorter than its
dims overflows a heap buffer), so read_ckpt decodes each value with MindSpore's protobuf classes,
checks every field against the others and the file's size, and builds the numpy arrays itself:
no MindSpore C++ code sees the file's bytes.

The .ckpt files this project writes may hold the model's config as a JSON string, CONFIG_KEY.
"""

import math
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import mindspore
import numpy as np
from google.protobuf.message import DecodeError
from mindspore.train.checkpoint_pb2 import Checkpoint

from .common import BF16, CheckpointError

CONFIG_KEY = "clip_config"

# tensor_type as save_checkpoint writes it (str of the MindSpore dtype) -> its little-endian dtype
_DTYPES = {
    "Bool": np.dtype("?"), "Int8": np.dtype("i1"), "UInt8": np.dtype("u1"),
    "Int16": np.dtype("<i2"), "UInt16": np.dtype("<u2"), "Int32": np.dtype("<i4"),
    "UInt32": np.dtype("<u4"), "Int64": np.dtype("<i8"), "UInt64": np.dtype("<u8"),
    "Float16": np.dtype("<f2"), "Float32": np.dtype("<f4"), "Float64": np.dtype("<f8"),
    "BFloat16": BF16,
}  # fmt: skip
_STR = "str"  # append_dict's strings: numpy "U" bytes (UTF-32-LE), dims [0]
_CRC = b"crc_num"  # save_checkpoint(crc_check=True) ends the file with it and a 10-byte CRC
_MAX_DIMS = 32  # numpy's smallest limit on dimensions


def _varint(data: mmap.mmap, i: int, end: int, path: Path) -> tuple[int, int]:
    """The protobuf varint at data[i:end] and the offset after it."""
    value = 0
    for shift in range(0, 70, 7):
        if i >= end:
            raise CheckpointError(f"{path}: truncated MindSpore .ckpt (cut inside a field header)")
        value |= (data[i] & 0x7F) << shift
        i += 1
        if not data[i - 1] & 0x80:
            return value, i
    raise CheckpointError(f"{path}: corrupt MindSpore .ckpt (a varint longer than 10 bytes)")


def _values(data: mmap.mmap, end: int, path: Path) -> Iterator:
    """Each `Checkpoint.value` in turn, parsed alone so that the file is never in memory twice."""
    i = 0
    while i < end:
        start = i
        key, i = _varint(data, i, end, path)
        if key != 0x0A:  # field 1, length-delimited: nothing else is in a Checkpoint
            raise CheckpointError(
                f"{path}: corrupt, encrypted or not a MindSpore .ckpt (protobuf key {key:#x} at "
                f"byte {start}, expected a value)"
            )
        size, i = _varint(data, i, end, path)
        if i + size > end:
            raise CheckpointError(
                f"{path}: truncated MindSpore .ckpt (a value at byte {start} needs {size:,} bytes, "
                f"{end - i:,} are left); the download or copy was cut short"
            )
        try:
            value = Checkpoint.Value.FromString(data[i : i + size])
            _ = value.tag, value.tensor.tensor_type  # decoded here: bad UTF-8 raises now
        except (DecodeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: corrupt MindSpore .ckpt value at byte {start} ({err})"
            ) from err
        i += size
        yield value


def _array(path: Path, tag: str, parts: list, file_size: int) -> np.ndarray | str:
    """The array (or string) of one tag's values, after checking dims, dtype and length agree."""
    first = parts[0].tensor
    dims, kind = list(first.dims), first.tensor_type
    if any(list(p.tensor.dims) != dims or p.tensor.tensor_type != kind for p in parts):
        raise CheckpointError(f"{path}: {tag} is split over values of different shapes or dtypes")
    content = bytearray().join(p.tensor.tensor_content for p in parts)  # writable, one copy
    if kind == _STR:
        try:
            return content.decode("utf-32-le").rstrip("\0")  # numpy pads "U" strings with NULs
        except UnicodeDecodeError as err:
            raise CheckpointError(f"{path}: {tag} is a corrupt string ({err})") from err
    dtype = _DTYPES.get(kind)
    if dtype is None:
        raise CheckpointError(
            f"{path}: {tag} has dtype {kind!r}, which is not one of {', '.join(_DTYPES)}; the "
            "file is corrupt or holds a kind of tensor clip-workbench cannot read"
        )
    if dims == [0] and len(content) == dtype.itemsize:  # how MindSpore may spell a scalar
        dims = []
    if len(dims) > _MAX_DIMS:
        raise CheckpointError(f"{path}: {tag} has {len(dims)} dims, more than numpy's {_MAX_DIMS}")
    if any(n < 1 for n in dims):
        raise CheckpointError(f"{path}: {tag} has dims {dims}; each must be >= 1")
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    if expected > file_size:  # content is never larger than the file: this says what is wrong
        raise CheckpointError(
            f"{path}: {tag} declares shape {tuple(dims)} of {kind} ({expected:,} bytes), more "
            f"than the whole file ({file_size:,} bytes); the file is corrupt"
        )
    if len(content) != expected:
        raise CheckpointError(
            f"{path}: {tag} declares shape {tuple(dims)} of {kind} ({expected:,} bytes) but holds "
            f"{len(content):,} bytes; the file is corrupt"
        )
    return np.frombuffer(content, dtype).reshape(dims)


def read_ckpt(path: str | os.PathLike) -> dict[str, np.ndarray | str]:
    """Every parameter of a MindSpore .ckpt, in its stored dtype (BF16 for bfloat16), and the
    config string if it holds one (other strings saved beside the weights are not weights)."""
    path = Path(path)
    arrays, parts = {}, []  # parts: the values of the tag being read
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{path}: is empty (0 bytes); the download or copy was cut short")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            end = size - 17 if size >= 17 and data[size - 17 : size - 10] == _CRC else size
            for value in _values(data, end, path):
                if not value.tag or not value.HasField("tensor"):
                    what = "a value without a tag" if not value.tag else f"{value.tag} (a map)"
                    raise CheckpointError(f"{path}: holds {what}, which is not a tensor")
                if parts and value.tag != parts[0].tag:  # a tag's values are consecutive
                    arrays[parts[0].tag] = _array(path, parts[0].tag, parts, size)
                    parts = []  # frees that tag's values before the next is read
                if value.tag in arrays:
                    raise CheckpointError(f"{path}: holds {value.tag} twice")
                parts.append(value)
            if parts:
                arrays[parts[0].tag] = _array(path, parts[0].tag, parts, size)
    config = arrays.get(CONFIG_KEY)
    arrays = {name: a for name, a in arrays.items() if not isinstance(a, str)}
    return arrays if not isinstance(config, str) else {**arrays, CONFIG_KEY: config}


def write_ckpt(
    state_dict: dict[str, np.ndarray],
    path: str | os.PathLike,
    fp16: bool = False,
    config: str | None = None,
) -> None:
    """Save a state dict as a MindSpore .ckpt under its own names; floats in fp16 if asked; a
    config (CLIPConfig.to_json) is stored beside the weights. Nothing is left at path, nor beside
    it, if writing fails."""
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
        partial.with_suffix(".tmp").unlink(missing_ok=True)  # save_checkpoint's own, on failure
