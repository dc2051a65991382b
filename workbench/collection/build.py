"""Building a collection: embed every shard of the manifest once, under any engine.

`embed_shard` is the one worker function. It reads its items' bytes, decodes and preprocesses
them in a thread pool (Pillow releases the GIL) while the model encodes the previous batch, and
writes, each to a temporary name moved into place, `img_emb/img_emb_N.npy`, `text_emb/...` when
the source has captions, `metadata/metadata_N.parquet`, and last `shards/N.json`: a shard is done
when that record exists, matches the run's fingerprint and its files have the recorded rows. A bad
image (empty, truncated, not an image, a decompression bomb, missing) gets a zero row and its
error in the metadata; it never stops the run.

`build` lists the source, plans or extends the manifest (see `workbench.collection.manifest` for
how a grown source is appended), refuses a folder built with another fingerprint unless
`overwrite=True`, and hands the shards not done to an engine: "local" (this process), "ray" or
"msrun" (`workbench.collection.engines`).
"""

import io
import os
import shutil
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

import clip

from ..features import l2_normalize, prefetched, text_features, weights_digest
from . import manifest as manifests
from .manifest import Manifest, read_json, write_atomic, write_json
from .sources import Item, list_items, read_bytes

ENGINES = ("local", "ray", "msrun")
DTYPES = ("float16", "float32")
COLLECTION = "collection.json"
FAULT_ENV = "WORKBENCH_COLLECTION_FAULT"  # a marker file: the worker that finds it exits at once
_METADATA = pa.schema(
    [
        ("key", pa.string()),
        ("path", pa.string()),
        ("caption", pa.string()),
        ("size", pa.int64()),
        ("error", pa.string()),
    ]
)


class CollectionError(ValueError):
    """A collection folder that cannot be built into as asked."""


class ItemError(Exception):
    """An item that cannot be embedded; kind is one of the error kinds counted in summaries."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def shard_paths(out: str | os.PathLike, shard: int) -> dict[str, Path]:
    """The files of one shard."""
    out = Path(out)
    return {
        "img_emb": out / "img_emb" / f"img_emb_{shard:06d}.npy",
        "text_emb": out / "text_emb" / f"text_emb_{shard:06d}.npy",
        "metadata": out / "metadata" / f"metadata_{shard:06d}.parquet",
        "record": out / "shards" / f"{shard:06d}.json",
    }


def fingerprint(model, preprocess, dtype: str) -> dict:
    """What makes a shard's numbers: the weights, preprocessing, dtype and library versions."""
    import mindspore
    import PIL

    return {
        "weights_digest": weights_digest(model),
        "embed_dim": model.config.embed_dim,
        "preprocess": repr(preprocess),
        "text": {"context_length": model.context_length, "truncate": True},
        "dtype": dtype,
        "versions": {
            "clip-workbench": clip.__version__,
            "mindspore": mindspore.__version__,
            "pillow": PIL.__version__,
        },
    }


def decode(data: bytes, *, max_pixels: int | None = None) -> Image.Image:
    """A decoded image from a file's bytes; ItemError naming the kind of damage otherwise."""
    if not data:
        raise ItemError("empty", "the file has 0 bytes")
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ItemError("decompression bomb", str(err)) from None
    except UnidentifiedImageError:
        detail = f"Pillow knows no image format in its {len(data)} bytes"
        raise ItemError("not an image", detail) from None
    except Exception as err:  # Pillow's format plugins raise many kinds on malformed headers
        raise ItemError("unreadable", f"{type(err).__name__}: {err}") from None
    if limit is not None and image.width * image.height > limit:
        raise ItemError(
            "decompression bomb",
            f"{image.width}x{image.height} pixels exceed the limit of {limit} (max_pixels)",
        )
    try:
        image.load()
    except Exception as err:
        message = f"{type(err).__name__}: {err}"
        truncated = isinstance(err, EOFError) or "truncated" in str(err) or "broken" in str(err)
        raise ItemError("truncated" if truncated else "unreadable", message) from None
    return image


