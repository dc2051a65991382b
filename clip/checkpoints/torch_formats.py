"""PyTorch files read without torch: torch.save zips and legacy pickles, TorchScript archives.

Pickles go through a restricted unpickler that admits only the globals these formats use; every
other global is refused by name, so nothing in the file is ever run. What it admits are the reader's
own objects, made for that read, and it sets state only on the records it made itself, so nothing a
file does outlives its read. Tensors are rebuilt from their storage bytes with the recorded offset,
shape and strides, each view checked against its storage where its array is made, and only once the
file is known to ask for no more memory than it holds.
"""

import collections
import io
import math
import mmap
import os
import pickle
import re
import struct
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
# Tensors may share storage (tied weights, views of a fused matrix), but no real checkpoint's arrays
# need more than a few times the bytes it stores; past that, stride-0 or overlapping views are
# making a small file ask for a huge allocation.
_SHARING, _SHARING_FLOOR = 4, 16 << 20
# torch.save stores zip members uncompressed and np.savez_compressed deflates weights ~1-3x: a
# member that inflates by more, or members that together inflate past the file, are a zip bomb.
_INFLATION, _INFLATION_FLOOR = 20, 1 << 20
_MAX_INT = 1 << 63  # torch's sizes, strides and offsets are int64


class _DType(str):
    """A torch dtype or storage class named in a pickle (no __dict__: nothing can be set on it)."""

    __slots__ = ()


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    offset: int = 0  # the legacy format's storage views: elements of the root storage
    size: int | None = None


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


def _is_int(n) -> bool:
    return type(n) is int and 0 <= n < _MAX_INT


class _Dispatch(dict):
    """The unpickler's opcode table: an unknown opcode is a corrupt pickle, not a KeyError."""

    def __missing__(self, opcode: int):
        raise pickle.UnpicklingError(f"invalid opcode {opcode:#04x}")


