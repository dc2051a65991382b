"""PyTorch files read without torch: torch.save zips and legacy pickles, TorchScript archives.

Pickles go through a restricted unpickler that admits only the globals these formats use; every
other global is refused by name, so nothing in the file is ever run. Tensors are rebuilt from their
storage bytes with the recorded offset, shape and strides.
"""

import collections
import io
import os
import pickle
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from .common import BF16, CheckpointError

# torch dtype -> numpy dtype of its stored bytes (bfloat16 as 16-bit patterns)
_DTYPES = {
    "float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "u2", "int64": "i8",
    "int32": "i4", "int16": "i2", "int8": "i1", "uint8": "u1", "bool": "?",
}  # fmt: skip
_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}  # fmt: skip
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_MODULE_DECLARATION = re.compile(
    r"^class (\w+)\(Module\):\n  __parameters__ = \[(.*)\]\n  __buffers__ = \[(.*)\]", re.M
)


class _DType(str):
    """A torch dtype or storage class named in a pickle."""


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    offset: int = 0  # elements, for the legacy format's storage views


@dataclass(frozen=True)
class _Tensor:
    storage: _Storage
    offset: int
    shape: tuple
    stride: tuple
    dtype: str


class _Record:
    """A TorchScript object (module), kept as inert data: its attributes and nothing else."""

    qualname = ""

    def __init__(self, *args):
        self.state = args

    def __setstate__(self, state):
        self.state = state


class _TensorType:
    """Stands for torch.Tensor and torch.nn.Parameter in `_rebuild_from_type_v2`."""


def _rebuild_tensor(storage, offset, shape, stride, *_, dtype=None) -> _Tensor:
    shape, stride = tuple(shape), tuple(stride)
    ints = (offset, *shape, *stride)
    if not (
        isinstance(storage, _Storage)
        and len(shape) == len(stride)
        and all(isinstance(n, int) and n >= 0 for n in ints)
    ):
        raise pickle.UnpicklingError("malformed tensor record")
    return _Tensor(storage, storage.offset + offset, shape, stride, dtype or storage.dtype)


def _rebuild_tensor_v3(storage, offset, shape, stride, requires_grad, hooks, dtype, *_):
    return _rebuild_tensor(storage, offset, shape, stride, dtype=str(dtype))


def _rebuild_from_type_v2(func, _type, args, _state):
    if func not in (_rebuild_tensor, _rebuild_tensor_v3):
        raise pickle.UnpicklingError("malformed tensor record")
    return func(*args)


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): lambda data, *_: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *_: data,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("torch.jit._pickle", "build_intlist"): list,
    ("torch.jit._pickle", "build_doublelist"): list,
    ("torch.jit._pickle", "build_boollist"): list,
    ("torch.jit._pickle", "build_tensorlist"): list,
    ("torch.jit._pickle", "restore_type_tag"): lambda value, _tag: value,
    **{("torch", name): _DType(dtype) for name, dtype in _STORAGES.items()},
    **{("torch", name): _DType(name) for name in _DTYPES},
}
_RECORDS: dict[str, type] = {}


def _record_class(qualname: str) -> type:
    if qualname not in _RECORDS:
        _RECORDS[qualname] = type(qualname.rsplit(".", 1)[-1], (_Record,), {"qualname": qualname})
    return _RECORDS[qualname]


class _Unpickler(pickle.Unpickler):
    """Unpickles torch data: admits only `_GLOBALS` (and TorchScript classes as records)."""

    def __init__(self, file, path, torchscript: bool = False):
        super().__init__(file)
        self.path, self.torchscript, self.storages = path, torchscript, {}

    def find_class(self, module: str, name: str):
        if self.torchscript and module.split(".")[0] == "__torch__":
            return _record_class(f"{module}.{name}")
        if (module, name) not in _GLOBALS:
            raise CheckpointError(
                f"{self.path}: refused to load: its pickle asks for {module}.{name}, which no "
                "checkpoint needs (the file may be malicious); nothing from it was run"
            )
        return _GLOBALS[module, name]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
        _, dtype, key, _location, _numel, *view = pid
        if not isinstance(dtype, _DType):
            raise pickle.UnpicklingError("malformed storage record")
        self.storages[str(key)] = str(dtype)
        if view and view[0] is not None:  # legacy view of a larger storage: (key, offset, size)
            return _Storage(str(key), str(dtype), view[0][1])
        return _Storage(str(key), str(dtype))