def _prepared(item: Item, preprocess, max_pixels: int | None):
    """(preprocessed image or None, size in bytes, error or None) of one item."""
    try:
        data = read_bytes(item)
    except OSError as err:
        return None, 0, f"missing: {err.strerror or err}: {item.path}"
    try:
        return preprocess(decode(data, max_pixels=max_pixels)), len(data), None
    except ItemError as err:
        return None, len(data), str(err)
    except Exception as err:  # preprocess refuses what it cannot resize (e.g. 1000:1 images)
        return None, len(data), f"unsupported: {type(err).__name__}: {err}"


def embed_shard(
    out: str | os.PathLike,
    shard: int,
    items: list[Item],
    model,
    preprocess,
    *,
    fingerprint: dict,
    captions: bool,
    batch_size: int = 64,
    threads: int | None = None,
    max_pixels: int | None = None,
    progress=None,
) -> dict:
    """Embed one shard's items and write its files; its record (shards/N.json) is returned."""
    started = time.perf_counter()
    paths = shard_paths(out, shard)
    paths["record"].unlink(missing_ok=True)  # the shard is not done until its files are rewritten
    rows, dim = len(items), fingerprint["embed_dim"]
    embeddings = np.zeros((rows, dim), np.float32)
    sizes, errors = np.zeros(rows, np.int64), [None] * rows
    threads = threads or min(8, os.cpu_count() or 1)

    def encode(indices: list[int], batch: list[np.ndarray]) -> None:
        features = np.asarray(model.encode_image(np.stack(batch)).asnumpy(), np.float32)
        embeddings[indices] = l2_normalize(features)

    def prepare(item: Item):
        return _prepared(item, preprocess, max_pixels)

    # decoded ahead of the model, bounded to bound memory
    prepared = prefetched(prepare, items, ahead=2 * batch_size + threads, threads=threads)
    indices, batch, seen = [], [], 0
    for row, (image, sizes[row], errors[row]) in enumerate(prepared):
        if image is not None:
            indices.append(row)
            batch.append(image)
        if batch and (len(batch) == batch_size or row == rows - 1):
            encode(indices, batch)
            indices, batch = [], []
        if progress is not None and (row + 1 - seen >= batch_size or row == rows - 1):
            progress(row + 1 - seen)
            seen = row + 1
    dtype = np.dtype(fingerprint["dtype"])
    write_atomic(paths["img_emb"], lambda file: np.save(file, embeddings.astype(dtype)))
    texted = [row for row, item in enumerate(items) if item.caption is not None]
    if captions:
        text = np.zeros((rows, dim), np.float32)
        if texted:
            texts = [items[row].caption for row in texted]
            text[texted] = text_features(
                model, texts, normalize=True, progress=False, truncate=True
            )
        write_atomic(paths["text_emb"], lambda file: np.save(file, text.astype(dtype)))
    columns = {
        "key": [i.key for i in items],
        "path": [i.path for i in items],
        "caption": [i.caption for i in items],
        "size": sizes,
        "error": errors,
    }
    table = pa.Table.from_pydict(columns, schema=_METADATA)
    write_atomic(paths["metadata"], lambda file: pq.write_table(table, file))
    seconds = time.perf_counter() - started
    kinds = Counter(error.split(":", 1)[0] for error in errors if error is not None)
    record = {
        "shard": shard,
        "fingerprint": fingerprint,
        "rows": rows,
        "captions": len(texted),
        "errors": sum(kinds.values()),
        "errors_by_kind": dict(sorted(kinds.items())),
        "seconds": round(seconds, 3),
        "images_per_second": round(rows / seconds, 2),
        "batch_size": batch_size,
        "decode_threads": threads,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(paths["record"], record)
    return record


def shard_done(out: str | os.PathLike, shard: int, rows: int, fingerprint: dict) -> bool:
    """Whether a shard's record matches the fingerprint and its files hold the recorded rows."""
    paths = shard_paths(out, shard)
    record = read_json(paths["record"])
    if not record or record.get("fingerprint") != fingerprint or record.get("rows") != rows:
        return False
    try:
        for name in ("img_emb", "text_emb"):
            if name == "text_emb" and not paths[name].exists() and not record["captions"]:
                continue
            array = np.load(paths[name], mmap_mode="r", allow_pickle=False)
            if (
                array.shape != (rows, fingerprint["embed_dim"])
                or array.dtype != fingerprint["dtype"]
            ):
                return False
            expected = array.dtype.itemsize * array.size
            if os.path.getsize(paths[name]) - array.offset < expected:
                return False
        return pq.ParquetFile(paths["metadata"]).metadata.num_rows == rows
    except (OSError, ValueError, pa.ArrowException):
        return False  # cut short or damaged: computed again


@dataclass(frozen=True)
class WorkerOptions:
    """What a worker needs to load its model and embed shards (picklable, sent to workers)."""

    out: str
    model: str
    dtype: str = "float16"
    captions: bool = False
    batch_size: int = 64
    threads: int | None = None
    max_pixels: int | None = None
    device: str | None = None
    jit: bool = False
    fingerprint: dict | None = None  # the run's; a worker whose own differs refuses to work


class ShardWorker:
    """A loaded model that embeds shards: one per process (an engine's worker)."""

    def __init__(self, options: WorkerOptions):
        self.options = options
        self.model, self.preprocess = clip.load(
            options.model, device=options.device, jit=options.jit
        )
        self.fingerprint = fingerprint(self.model, self.preprocess, options.dtype)
        if options.fingerprint is not None and self.fingerprint != options.fingerprint:
            raise CollectionError(
                f"this worker ({socket.gethostname()}, pid {os.getpid()}) computes with "
                f"{_differences(options.fingerprint, self.fingerprint)}; give every worker the "
                "same model file and the same clip-workbench, MindSpore and Pillow versions"
            )

    def embed(self, shard: int, items: list[Item], progress=None) -> dict:
        """embed_shard with this worker's model; the shard's record."""
        marker = os.environ.get(FAULT_ENV)
        if marker:  # a fault drill: the first worker to take the marker dies without clean-up
            try:
                os.remove(marker)
                os._exit(70)
            except FileNotFoundError:
                pass
        o = self.options
        return embed_shard(
            o.out,
            shard,
            items,
            self.model,
            self.preprocess,
            fingerprint=self.fingerprint,
            captions=o.captions,
            batch_size=o.batch_size,
            threads=o.threads,
            max_pixels=o.max_pixels,
            progress=progress,
        )


@dataclass
class BuildSummary:
    """What a build did: items and shards, shards computed and skipped, errors by kind, speed."""

    out: str
    items: int
    shards: int
    computed: int
    skipped: int
    pending: int
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    images: int = 0  # items embedded by this run

    @property
    def images_per_second(self) -> float:
        """Items embedded by this run per second of its wall time."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        errors = ", ".join(f"{n} {kind}" for kind, n in self.errors.items()) or "none"
        lines = [
            f"collection {self.out}: {self.items} items in {self.shards} shards",
            f"this run: {self.computed} shards computed, {self.skipped} already done"
            + (f", {self.pending} left to other workers or not done" if self.pending else ""),
            f"bad items (zero rows, error column): {sum(self.errors.values())} ({errors})",
            f"{self.images} images in {self.seconds:.1f} s: {self.images_per_second:.1f} images/s",
        ]
        return "\n".join(lines)


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    """The fingerprint entries that differ, as 'name: old -> new'."""
    found = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            if inner := _differences(a, b, f"{prefix}{key}."):
                found.append(inner)
        elif a != b:
            found.append(f"{prefix}{key}: {a} -> {b}")
    return "; ".join(found)


def model_spec(model: str | os.PathLike) -> str:
    """The model as collection.json records it: a name as given, a path made absolute."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def planned(
    source,
    out,
    model,
    dtype: str,
    batch_size: int,
    threads,
    max_pixels,
    device,
    jit: bool,
    *,
    kind: str | None,
    shard_size: int | None,
    overwrite: bool,
) -> tuple[WorkerOptions, "ShardWorker", Manifest]:
    """The source listed, the worker options and this process's worker, and the folder planned."""
    items, described = list_items(source, kind=kind)
    options = WorkerOptions(
        str(out),
        model_spec(model),
        dtype,
        described["captions"],
        batch_size,
        threads,
        max_pixels,
        device,
        jit,
    )
    worker = ShardWorker(options)
    plan = prepare(out, items, described, worker, shard_size=shard_size, overwrite=overwrite)
    return options, worker, plan


