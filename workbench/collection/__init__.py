"""Collections of images embedded in shards (sharded, resumable, on one machine, Ray or msrun)."""

from .build import (
    BuildSummary,
    CollectionError,
    ShardWorker,
    build,
    decode,
    embed_shard,
    fingerprint,
    shard_done,
    shard_paths,
    status,
)
from .manifest import Manifest
from .sources import Item, list_items, open_image

__all__ = [
    "BuildSummary",
    "Collection",
    "CollectionError",
    "Item",
    "Manifest",
    "ShardWorker",
    "build",
    "decode",
    "embed_shard",
    "fingerprint",
    "list_items",
    "open_image",
    "shard_done",
    "shard_paths",
    "status",
]


def __getattr__(name: str):
    if name == "Collection":  # the index and search side, imported when asked for
        from .search import Collection

        return Collection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
