"""Reading a collection: memory-mapped embeddings, metadata, search by text, image or embedding.

`Collection.open(DIR).search("a red circle", k=10)` encodes the query with the collection's model
(loaded once, on first need) and returns the k nearest good items with their scores and metadata,
from DIR/index/ when an index was built, else by exact search one shard at a time.
"""

import base64
import html
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from ..data import load_image
from ..features import image_features, l2_normalize, text_features
from . import index as indexes
from .build import shard_done, shard_paths
from .manifest import read_json

METADATA = ("key", "path", "caption", "size", "error")


class Results(list):
    """Search hits, best first: dicts with rank, score, key, path, caption, size, shard, row."""

    def __init__(self, hits, query: str = ""):
        super().__init__(hits)
        self.query = query

    def __repr__(self) -> str:
        lines = [f"{len(self)} results for {self.query}" if self.query else f"{len(self)} results"]
        for hit in self:
            caption = f"  {hit['caption']!r}" if hit["caption"] else ""
            lines.append(f"{hit['rank']:>3}  {hit['score']:.3f}  {hit['key']}{caption}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        cells = []
        for hit in self:
            title = html.escape(hit["caption"] or hit["key"])
            cells.append(
                f"<figure style='margin:4px;text-align:center' title='{title}'>"
                f"{_thumbnail(hit['path'])}<figcaption style='font-size:80%'>"
                f"{hit['rank']}. {hit['score']:.3f}<br>{html.escape(hit['key'])}</figcaption>"
                "</figure>"
            )
        head = f"<div><b>{html.escape(self.query)}</b></div>" if self.query else ""
        return f"{head}<div style='display:flex;flex-wrap:wrap'>{''.join(cells)}</div>"


def _thumbnail(path, side: int = 96) -> str:
    """An <img> of the file at path as an inline PNG at most side pixels wide, or a placeholder."""
    try:
        picture = load_image(path)
    except (OSError, ValueError):
        return f"<div style='width:{side}px;height:{side}px;background:#eee'>unreadable</div>"
    picture = picture.convert("RGB")
    scale = side / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    buffer = io.BytesIO()
    picture.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BICUBIC).save(
        buffer, format="PNG"
    )
    return f"<img src='data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}'>"


