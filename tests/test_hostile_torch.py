"""Hostile and tiny PyTorch, zip and .npz files, crafted by hand from pickle opcodes: refused with
one clear CheckpointError before anything is allocated, run or changed, in time linear in the file;
good files read after them read exactly as before."""

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import FIXTURES, run_isolated

from clip.checkpoints import CheckpointError, detect_format, read_state_dict
from clip.checkpoints.torch_formats import LEGACY_MAGIC

CHECKPOINTS = FIXTURES / "checkpoints"
CANONICAL = dict(np.load(CHECKPOINTS / "canonical.npz"))

# -- pickle opcodes, by hand ----------------------------------------------------------------------


def glob(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def text(value: str) -> bytes:
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def num(n: int) -> bytes:
    data = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data  # LONG1: any size, any sign


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def mapping(items: dict[str, bytes]) -> bytes:
    return b"}(" + b"".join(text(k) + v for k, v in items.items()) + b"u"


def storage(key: str = "0", numel: int = 4, view: tuple | None = None) -> bytes:
    """A persistent id of a half storage; with `view` (key, offset, size), a legacy storage view."""
    fields = [text("storage"), glob("torch", "HalfStorage"), text(key), text("cpu"), num(numel)]
    if view is not None:
        fields.append(tup(text(view[0]), num(view[1]), num(view[2])))
    return tup(*fields) + b"Q"


def tensor(store: bytes, offset: int, shape: tuple, stride: tuple) -> bytes:
    """A `_rebuild_tensor_v2` record, as torch.save writes it."""
    hooks = glob("collections", "OrderedDict") + b")R"
    args = tup(store, num(offset), tup(*map(num, shape)), tup(*map(num, stride)), b"\x89", hooks)
    return glob("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def build(state: bytes) -> bytes:
    """BUILD: sets `state` on the object on top of the stack."""
    return state + b"b"


def slots(items: dict[str, bytes]) -> bytes:
    """A BUILD state of slots only, set with setattr."""
    return tup(b"N", mapping(items))


def proto2(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def torch_zip(
    path: Path, body: bytes, storages: dict, compression=zipfile.ZIP_STORED, **kw
) -> Path:
    """A torch.save zip (with constants.pkl, a TorchScript archive) of the pickle `body`."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        archive.writestr("archive/data.pkl", proto2(body))
        archive.writestr("archive/byteorder", "little")
        if kw.get("torchscript"):
            archive.writestr("archive/constants.pkl", pickle.dumps((), protocol=2))
        for key, blob in storages.items():
            archive.writestr(f"archive/data/{key}", blob)
    return path


def legacy(path: Path, body: bytes, storages: dict) -> Path:
    """A legacy (PyTorch < 1.6) torch.save file of the pickle `body` and half storages."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    parts = [pickle.dumps(x, protocol=2) for x in (LEGACY_MAGIC, 1001, info)]
    parts += [proto2(body), pickle.dumps(list(storages), protocol=2)]
    for blob in storages.values():
        parts += [struct.pack("<q", len(blob) // 2), blob]
    path.write_bytes(b"".join(parts))
    return path


def npz(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def npy_header(shape: tuple, dtype: str = "<f2") -> bytes:
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


HALVES = np.arange(4, dtype=np.float16).tobytes()  # a storage of 4 half floats


def one(store: bytes, offset=0, shape=(4,), stride=(1,), after: bytes = b"") -> bytes:
    """A state dict of one tensor named visual.proj, with `after` applied to the tensor."""
    return mapping({"visual.proj": tensor(store, offset, shape, stride) + after})


def assert_good_files_read_exactly() -> None:
    """A torch.save zip and a legacy file read to canonical.npz: nothing a file did carried over."""
    for name in ("state_dict.pt", "legacy.pt"):
        state = read_state_dict(CHECKPOINTS / name)
        assert sorted(state) == sorted(CANONICAL), name
        for key, value in CANONICAL.items():
            assert state[key].dtype == value.dtype and np.array_equal(state[key], value), key


# -- hostile files read in a fresh interpreter with a memory cap: a crash or an allocation shows --


def hostile_files(root: Path) -> dict[str, tuple[Path, str]]:
    """name: (file, what its refusal says)."""
    before = -(1 << 20)  # a stride or offset that reads a MiB before its buffer
    moved_stride = one(storage(), after=build(mapping({"stride": tup(num(before))})))
    moved = storage() + build(mapping({"offset": num(before)}))
    moved_offset = mapping({"w": tensor(moved, 0, (4,), (1,))})
    gib, overlap = (1 << 15, 1 << 15), storage("0", 65535)
    many = {f"k{i}": tensor(storage("0", 1 << 15), 0, (1 << 15,), (1,)) for i in range(1024)}
    bomb = bytes(16 << 20)  # deflates to 16 KiB
    deflated, bomb_storage = zipfile.ZIP_DEFLATED, storage("0", 8 << 20)
    return {
        # 2: views changed after their checks, or never checked
        "BUILD moves a tensor's stride": (
            torch_zip(root / "a.pt", moved_stride, {"0": HALVES}),
            "refused to load: its pickle sets attributes of a _Tensor",
        ),
        "BUILD moves a storage's offset": (
            torch_zip(root / "b.pt", moved_offset, {"0": HALVES}),
            "sets attributes of a _Storage",
        ),
        "negative stride": (
            torch_zip(root / "c.pt", one(storage(), stride=(before,)), {"0": HALVES}),
            "malformed tensor record",
        ),
        "offset past the storage": (
            torch_zip(root / "d.pt", one(storage(), offset=1 << 40), {"0": HALVES}),
            "past the end of its storage",
        ),
        "legacy view at a negative offset": (
            legacy(root / "e.pt", one(storage("0", 4, ("1", before, 4))), {"0": HALVES}),
            "malformed storage view",
        ),
        "legacy view past its storage": (
            legacy(root / "f.pt", one(storage("0", 4, ("1", 1 << 20, 4))), {"0": HALVES}),
            "past the end of its storage",
        ),
        "legacy tensor past its view": (
            legacy(root / "g.pt", one(storage("0", 4, ("1", 2, 2))), {"0": HALVES}),
            "past the end of its storage",
        ),
        # 4: small files, huge memory
        "stride-0 view": (
            torch_zip(root / "h.pt", one(storage("0", 1), 0, gib, (0, 0)), {"0": HALVES[:2]}),
            "its tensors ask for 2,147,483,648 bytes but it stores only 2 ",
        ),
        "overlapping views": (
            torch_zip(root / "i.pt", one(overlap, 0, gib, (1, 1)), {"0": bytes(131070)}),
            "its tensors ask for 2,147,483,648 bytes but it stores only 131,070",
        ),
        "one storage, many keys": (
            torch_zip(root / "j.pt", mapping(many), {"0": bytes(1 << 16)}),
            "its tensors ask for 67,108,864 bytes but it stores only 65,536",
        ),
        "deflated storage bomb": (
            torch_zip(root / "k.pt", one(bomb_storage, 0, (8 << 20,)), {"0": bomb}, deflated),
            "its member archive/data/0 would inflate from",
        ),
        "npz deflate bomb": (
            npz(root / "l.npz", {"w.npy": npy_header((8 << 20,)) + bomb}),
            "its member w.npy would inflate from",
        ),
        "npz header asks for 4 GiB": (
            npz(root / "m.npz", {"w.npy": npy_header((1 << 31,)) + HALVES}),
            "w.npy: its header says 4,294,967,296 bytes of data, it holds 8",
        ),
        "npz of Python objects": (
            npz(root / "n.npz", {"w.npy": npy_header((1,), "|O") + pickle.dumps([1])}),
            "holds Python objects",
        ),
        "pickle bytearray of 1 TiB": (
            torch_zip(root / "o.pt", b"\x96" + struct.pack("<Q", 1 << 40), {}),
            "a bytearray of 1099511627776 bytes in a 12-byte file",
        ),
    }  # fmt: skip


HOSTILE = [
    "BUILD moves a tensor's stride", "BUILD moves a storage's offset", "negative stride",
    "offset past the storage", "legacy view at a negative offset", "legacy view past its storage",
    "legacy tensor past its view", "stride-0 view", "overlapping views", "one storage, many keys",
    "deflated storage bomb", "npz deflate bomb", "npz header asks for 4 GiB",
    "npz of Python objects", "pickle bytearray of 1 TiB",
]  # fmt: skip


@pytest.fixture(scope="module")
def refusals(tmp_path_factory) -> dict[str, tuple[Path, str, list]]:
    """name: (file, expected message, [error type, message]), read in capped interpreters: one,
    unless a file crashes it (then that file's result is the crash, and the rest are read anew)."""
    files = hostile_files(tmp_path_factory.mktemp("hostile"))
    assert list(files) == HOSTILE
    results, left = {}, list(files)
    while left:
        paths = json.dumps({name: str(files[name][0]) for name in left})
        done = run_isolated(READER.format(paths=paths), memory_mib=1024, timeout=50)
        results.update(json.loads(line) for line in done.stdout.splitlines())
        left = [name for name in left if name not in results]
        if left:  # the first file without a result is the one that crashed the interpreter
            results[left.pop(0)] = [f"crash {done.returncode}", done.stderr[-2000:]]
    return {name: (*files[name], results[name]) for name in files}


READER = """
import json
from clip.checkpoints import read_state_dict
for name, path in json.loads({paths!r}).items():
    try:
        read_state_dict(path)
        result = ["read", ""]
    except Exception as err:
        result = [type(err).__name__, str(err)]
    print(json.dumps([name, result]), flush=True)
"""


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_file_is_refused_before_allocating(refusals, name):
    path, expected, (error, message) = refusals[name]
    assert error == "CheckpointError", (error, message)
    assert message.startswith(f"{path}: ") and expected in message, message
    if name == "stride-0 view":  # a file of a few hundred bytes asked for 2 GiB
        assert path.stat().st_size < 1000


# -- 3: nothing a refused file does outlives its read ---------------------------------------------


def mutations(root: Path) -> dict[str, Path]:
    """BUILD on each kind of object the reader admits: its functions, dtypes, types, classes."""
    kwdefaults = slots({"__kwdefaults__": mapping({"dtype": glob("torch", "float32")})})
    defaults = slots({"__defaults__": tup(glob("torch", "float32"))})
    cases = {  # (global, state): each sets the state on an admitted global, pops it, goes on
        "kwdefaults of _rebuild_tensor_v2": (("torch._utils", "_rebuild_tensor_v2"), kwdefaults),
        "defaults of _rebuild_tensor_v3": (("torch._utils", "_rebuild_tensor_v3"), defaults),
        "dict of a dtype": (("torch", "HalfStorage"), mapping({"x": num(1)})),
        "slots of OrderedDict": (("collections", "OrderedDict"), slots({"x": num(1)})),
        "qualname of a TorchScript class": (("__torch__.M", "M"), slots({"qualname": text("x")})),
    }
    files = {}
    for i, (name, (target, state)) in enumerate(cases.items()):
        body = glob(*target) + build(state) + b"0" + one(storage())
        files[name] = torch_zip(root / f"{i}.pt", body, {"0": HALVES}, torchscript=True)
    return files


def test_a_refused_file_changes_nothing_for_later_reads(tmp_path):
    for path in mutations(tmp_path).values():
        with pytest.raises(CheckpointError, match="refused to load: its pickle sets attributes"):
            read_state_dict(path)
        assert_good_files_read_exactly()


def test_build_of_a_state_dicts_metadata_is_still_read(tmp_path):
    """torch's state_dict() is an OrderedDict whose `_metadata` BUILD sets: read, and dropped."""
    body = glob("collections", "OrderedDict") + b")R" + b"(" + text("visual.proj")
    body += tensor(storage(), 0, (2, 2), (1, 2)) + b"u" + build(mapping({"_metadata": b"}"}))
    state = read_state_dict(torch_zip(tmp_path / "metadata.pt", body, {"0": HALVES}))
    assert np.array_equal(state["visual.proj"], [[0, 2], [1, 3]])


# -- 4: legitimate files still load ---------------------------------------------------------------


def test_a_deflated_torch_zip_and_shared_storage_still_load(tmp_path):
    path = tmp_path / "deflated.pt"
    with (
        zipfile.ZipFile(CHECKPOINTS / "state_dict.pt") as src,
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst,
    ):
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), zipfile.ZIP_DEFLATED)
    state = read_state_dict(path)
    assert all(np.array_equal(state[k], v) for k, v in CANONICAL.items())
    tied = mapping(
        {k: tensor(storage(), 0, (4,), (1,)) for k in ("visual.proj", "text_projection")}
    )
    state = read_state_dict(torch_zip(tmp_path / "tied.pt", tied, {"0": HALVES}))
    assert np.array_equal(state["visual.proj"], state["text_projection"])
    weights = {"w": np.random.default_rng(0).standard_normal((256, 256)).astype(np.float16)}
    np.savez_compressed(tmp_path / "weights.npz", **weights)
    assert np.array_equal(read_state_dict(tmp_path / "weights.npz")["w"], weights["w"])


# -- 5: a TorchScript module DAG is walked once per record ----------------------------------------


def test_torchscript_dag_and_cycle_are_walked_once(tmp_path):
    depth, one_tensor = 40, tensor(storage(), 0, (4,), (1,))
    record = glob("__torch__.M", "M") + b")\x81"  # NEWOBJ, then BUILD with its attributes
    body = record + build(mapping({"w": one_tensor})) + b"q\x00"
    for level in range(1, depth + 1):  # each record's two children are the same record
        below = b"h" + bytes([level - 1])
        body += record + build(mapping({"a": below, "b": below})) + b"q" + bytes([level])
    dag = torch_zip(tmp_path / "dag.pt", body, {"0": HALVES}, torchscript=True)
    cycle = (
        record
        + b"q\x00"
        + build(mapping({"self": b"h\x00", "w": tensor(storage(), 0, (4,), (1,))}))
    )
    looped = torch_zip(tmp_path / "cycle.pt", cycle, {"0": HALVES}, torchscript=True)
    code = f"""
from clip.checkpoints.torch_formats import read_torch_zip
print(sorted(read_torch_zip({str(dag)!r})), sorted(read_torch_zip({str(looped)!r})))
"""
    done = run_isolated(code, memory_mib=1024, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [f"['{'a.' * depth}w']", "['w']"]


# -- 10: tiny and truncated files -----------------------------------------------------------------


@pytest.mark.parametrize("head", [b"\x80", b"\x80\x02", b"P", b"PK", b"\x0a", b"\x01" * 9, b"\xff"])
def test_a_tiny_file_is_one_clear_error(tmp_path, head):
    path = tmp_path / "tiny.pt"
    path.write_bytes(head)
    with pytest.raises(CheckpointError) as caught:
        read_state_dict(path)
    assert str(caught.value).startswith(f"{path}: ")
    if head == b"\x80":
        with pytest.raises(CheckpointError, match="is only 1 bytes, too short"):
            detect_format(path)


TRUNCATED = ["state_dict.pt", "legacy.pt", "openai_jit.pt", "views.pt", "model.safetensors"]


@pytest.mark.parametrize("name", [*TRUNCATED, "canonical.npz"])
def test_every_truncation_is_one_clear_error(tmp_path, name):
    whole = (CHECKPOINTS / name).read_bytes()
    path = tmp_path / name
    for size in sorted({1, 2, 7, 8, 9, 16, 64, 300, 1000, len(whole) // 2, len(whole) - 1}):
        path.write_bytes(whole[:size])
        with pytest.raises(CheckpointError) as caught:
            read_state_dict(path)
        assert str(caught.value).startswith(f"{path}: "), (size, caught.value)


def test_a_corrupt_pickle_keeps_its_cause(tmp_path):
    path = torch_zip(tmp_path / "opcode.pt", b"\xff", {})  # no such opcode
    with pytest.raises(CheckpointError, match="corrupt torch.save zip file") as caught:
        read_state_dict(path)
    assert caught.value.__cause__ is not None