class _Unpickler(pickle._Unpickler):
    """Unpickles torch data: admits only `_allowed()` (and TorchScript classes as records).

    The pure-Python unpickler, so that BUILD, which sets attributes on whatever it is given, can be
    limited to the records this reader makes."""

    dispatch = _Dispatch(pickle._Unpickler.dispatch)

    def __init__(self, file, path, size: int, torchscript: bool = False):
        super().__init__(file)
        self.path, self.size, self.torchscript = path, size, torchscript
        self.storages, self.records, self.allowed = {}, {}, self._allowed()

    def _allowed(self) -> dict:
        """The globals a torch pickle may name, as this reader's own objects (bound methods of this
        unpickler, immutable types and strings): no shared function a file could alter."""
        return {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): self._first,
            ("torch._utils", "_rebuild_parameter_with_state"): self._first,
            ("torch._tensor", "_rebuild_from_type_v2"): self._rebuild_from_type_v2,
            # torch.Tensor and Parameter are only ever an argument that _rebuild_from_type_v2 drops
            ("torch", "Tensor"): "torch.Tensor",
            ("torch.nn.parameter", "Parameter"): "torch.nn.Parameter",
            ("torch.jit._pickle", "build_intlist"): list,
            ("torch.jit._pickle", "build_doublelist"): list,
            ("torch.jit._pickle", "build_boollist"): list,
            ("torch.jit._pickle", "build_tensorlist"): list,
            ("torch.jit._pickle", "restore_type_tag"): self._first,
            **{("torch", name): _DType(dtype) for name, dtype in _STORAGES.items()},
            **{("torch", name): _DType(name) for name in _DTYPES},
        }

    def find_class(self, module: str, name: str):
        if self.torchscript and module.split(".")[0] == "__torch__":
            qualname = f"{module}.{name}"
            if qualname not in self.records:  # a class per read: nothing carries over to the next
                self.records[qualname] = type(name, (_Record,), {"qualname": qualname})
            return self.records[qualname]
        if (module, name) not in self.allowed:
            raise CheckpointError(
                f"{self.path}: refused to load: its pickle asks for {module}.{name}, which no "
                "checkpoint needs (the file may be malicious); nothing from it was run"
            )
        return self.allowed[module, name]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {type(pid).__name__}")
        _, dtype, key, _location, _numel, *view = pid
        if not (isinstance(dtype, _DType) and dtype in _DTYPES and type(key) is str):
            raise pickle.UnpicklingError("malformed storage record")
        self.storages[key] = str(dtype)
        if view and view[0] is not None:  # legacy view of a larger storage: (key, offset, size)
            if not (isinstance(view[0], tuple) and len(view[0]) == 3):
                raise pickle.UnpicklingError("malformed storage view")
            _, offset, size = view[0]
            if not (_is_int(offset) and _is_int(size)):  # checked again where its array is made
                raise pickle.UnpicklingError("malformed storage view")
            return _Storage(key, str(dtype), offset, size)
        return _Storage(key, str(dtype))

    def _tensor(self, storage, offset, shape, stride, dtype) -> _Tensor:
        if not (
            isinstance(storage, _Storage)
            and isinstance(shape, (tuple, list))
            and isinstance(stride, (tuple, list))
            and len(shape) == len(stride) <= 32  # numpy's limit on dimensions
            and all(_is_int(n) for n in (offset, *shape, *stride))
            and isinstance(dtype, str)
            and dtype in _DTYPES
        ):
            raise pickle.UnpicklingError("malformed tensor record")
        return _Tensor(storage, offset, tuple(shape), tuple(stride), str(dtype))

    def _rebuild_tensor_v2(self, storage, offset, shape, stride, *_):
        return self._tensor(storage, offset, shape, stride, getattr(storage, "dtype", None))

    def _rebuild_tensor_v3(self, storage, offset, shape, stride, _grad, _hooks, dtype, *_):
        return self._tensor(storage, offset, shape, stride, dtype)

    def _rebuild_from_type_v2(self, func, _type, args, _state):
        if func not in (self._rebuild_tensor_v2, self._rebuild_tensor_v3):
            raise pickle.UnpicklingError("malformed tensor record")
        return func(*args)

    def _first(self, value, *_):  # a method, not a staticmethod: a function of this read only
        return value

    def load_build(self):
        """BUILD only on this reader's records; a state dict's `_metadata` is dropped."""
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _Record):
            _Record.__setstate__(inst, state)
        elif type(inst) is not collections.OrderedDict:
            raise CheckpointError(
                f"{self.path}: refused to load: its pickle sets attributes of a "
                f"{type(inst).__name__}, which no checkpoint does (the file may be malicious)"
            )

    def load_bytearray8(self):
        """As pickle's, but its length is bounded by the input before it is allocated."""
        (size,) = struct.unpack("<Q", self.read(8))
        if size > self.size:
            raise pickle.UnpicklingError(f"a bytearray of {size} bytes in a {self.size}-byte file")
        data = self.read(size)
        if len(data) != size:
            raise EOFError("truncated bytearray")
        self.append(bytearray(data))

    dispatch[pickle.BUILD[0]] = load_build
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _array(tensor: _Tensor, data: bytes, big_endian: bool) -> np.ndarray:
    """The tensor's values from its storage bytes, as a contiguous native-order array. Its view is
    checked here, where the array is made: offset and strides >= 0, its whole span in its storage
    (and in its legacy storage view)."""
    storage, dtype = tensor.storage, np.dtype(_DTYPES[tensor.dtype])
    dtype = dtype.newbyteorder(">" if big_endian else "<")
    unit = np.dtype(_DTYPES[storage.dtype]).itemsize
    start = storage.offset * unit
    stop = len(data) if storage.size is None else start + storage.size * unit
    ints = (storage.offset, tensor.offset, *tensor.shape, *tensor.stride)
    if not (all(_is_int(n) for n in ints) and len(tensor.shape) == len(tensor.stride)):
        raise ValueError("malformed tensor view")
    if stop > len(data):
        raise ValueError(f"a view reaches past the end of its storage ({stop} > {len(data)})")
    if 0 in tensor.shape:
        return np.zeros(tensor.shape, dtype.newbyteorder("="))
    first = start + tensor.offset * dtype.itemsize
    span = sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True))
    end = first + (span + 1) * dtype.itemsize
    if end > stop:
        raise ValueError(f"a tensor reaches past the end of its storage ({end} > {stop} bytes)")
    strides = [s * dtype.itemsize for s in tensor.stride]
    # numpy checks the extent against the buffer once more
    view = np.ndarray(tensor.shape, dtype, memoryview(data)[:stop], first, strides)
    array = view.astype(dtype.newbyteorder("="))
    return array.view(BF16) if tensor.dtype == "bfloat16" else array


def _arrays(path, tensors: dict[str, _Tensor], blobs: dict[str, bytes], big: bool) -> dict:
    """The tensors' arrays, once the file is known not to ask for far more memory than it holds."""
    held = sum(len(b) for b in blobs.values())
    asked = sum(math.prod(t.shape) * np.dtype(_DTYPES[t.dtype]).itemsize for t in tensors.values())
    if asked > _SHARING * held + _SHARING_FLOOR:
        raise CheckpointError(
            f"{path}: refused to load: its tensors ask for {asked:,} bytes but it stores only "
            f"{held:,} (views that repeat or overlap their storage; the file may be malicious)"
        )
    missing = {t.storage.key for t in tensors.values()} - blobs.keys()
    if missing:
        raise ValueError(f"storage {sorted(missing)[0]} is missing")
    return {name: _array(t, blobs[t.storage.key], big) for name, t in tensors.items()}