def prepare(
    out: str | os.PathLike,
    items: list[Item],
    source: dict,
    worker: ShardWorker,
    *,
    shard_size: int | None,
    overwrite: bool,
) -> Manifest:
    """Check the folder against the run, write collection.json and the manifest; the manifest."""
    out = Path(out)
    current = read_json(out / COLLECTION)
    print_ = worker.fingerprint
    # hidden names are temporary files: another msrun rank may be writing collection.json
    others = out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir())
    if current is None and others and not overwrite:
        raise CollectionError(
            f"{out} is not empty and holds no {COLLECTION}: not a collection folder; build into "
            "a new or empty folder, or pass overwrite=True (--overwrite) to write into it anyway"
        )
    if current is not None and not overwrite:
        if current.get("fingerprint") != print_:
            raise CollectionError(
                f"{out} holds a collection built with another fingerprint "
                f"({_differences(current.get('fingerprint') or {}, print_)}); build into another "
                "folder, or pass overwrite=True (--overwrite) to replace it"
            )
        if current.get("source", {}).get("path") != source["path"]:
            raise CollectionError(
                f"{out} holds a collection of {current['source']['path']}, not {source['path']}; "
                "build into another folder, or pass overwrite=True (--overwrite) to replace it"
            )
    plan = None if overwrite or current is None else manifests.load(out)
    if plan is not None and shard_size is not None and shard_size != plan.shard_size:
        raise CollectionError(
            f"{out} is cut into shards of {plan.shard_size} items; pass shard_size="
            f"{plan.shard_size} (--shard-size {plan.shard_size}) or none to add to it, or "
            "overwrite=True to rebuild it"
        )
    plan = plan or Manifest(shard_size or 10_000)
    plan.extend(items)
    if overwrite:
        _remove_stale(out, len(plan.shards), captions=source["captions"])
    options = worker.options
    write_json(
        out / COLLECTION,
        {
            "model": options.model,
            "embed_dim": print_["embed_dim"],
            "dtype": options.dtype,
            "fingerprint": print_,
            "source": source,
        },
    )
    plan.save(out, rewrite=overwrite)
    return plan


