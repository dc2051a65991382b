"""Items of a collection: an image folder, a CSV or parquet table of paths, or webdataset tars.

Each source lists its items once, sorted by key, with what a worker needs to read one item
without listing the source again: a file path, or a tar and the member's byte offset and length.

- folder: images under a directory (recursive, workbench.data.IMAGE_EXTENSIONS); key is the path
  relative to the folder; a caption is read from a `.txt` file of the same name when there is one.
- table: a `.csv`, `.tsv` or `.parquet` file with a `path` column and an optional `caption`
  column; relative paths are resolved against the table's folder; key is the path as written
  (`#1`, `#2`, ... appended to repeats, in row order, e.g. several captions of one image).
- webdataset: a `.tar` or a folder of them; a sample is the members sharing a key (the member
  name up to the first dot of its base name): `key.jpg` / `key.png` (any image extension) and an
  optional `key.txt` caption. Tars are read with the standard library's `tarfile` rather than the
  `webdataset` package: its readers stream a tar from the start, while the member offsets recorded
  here let any worker read any shard's items by a seek, whichever tar they sit in, with no extra
  dependency. Tars must be uncompressed, as webdataset writes them.
"""

import io
import os
import tarfile
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from ..data import IMAGE_EXTENSIONS, load_image

KINDS = ("folder", "table", "webdataset")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


class Item(NamedTuple):
    """One image of a collection: its key, path, caption and, for a tar member, where it lies."""

    key: str
    path: str
    caption: str | None = None
    archive: str | None = None  # the tar holding it
    offset: int = -1  # of the member's data in the tar
    length: int = -1


def detect_kind(source: str | os.PathLike) -> str:
    """The kind of source a path is: folder, table or webdataset."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix.lower() in TABLE_SUFFIXES:
            return "table"
        if path.suffix.lower() == ".tar":
            return "webdataset"
        raise ValueError(
            f"{path} is neither a table ({', '.join(TABLE_SUFFIXES)}) nor a .tar; pass an image "
            "folder, a CSV/parquet file with a 'path' column, or webdataset tars"
        )
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; pass an image folder, a table or a .tar")
    has_tars = any(path.rglob("*.tar"))
    has_images = any(p.suffix.lower() in IMAGE_EXTENSIONS for p in path.rglob("*"))
    return "webdataset" if has_tars and not has_images else "folder"


def list_items(source: str | os.PathLike, *, kind: str | None = None) -> tuple[list[Item], dict]:
    """The source's items sorted by key, and a description of the source for collection.json."""
    kind = detect_kind(source) if kind is None else kind
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    path = Path(source).expanduser().resolve()
    items = {"folder": _folder, "table": _table, "webdataset": _webdataset}[kind](path)
    items.sort(key=lambda item: item.key)
    if not items:
        raise ValueError(f"{path} holds no images ({kind}); expected {', '.join(IMAGE_EXTENSIONS)}")
    captions = any(item.caption is not None for item in items)
    return items, {"kind": kind, "path": str(path), "captions": captions}


def _visible(names: list[str]) -> list[str]:
    return sorted(name for name in names if not name.startswith("."))


def _folder(root: Path) -> list[Item]:
    items = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = _visible(subfolders)
        names = set(files)
        for name in _visible(files):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            path = os.path.join(folder, name)
            caption = None
            if stem + ".txt" in names:
                with open(os.path.join(folder, stem + ".txt"), encoding="utf-8") as file:
                    caption = file.read().strip()
            items.append(Item(Path(path).relative_to(root).as_posix(), path, caption))
    return items


def _table(path: Path) -> list[Item]:
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    else:
        import pyarrow.csv as pcsv

        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter))
    if "path" not in table.column_names:
        raise ValueError(
            f"{path} has no 'path' column (it has {table.column_names}); name the column of image "
            "paths 'path', and the optional column of captions 'caption'"
        )
    paths = [None if p is None else str(p) for p in table.column("path").to_pylist()]
    captions = [None] * len(paths)
    if "caption" in table.column_names:
        captions = [None if c is None else str(c) for c in table.column("caption").to_pylist()]
    items, seen = [], {}
    for written, caption in zip(paths, captions, strict=True):
        written = written or ""  # an empty path stays an item: it is reported as missing
        repeat = seen[written] = seen.get(written, -1) + 1
        key = written if repeat == 0 else f"{written}#{repeat}"
        resolved = os.path.join(path.parent, os.path.expanduser(written)) if written else ""
        items.append(Item(key, resolved, caption))
    return items


def _sample_key(name: str) -> tuple[str, str]:
    """webdataset's split of a member name into (key, extension) at the base name's first dot."""
    folder, base = os.path.split(name)
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _webdataset(path: Path) -> list[Item]:
    tars = [path] if path.is_file() else sorted(path.rglob("*.tar"))
    extensions = {suffix.lstrip(".") for suffix in IMAGE_EXTENSIONS}
    items = []
    for tar in tars:
        prefix = tar.name if path.is_file() else tar.relative_to(path).as_posix()
        try:
            archive = tarfile.open(tar, mode="r:")  # uncompressed only: members are read by seek
        except tarfile.ReadError as err:
            raise ValueError(
                f"{tar} is not an uncompressed tar ({err}); webdataset tars are read in place by "
                "offset, so decompress it first (e.g. gunzip)"
            ) from err
        samples: dict[str, dict] = {}
        with archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = _sample_key(member.name)
                sample = samples.setdefault(key, {})
                if extension in extensions and "image" not in sample:
                    sample["image"] = member
                elif extension == "txt":
                    data = archive.extractfile(member).read()
                    sample["caption"] = data.decode("utf-8", "replace").strip()
        for key, sample in samples.items():
            member, caption = sample.get("image"), sample.get("caption")
            if member is None:  # a caption without its image: kept, and reported as missing
                items.append(Item(f"{prefix}/{key}", f"{tar}/{key}", caption))
                continue
            location = (str(tar), member.offset_data, member.size)
            items.append(Item(f"{prefix}/{key}", f"{tar}/{member.name}", caption, *location))
    return items


def read_bytes(item: Item) -> bytes:
    """The bytes of an item's image file or tar member."""
    if item.archive is not None:
        with open(item.archive, "rb") as file:
            file.seek(item.offset)
            data = file.read(item.length)
        if len(data) != item.length:
            raise EOFError(f"{item.archive} ends inside the member {item.path}")
        return data
    with open(item.path, "rb") as file:
        return file.read()


def open_image(path: str | os.PathLike) -> Image.Image:
    """The image at a collection's `path` (metadata column): a file, or a member of a tar."""
    path = Path(path)
    if path.exists():
        return load_image(path)
    for archive in path.parents:
        if archive.is_file():
            with tarfile.open(archive, mode="r:") as tar:
                try:
                    member = tar.extractfile(path.relative_to(archive).as_posix())
                except KeyError:
                    member = None
                if member is None:
                    break
                with Image.open(io.BytesIO(member.read())) as image:
                    image.load()
                    return image
    raise FileNotFoundError(f"{path} is neither a file nor a member of a tar")