def _state_dict(obj, path) -> dict[str, _Tensor]:
    """The tensors of a state dict, unwrapping a training checkpoint's 'state_dict' or 'model'."""
    if isinstance(obj, dict):
        inner = [obj[k] for k in ("state_dict", "model") if isinstance(obj.get(k), dict)]
        obj = inner[0] if inner else obj
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    return {k: v for k, v in obj.items() if type(k) is str and isinstance(v, _Tensor)}


def _module_tensors(root: _Record, declared: dict[str, set]):
    """(name, tensor) for the parameters and buffers of a TorchScript module tree. Each record is
    walked once (the first path to it names it), so records shared as a DAG, or in a cycle, take
    time linear in the file, not exponential."""
    seen, stack = {id(root)}, [("", root)]
    while stack:
        prefix, record = stack.pop()
        state = record.state if isinstance(record.state, dict) else {}
        names = declared.get(record.qualname)
        children = []
        for name, value in state.items():
            if type(name) is not str:
                continue
            if isinstance(value, _Record):
                if id(value) not in seen:
                    seen.add(id(value))
                    children.append((f"{prefix}{name}.", value))
            elif isinstance(value, _Tensor) and (names is None or name in names):
                yield prefix + name, value
        stack.extend(reversed(children))


class BoundedZip(zipfile.ZipFile):
    """A zip archive whose members are read with a bound: none may inflate past `_INFLATION` times
    its compressed size (plus a floor), nor all of them past that many times the file (members
    sharing their bytes); sizes are checked before reading, and never trusted while reading."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.path, self.file_size = path, os.path.getsize(path)
        self.budget = _INFLATION * self.file_size + _INFLATION_FLOOR

    def read(self, name: str, pwd=None) -> bytes:
        info = self.getinfo(name)
        size, packed = info.file_size, info.compress_size
        if size > min(_INFLATION * packed + _INFLATION_FLOOR, self.budget):
            raise CheckpointError(
                f"{self.path}: refused to load: its member {name} would inflate from {packed:,} "
                f"to {size:,} bytes (a zip bomb, or a damaged archive)"
            )
        if packed > self.file_size:
            raise CheckpointError(f"{self.path}: member {name} is larger than the archive")
        self.budget -= size
        with self.open(info, pwd=pwd) as member:
            data = member.read(size + 1)
        if len(data) != size:
            raise CheckpointError(
                f"{self.path}: member {name} holds {len(data):,} bytes, not the {size:,} its "
                "header says (a damaged archive)"
            )
        return data


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
    with BoundedZip(path) as archive:
        names = archive.namelist()
        if (prefix := _prefix(names)) is None:
            raise CheckpointError(f"{path}: is a zip archive without a data.pkl")
        data = archive.read(f"{prefix}data.pkl")
        torchscript = zip_kind(names) == "torchscript"
        obj = _Unpickler(io.BytesIO(data), path, len(data), torchscript).load()
        if isinstance(obj, _Record):
            tensors = dict(_module_tensors(obj, _declared(archive, prefix)))
        else:
            tensors = _state_dict(obj, path)
        big = f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder") == b"big"
        keys = dict.fromkeys(t.storage.key for t in tensors.values())
        blobs = {key: archive.read(f"{prefix}data/{key}") for key in keys}
    return _arrays(path, tensors, blobs, big)


def read_torch_legacy(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """State dict of a torch.save file in the legacy (PyTorch < 1.6) pickle format."""
    with open(path, "rb") as raw, mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as file:
        size = len(file)  # an mmap's reads stop at its end: nothing asks for more than the file
        if _Unpickler(file, path, size).load() != LEGACY_MAGIC:
            raise CheckpointError(f"{path}: is a pickle but not a PyTorch checkpoint")
        _Unpickler(file, path, size).load()  # protocol version
        info = _Unpickler(file, path, size).load()
        big = isinstance(info, dict) and info.get("little_endian") is False
        unpickler = _Unpickler(file, path, size)
        tensors = _state_dict(unpickler.load(), path)
        keys = _Unpickler(file, path, size).load()
        if not (isinstance(keys, list) and all(k in unpickler.storages for k in keys)):
            raise ValueError("malformed list of storages")
        blobs = {}
        for key in keys:
            numel = int.from_bytes(file.read(8), "big" if big else "little")
            nbytes = numel * np.dtype(_DTYPES[unpickler.storages[key]]).itemsize
            if nbytes > size - file.tell():
                raise ValueError(f"truncated: storage {key} is cut short")
            blobs[key] = file.read(nbytes)
        return _arrays(path, tensors, blobs, big)