def _remove_stale(out: Path, shards: int, *, captions: bool) -> None:
    """Files of shards beyond the new plan, text embeddings a caption-less source has no use for,
    and the index of the old embeddings."""
    for folder, pattern in (
        ("img_emb", "img_emb_*.npy"),
        ("text_emb", "text_emb_*.npy"),
        ("metadata", "metadata_*.parquet"),
        ("shards", "*.json"),
    ):
        for path in (out / folder).glob(pattern):
            number = path.stem.rsplit("_", 1)[-1]
            if number.isdigit() and (
                int(number) >= shards or (folder == "text_emb" and not captions)
            ):
                path.unlink(missing_ok=True)
    shutil.rmtree(out / "index", ignore_errors=True)


def summarize(
    out, plan: Manifest, fingerprint: dict, records: list[dict], skipped: int, seconds: float
) -> BuildSummary:
    """The summary of a run from the shards' records on disk."""
    errors, done = Counter(), 0
    for shard, (start, stop) in enumerate(plan.shards):
        record = read_json(shard_paths(out, shard)["record"])
        if (
            record
            and record.get("fingerprint") == fingerprint
            and record.get("rows") == stop - start
        ):
            done += 1
            errors.update(record["errors_by_kind"])
    return BuildSummary(
        out=str(out),
        items=len(plan.items),
        shards=len(plan.shards),
        computed=len(records),
        skipped=skipped,
        pending=len(plan.shards) - done,
        errors=dict(sorted(errors.items())),
        seconds=seconds,
        images=sum(r["rows"] for r in records),
    )


def run_local(worker: ShardWorker, plan: Manifest, todo: list[int], *, progress: bool) -> list:
    """The local engine: shards one after another in this process, with a progress bar."""
    total = sum(plan.shards[s][1] - plan.shards[s][0] for s in todo)
    records = []
    with tqdm(total=total, unit="image", desc="embedding", disable=not progress) as bar:
        for shard in todo:
            records.append(worker.embed(shard, plan.shard_items(shard), progress=bar.update))
    return records