class Collection:
    """A built collection folder: its done shards, memory-mapped embeddings, metadata and index."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        described = self.path / "collection.json"
        if not described.is_file():
            raise ValueError(
                f"{self.path} is not a collection (no collection.json); build one with "
                f"`python -m workbench.collection build SOURCE --out {self.path}`"
            )
        self.description = json.loads(described.read_text())
        self.model_spec = self.description["model"]
        self.embed_dim = int(self.description["embed_dim"])
        self.dtype = self.description.get("dtype", "float16")
        self._model = None
        self._good: dict[int, np.ndarray] = {}
        self._index, self._index_file = None, None
        self.refresh()

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Collection":
        """The collection in folder path."""
        return cls(path)

    def refresh(self) -> None:
        """Look for shards done since the last look (a build may have appended some; done shards
        never change, so they are checked once)."""
        print_ = self.description.get("fingerprint")
        rows = getattr(self, "_rows", {})
        for record in (self.path / "shards").glob("[0-9]*.json"):
            shard = int(record.stem)
            if shard not in rows:
                count = (read_json(record) or {}).get("rows")
                if count is not None and shard_done(self.path, shard, count, print_):
                    rows[shard] = count
        self._rows, self.shards = rows, sorted(rows)

    def _file(self, kind: str, shard: int) -> Path:
        return shard_paths(self.path, shard)[kind]

    def embeddings(self, shard: int, kind: str = "img_emb") -> np.ndarray:
        """The (rows, D) embeddings of a shard, memory-mapped (kind img_emb or text_emb)."""
        return np.load(self._file(kind, shard), mmap_mode="r")

    def metadata(self, shard: int, columns=METADATA):
        """A shard's metadata as a pyarrow Table."""
        return pq.read_table(self._file("metadata", shard), columns=list(columns))

    def good_mask(self, shard: int) -> np.ndarray:
        """True for the rows of a shard without an error."""
        if shard not in self._good:
            self._good[shard] = (
                self.metadata(shard, ["error"])
                .column("error")
                .is_null()
                .to_numpy(zero_copy_only=False)
            )
        return self._good[shard]

    def good_rows(self, shard: int) -> int:
        return int(self.good_mask(shard).sum())

    def good_count(self) -> int:
        """Items without an error in the done shards."""
        return sum(self.good_rows(s) for s in self.shards)

    def vectors(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        """Index ids and float32 unit vectors of a shard's good rows."""
        rows = np.flatnonzero(self.good_mask(shard))
        vectors = np.asarray(self.embeddings(shard)[rows], np.float32)
        return indexes.ids_of(shard, rows), np.ascontiguousarray(l2_normalize(vectors))

    def __len__(self) -> int:
        return sum(self._rows.values())

    def index_report(self) -> dict | None:
        """The build report of the collection's index, or None when it has none."""
        return indexes.read_report(self.path / "index")

    def info(self) -> dict:
        """Items, errors, shards, model, dtype and the index in use."""
        report = self.index_report()
        kind = "none (exact search, shard by shard)"
        if report:
            covered = len(set(report["shards"]) & set(self.shards))
            kind = f"{report['kind']} ({report['ntotal']} vectors, {covered} of "
            kind += f"{len(self.shards)} shards)"
            if "recall_at_10" in report:
                kind += f", recall@10 {report['recall_at_10']:.3f} at {report['parameter']} "
                kind += f"{report['value']}"
        return {"items": len(self), "errors": len(self) - self.good_count(),
                "shards": len(self.shards), "model": str(self.model_spec), "embed_dim":
                self.embed_dim, "dtype": self.dtype, "index": kind}  # fmt: skip

    def __repr__(self) -> str:
        info = self.info()
        return (
            f"Collection({self.path.name!r}: "
            + ", ".join(f"{k} {v}" for k, v in info.items())
            + ")"
        )

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td>"
                       f"</tr>" for k, v in self.info().items())  # fmt: skip
        return f"<b>Collection {html.escape(self.path.name)}</b><table>{rows}</table>"

    @property
    def model(self):
        """(model, preprocess) of the collection, loaded on first use."""
        if self._model is None:
            import clip

            self._model = clip.load(self.model_spec)
            if (width := self._model[0].config.embed_dim) != self.embed_dim:
                raise ValueError(f"the model {self.model_spec} gives {width}-d embeddings but the "
                                 f"collection holds {self.embed_dim}-d ones")  # fmt: skip
        return self._model

    def encode(self, query) -> tuple[np.ndarray, list[str]]:
        """(Q, D) unit float32 query vectors and their descriptions, of texts, images or vectors.

        A string naming an existing file, a path object, a PIL image or an (H, W, C) uint8 array
        is an image; another string a text; float arrays (D,) or (Q, D) are embeddings.
        """
        queries = query if isinstance(query, list | tuple) else [query]
        if queries and all(_is_text(q) for q in queries):
            model = self.model[0]
            return text_features(model, list(queries), normalize=True, progress=False), [
                repr(q) for q in queries
            ]
        if queries and all(_is_image(q) for q in queries):
            model, preprocess = self.model
            described = [f"image {q}" if isinstance(q, str | os.PathLike) else "an image"
                         for q in queries]  # fmt: skip
            return image_features(model, preprocess, list(queries), normalize=True,
                                  progress=False), described  # fmt: skip
        vectors = np.asarray(query, np.float32)
        if vectors.ndim not in (1, 2) or vectors.shape[-1] != self.embed_dim:
            raise ValueError(
                f"a query embedding must be ({self.embed_dim},) or (Q, {self.embed_dim}), the "
                f"collection's width, got shape {vectors.shape}; or pass a text or an image"
            )
        vectors = np.atleast_2d(vectors)
        if not np.isfinite(vectors).all() or not np.linalg.norm(vectors, axis=1).all():
            raise ValueError("a query embedding holds NaN, inf or is all zeros")
        return np.ascontiguousarray(l2_normalize(vectors)), ["an embedding"] * len(vectors)

    def _loaded_index(self):
        """The built index (None without one), checked against the done shards."""
        report = self.index_report()
        if report is None:
            return None, None
        indexes.check(report, self)
        if self._index_file != report["file"]:
            self._index, self._index_file = (
                indexes.read(self.path / "index", report),
                report["file"],
            )
        return self._index, report

    def search(self, query, k: int = 10, *, nprobe: int | None = None,
               ef_search: int | None = None):  # fmt: skip
        """The k nearest good items to a query (text, image, path or embedding) as Results; a list
        of queries or a (Q, D) array gives a list of Results. nprobe (IVF) or ef_search (HNSW)
        override the index's tuned search effort for this call."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.refresh()
        vectors, described = self.encode(query)
        index, report = self._loaded_index()
        if index is None:
            scores, ids = indexes.exact_top_k(self, vectors, k)
        else:
            scores, ids = indexes.search(index, report, vectors, k, nprobe=nprobe,
                                         ef_search=ef_search)  # fmt: skip
        results = [self._results(s, i, d) for s, i, d in zip(scores, ids, described, strict=True)]
        single = not isinstance(query, list | tuple) and not (
            isinstance(query, np.ndarray) and query.ndim == 2
        )
        return results[0] if single else results

    def _results(self, scores, ids, query: str) -> Results:
        keep = ids >= 0
        scores, ids = scores[keep], ids[keep]
        shards, rows = indexes.shard_row(ids)
        hits = [None] * len(ids)
        for shard in np.unique(shards):
            at = np.flatnonzero(shards == shard)
            table = self.metadata(int(shard)).take(rows[at]).to_pylist()
            for place, meta in zip(at, table, strict=True):
                hits[place] = {"rank": int(place) + 1, "score": float(scores[place]), **meta,
                               "shard": int(shard), "row": int(rows[place])}  # fmt: skip
        return Results(hits, query)

    def build_index(self, kind: str = "flat", **options) -> dict:
        """Build and write DIR/index/ (see workbench.collection.index.build); returns its report."""
        self.refresh()
        return indexes.build(self, kind=kind, **options)

    def update_index(self, **options) -> dict:
        """Add the shards done since the index was built; returns the new report."""
        self.refresh()
        return indexes.update(self, **options)


def _is_text(query) -> bool:
    return isinstance(query, str) and not os.path.isfile(query)


def _is_image(query) -> bool:
    if isinstance(query, np.ndarray):
        return query.dtype == np.uint8 and query.ndim == 3
    return isinstance(query, str | os.PathLike | Image.Image)