def _array(tensor: _Tensor, data: bytes | bytearray, big_endian: bool) -> np.ndarray:
    """The tensor's values from its storage bytes, as a contiguous native-order array."""
    dtype = np.dtype(_DTYPES[tensor.dtype]).newbyteorder(">" if big_endian else "<")
    storage = np.frombuffer(data, dtype, count=len(data) // dtype.itemsize)
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, dtype.newbyteorder("="))
    span = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True))
    end = tensor.offset + span + 1
    if end > storage.size:
        raise ValueError(f"a tensor reaches past the end of its storage ({end} > {storage.size})")
    strides = [s * dtype.itemsize for s in tensor.stride]
    view = np.lib.stride_tricks.as_strided(storage[tensor.offset :], tensor.shape, strides)
    array = view.astype(dtype.newbyteorder("="))
    return array.view(BF16) if tensor.dtype == "bfloat16" else array


def _state_dict(obj, path) -> dict[str, _Tensor]:
    """The tensors of a state dict, unwrapping a training checkpoint's 'state_dict' or 'model'."""
    if isinstance(obj, dict):
        inner = [obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)]
        obj = inner[0] if inner else obj
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, _Tensor)}


def _module_tensors(record: _Record, declared: dict[str, set], prefix: str = ""):
    """(name, tensor) for the parameters and buffers of a TorchScript module tree."""
    state = record.state if isinstance(record.state, dict) else {}
    names = declared.get(record.qualname)
    for name, value in state.items():
        if isinstance(value, _Record):
            yield from _module_tensors(value, declared, f"{prefix}{name}.")
        elif isinstance(value, _Tensor) and (names is None or name in names):
            yield prefix + name, value


def _declared(archive: zipfile.ZipFile, prefix: str) -> dict[str, set]:
    """Parameter and buffer names of each TorchScript class, from the archive's code/ text."""
    declared = {}
    for entry in archive.namelist():
        if entry.startswith(f"{prefix}code/") and entry.endswith(".py"):
            module = entry[len(prefix) + 5 : -3].replace("/", ".")
            text = archive.read(entry).decode("utf-8", "replace")
            for cls, params, buffers in _MODULE_DECLARATION.findall(text):
                declared[f"{module}.{cls}"] = set(re.findall(r'"([^"]+)"', params + buffers))
    return declared


def _prefix(names: list[str]) -> str | None:
    """The top folder ('archive/', 'ViT-B-32/', ...) holding a PyTorch zip's data.pkl."""
    pickles = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")]
    return pickles[0][: -len("data.pkl")] if pickles else None


def zip_kind(names: list[str]) -> str | None:
    """'torchscript', 'torch-zip' or None, from the entry names of a zip archive."""
    if (prefix := _prefix(names)) is None:
        return None
    return "torchscript" if f"{prefix}constants.pkl" in names else "torch-zip"


def read_torch_zip(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """State dict of a torch.save zip or of a TorchScript archive (its parameters and buffers)."""
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        prefix = _prefix(names)
        data = io.BytesIO(archive.read(f"{prefix}data.pkl"))
        obj = _Unpickler(data, path, torchscript=zip_kind(names) == "torchscript").load()
        if isinstance(obj, _Record):
            tensors = dict(_module_tensors(obj, _declared(archive, prefix)))
        else:
            tensors = _state_dict(obj, path)
        big = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") == b"big"
        blobs = {}
        for t in tensors.values():
            if t.storage.key not in blobs:
                blobs[t.storage.key] = archive.read(f"{prefix}data/{t.storage.key}")
    return {name: _array(t, blobs[t.storage.key], big) for name, t in tensors.items()}


def read_torch_legacy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """State dict of a torch.save file in the legacy (PyTorch < 1.6) pickle format."""
    with open(path, "rb") as file:
        if _Unpickler(file, path).load() != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: is a pickle but not a PyTorch checkpoint")
        _Unpickler(file, path).load()  # protocol version
        info = _Unpickler(file, path).load()
        big = isinstance(info, dict) and info.get("little_endian") is False
        unpickler = _Unpickler(file, path)
        tensors = _state_dict(unpickler.load(), path)
        keys = _Unpickler(file, path).load()
        blobs = {}
        for key in keys:
            numel = int.from_bytes(file.read(8), "big" if big else "little")
            size = numel * np.dtype(_DTYPES[unpickler.storages[key]]).itemsize
            blobs[key] = file.read(size)
            if len(blobs[key]) != size:
                raise ValueError(f"truncated: storage {key} is cut short")
    return {name: _array(t, blobs[t.storage.key], big) for name, t in tensors.items()}