def build(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str | os.PathLike = "demo",
    engine: str = "local",
    workers: int | None = None,
    shard_size: int | None = None,
    batch_size: int = 64,
    threads: int | None = None,
    dtype: str = "float16",
    kind: str | None = None,
    max_pixels: int | None = None,
    device: str | None = None,
    jit: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    address: str | None = None,
    runtime_env: dict | None = None,
    retries: int = 3,
    master_port: int = 8118,
) -> BuildSummary:
    """Embed a source (image folder, table of paths, webdataset tars) into a collection folder.

    Shards already done with the same fingerprint are skipped, so an interrupted build resumes
    and a grown source gets new shards. engine: "local" (this process), "ray" (workers actors,
    on the cluster at address, or a local one), "msrun" (run under msrun: this rank's share;
    else msrun is launched with workers local ranks on master_port). max_pixels: images larger
    are refused as decompression bombs (default PIL.Image.MAX_IMAGE_PIXELS).
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    for name, value in (
        ("shard_size", shard_size),
        ("batch_size", batch_size),
        ("workers", workers),
        ("threads", threads),
    ):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    started = time.perf_counter()
    out = Path(out).expanduser().resolve()
    from . import engines

    role = engines.msrun_role()
    if role is not None and engine != "msrun":
        raise CollectionError(
            f"this process runs under msrun (MS_ROLE={os.environ['MS_ROLE']}) but engine is "
            f"{engine!r}, so every rank would embed every shard; pass engine='msrun' "
            "(--engine msrun)"
        )
    if role is not None and role[0] == "scheduler":  # msrun's scheduler process does no work
        return BuildSummary(str(out), 0, 0, 0, 0, 0)
    options, worker, plan = planned(
        source,
        out,
        model,
        dtype,
        batch_size,
        threads,
        max_pixels,
        device,
        jit,
        kind=kind,
        shard_size=shard_size,
        overwrite=overwrite,
    )
    if engine == "msrun" and role is None:  # launch msrun on this machine, which runs us per rank
        return engines.launch_msrun(
            source,
            out,
            options,
            worker,
            plan,
            workers=workers or 2,
            kind=kind,
            master_port=master_port,
            started=started,
        )
    print_ = worker.fingerprint
    todo = [s for s, (a, b) in enumerate(plan.shards) if not shard_done(out, s, b - a, print_)]
    skipped = len(plan.shards) - len(todo)
    if role is not None:  # an msrun worker: shard i belongs to rank i % world
        _, rank, world = role
        mine = [s for s in range(len(plan.shards)) if s % world == rank]
        skipped = len(mine) - len([s for s in todo if s % world == rank])
        todo = [s for s in todo if s % world == rank]
        records = run_local(worker, plan, todo, progress=progress)
    elif engine == "local":
        records = run_local(worker, plan, todo, progress=progress)
    else:
        options = WorkerOptions(**{**options.__dict__, "fingerprint": print_})
        records = engines.run_ray(
            options,
            plan,
            todo,
            workers=workers,
            address=address,
            runtime_env=runtime_env,
            retries=retries,
            progress=progress,
        )
    summary = summarize(out, plan, print_, records, skipped, time.perf_counter() - started)
    if summary.pending and role is None:
        raise CollectionError(f"{summary.pending} shards of {out} were not done:\n{summary}")
    return summary


def status(out: str | os.PathLike) -> dict:
    """A collection folder's model, source, items, shards done and bad items by kind."""
    out = Path(out).expanduser()
    described = read_json(out / COLLECTION)
    plan = manifests.load(out) if described is not None else None
    if described is None or plan is None:
        raise CollectionError(f"{out} is not a collection: it has no {COLLECTION} or manifest.json")
    errors, done, rows = Counter(), 0, 0
    for shard, (start, stop) in enumerate(plan.shards):
        if shard_done(out, shard, stop - start, described["fingerprint"]):
            record = read_json(shard_paths(out, shard)["record"])
            done, rows = done + 1, rows + record["rows"]
            errors.update(record["errors_by_kind"])
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "path": str(out),
        "model": described["model"],
        "embed_dim": described["embed_dim"],
        "dtype": described["dtype"],
        "source": described["source"],
        "items": len(plan.items),
        "shards": len(plan.shards),
        "shards_done": done,
        "rows_done": rows,
        "shard_size": plan.shard_size,
        "errors": dict(sorted(errors.items())),
        "bytes": size,
    }
