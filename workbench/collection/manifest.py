"""The manifest: which items a collection holds, in which order, cut into which shards.

`manifest.json` holds the shard size, the item count, the digest of the item list and, per shard,
its boundaries `[start, stop)` in manifest order with its first and last key. The item lists
themselves are parquet files `items/items_NNN.parquet`, one per segment (one row group per
shard), so every worker reads the same split and nobody coordinates.

Appending: a segment is the items one run found new. Re-running a build on a source that grew
lists it again; items whose key the manifest already holds keep their shard and row; the new
ones, sorted by key, are cut into new shards numbered after the existing ones (a new segment).
Existing shards are never renumbered or refilled, so their files stay valid and an index needs to
add only the new shards. Items that disappeared from the source keep their rows (reported as
missing when their shard is computed again).
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .sources import Item

MANIFEST = "manifest.json"
VERSION = 1
_ITEM_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("path", pa.string()),
        ("caption", pa.string()),
        ("archive", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
    ]
)


def write_atomic(path: str | os.PathLike, write: Callable, *, text: bool = False) -> None:
    """Write a file through write(file) to a temporary name in its folder, then move it in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w" if text else "wb") as file:
            write(file)
        os.replace(temp, path)
    finally:
        Path(temp).unlink(missing_ok=True)  # gone after the rename; left by a failed write


def write_json(path: str | os.PathLike, value) -> None:
    """A JSON file written atomically."""
    write_atomic(path, lambda file: json.dump(value, file, indent=1, sort_keys=True), text=True)


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON file's contents, or None if it is absent or unreadable (e.g. cut short)."""
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def digest(items: list[Item]) -> str:
    """SHA-256 of the items' keys, paths and captions, in order."""
    hasher = hashlib.sha256()
    for item in items:
        hasher.update(json.dumps([item.key, item.path, item.caption]).encode() + b"\n")
    return hasher.hexdigest()


@dataclass
class Manifest:
    """The shards of a collection: items in manifest order and the boundaries of each shard."""

    shard_size: int
    items: list[Item] = field(default_factory=list)
    shards: list[tuple[int, int]] = field(default_factory=list)  # [start, stop) in items
    segments: list[dict] = field(default_factory=list)

    def shard_items(self, shard: int) -> list[Item]:
        """The items of one shard, in order."""
        start, stop = self.shards[shard]
        return self.items[start:stop]

    def extend(self, items: list[Item]) -> int:
        """Append the items whose keys are new as shards after the existing ones; how many."""
        known = {item.key for item in self.items}
        new = sorted((item for item in items if item.key not in known), key=lambda i: i.key)
        if new:
            first, start = len(self.shards), len(self.items)
            for offset in range(0, len(new), self.shard_size):
                stop = min(offset + self.shard_size, len(new))
                self.shards.append((start + offset, start + stop))
            self.segments.append(
                {
                    "first_shard": first,
                    "shards": len(self.shards) - first,
                    "items": len(new),
                    "digest": digest(new),
                    "list": f"items/items_{len(self.segments):03d}.parquet",
                }
            )
            self.items += new
        return len(new)

    def save(self, out: str | os.PathLike, *, rewrite: bool = False) -> None:
        """Write the item lists not yet on disk (all with rewrite), then manifest.json."""
        out = Path(out)
        for segment in self.segments:
            path = out / segment["list"]
            if path.exists() and not rewrite:
                continue  # a segment's list never changes once written
            first = segment["first_shard"]
            start = self.shards[first][0]
            rows = self.items[start : start + segment["items"]]
            table = pa.Table.from_pylist([item._asdict() for item in rows], schema=_ITEM_SCHEMA)
            write_atomic(
                path,
                lambda file, t=table, n=self.shard_size: pq.write_table(t, file, row_group_size=n),
            )
        write_json(out / MANIFEST, self.to_json())

    def to_json(self) -> dict:
        """manifest.json's contents."""
        shards = [
            {
                "shard": i,
                "start": a,
                "stop": b,
                "first": self.items[a].key,
                "last": self.items[b - 1].key,
            }
            for i, (a, b) in enumerate(self.shards)
        ]
        chained = hashlib.sha256("".join(s["digest"] for s in self.segments).encode())
        return {
            "version": VERSION,
            "shard_size": self.shard_size,
            "items": len(self.items),
            "digest": chained.hexdigest(),
            "segments": self.segments,
            "shards": shards,
        }


def load(out: str | os.PathLike) -> Manifest | None:
    """The manifest of a collection folder, or None if it has none."""
    out = Path(out)
    record = read_json(out / MANIFEST)
    if record is None:
        return None
    if record.get("version") != VERSION:
        raise ValueError(f"{out / MANIFEST} has version {record.get('version')}, not {VERSION}")
    items = []
    for segment in record["segments"]:
        table = pq.read_table(out / segment["list"], schema=_ITEM_SCHEMA)
        items += [Item(**row) for row in table.to_pylist()]
    shards = [(s["start"], s["stop"]) for s in record["shards"]]
    if len(items) != record["items"] or (shards and shards[-1][1] != len(items)):
        raise ValueError(
            f"{out} has {len(items)} listed items but its manifest says {record['items']}; "
            "the collection is damaged: build it again with overwrite=True"
        )
    return Manifest(record["shard_size"], items, shards, record["segments"])
