"""Batched image and text features from a CLIP model, with an optional on-disk cache.

The cache (a directory, off by default) holds one .npy file per call, named by a SHA-256 of the
model's weights, the preprocessing and the inputs' content (file bytes for paths, pixels for images
and arrays, the strings for texts), so a re-run notebook cell reads its features back instead of
running the model, and features of another model, preprocessing or input are never returned. The
name also carries the SHA-256 of the array's bytes: an entry of the wrong shape, with non-finite
values or changed contents is computed again, and a cache that cannot be written only warns.
"""

import hashlib
import json
import os
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from weakref import WeakKeyDictionary

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

import clip

from .data import ImageDataset, load_image

_VERSION = b"workbench.features 1\0"
_DIGESTS: WeakKeyDictionary = WeakKeyDictionary()


def weights_digest(model, refresh: bool = False) -> str:
    """SHA-256 of a model's parameter names, shapes, dtypes and values, computed once per model.

    Weights changed in place after the first call are seen only with refresh=True.
    """
    if refresh or model not in _DIGESTS:
        digest = hashlib.sha256(_VERSION)
        for name, param in sorted(model.parameters_and_names(), key=lambda item: item[0]):
            value = np.ascontiguousarray(param.asnumpy())
            digest.update(f"{name} {value.dtype.str} {value.shape}\0".encode())
            digest.update(value.tobytes())
        _DIGESTS[model] = digest.hexdigest()
    return _DIGESTS[model]


def _image_items(images) -> list | np.ndarray:
    """The individual images of a data set, an (N, H, W, C) array, a list, or a single image."""
    if isinstance(images, ImageDataset):
        return images.images
    if isinstance(images, str | os.PathLike | Image.Image):
        return [images]
    if isinstance(images, np.ndarray):
        return images if images.ndim == 4 else [images]
    if not isinstance(images, Iterable):
        raise TypeError(
            f"images must be a list of PIL images, HWC uint8 arrays or paths, an (N, H, W, C) "
            f"array or a workbench.data.ImageDataset, got {type(images).__qualname__}"
        )
    return list(images)


def _hash_image(digest, item) -> None:
    if isinstance(item, str | os.PathLike):
        with open(item, "rb") as file:  # in chunks: a large file is not read into memory at once
            digest.update(f"file {os.fstat(file.fileno()).st_size}\0".encode())
            while chunk := file.read(1 << 20):
                digest.update(chunk)
    elif isinstance(item, Image.Image):
        palette = item.getpalette() or []
        digest.update(f"pil {item.mode} {item.size} {palette}\0".encode())
        digest.update(item.tobytes())
    elif isinstance(item, np.ndarray):
        digest.update(f"array {item.dtype.str} {item.shape}\0".encode())
        digest.update(np.ascontiguousarray(item).tobytes())
    else:
        load_image(item)  # raises the TypeError that names what is accepted


def _checksum(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _prepared(preprocess: Callable, item) -> np.ndarray:
    """preprocess(load_image(item)), its errors naming the file of a path."""
    image = load_image(item)  # names the file in its errors
    try:
        return preprocess(image)
    except (ValueError, OSError) as err:
        if isinstance(item, str | os.PathLike):
            raise ValueError(f"{item}: {err}") from err
        raise


def prefetched(
    function: Callable, items: Sequence, *, ahead: int, threads: int | None = None
) -> Iterator:
    """function(item) of each item in order, computed in a thread pool at most `ahead` items ahead.

    Decoding and resizing run here while the caller's model encodes (Pillow and MindSpore release
    the GIL); `ahead` bounds the memory held by results not yet taken.
    """
    threads = threads or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads, thread_name_prefix="prefetch") as pool:
        pending, submitted = deque(), 0
        for _ in range(len(items)):
            while submitted < len(items) and len(pending) < max(ahead, 1):
                pending.append(pool.submit(function, items[submitted]))
                submitted += 1
            yield pending.popleft().result()


def _read_entry(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The float32 array of `shape` in a cache file, if its bytes match the checksum in its name."""
    try:
        # mapped first, so a header claiming a huge shape is refused before anything is read
        stored = np.load(path, mmap_mode="r", allow_pickle=False)
        if stored.dtype != np.float32 or stored.shape != shape:
            return None
        stored = np.array(stored)
    except (OSError, ValueError, EOFError):
        return None  # unreadable or truncated
    checksum = path.name.removesuffix(".npy").rsplit(".", 1)[-1]
    return stored if np.isfinite(stored).all() and _checksum(stored) == checksum else None


def _cached(
    cache, key: str, shape: tuple[int, int], compute: Callable[[], np.ndarray]
) -> np.ndarray:
    """The float32 array of `shape` stored under key in the cache directory, else compute it."""
    if cache is None:
        return compute()
    directory = Path(cache).expanduser()
    for path in sorted(directory.glob(f"{key}.*.npy")):  # <key>.<SHA-256 of the bytes>.npy
        if (stored := _read_entry(path, shape)) is not None:
            return stored
        try:
            path.unlink()  # of the wrong shape or dtype, damaged, non-finite or bit-flipped
        except OSError:
            pass  # a read-only cache: the entry is skipped each time
    features = compute()
    if not np.isfinite(features).all():  # not worth keeping: a re-run may be fixed upstream
        warnings.warn(f"features hold NaN or inf values; not cached in {directory}", stacklevel=3)
        return features
    path = directory / f"{key}.{_checksum(features)}.npy"
    temp = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=directory)
        with os.fdopen(handle, "wb") as file:
            np.save(file, features)
        os.replace(temp, path)
    except OSError as err:  # read-only, full, or not a directory: the features are still good
        warnings.warn(
            f"features computed but not cached: cannot write {path} ({err}); make {directory} a "
            "writable directory with free space, or pass cache=None",
            stacklevel=3,
        )
    finally:
        if temp is not None:  # gone after the rename; left by a failed write
            Path(temp).unlink(missing_ok=True)
    return features


def _batched(encode, chunks: list, count: int, unit: str, progress: bool) -> np.ndarray:
    """Encoder outputs of consecutive chunks, concatenated as float32, with a progress bar."""
    outputs = []
    with tqdm(total=count, unit=unit, disable=not progress, leave=False) as bar:
        for chunk in chunks:
            outputs.append(np.asarray(encode(chunk).asnumpy(), np.float32))
            bar.update(len(chunk))
    return np.concatenate(outputs)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    return features / np.linalg.norm(features, axis=-1, keepdims=True)


def image_features(
    model,
    preprocess: Callable,
    images,
    *,
    batch_size: int = 64,
    cache: str | os.PathLike | None = None,
    normalize: bool = False,
    progress: bool = True,
) -> np.ndarray:
    """float32 (N, D) image features, in input order, of images, paths, arrays or a data set."""
    items = _image_items(images)
    if len(items) == 0:
        raise ValueError("no images given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")

    def compute() -> np.ndarray:
        def batches():
            images = prefetched(lambda item: _prepared(preprocess, item), items, ahead=batch_size)
            for start in range(0, len(items), batch_size):
                yield np.stack([next(images) for _ in range(min(batch_size, len(items) - start))])

        return _batched(model.encode_image, batches(), len(items), "image", progress)

    key = None
    if cache is not None:
        digest = hashlib.sha256(_VERSION + b"image\0" + weights_digest(model).encode())
        kind = type(preprocess)
        describe = f"{kind.__module__}.{kind.__qualname__} {getattr(preprocess, 'n_px', None)} "
        digest.update(f"{describe}{preprocess!r}\0{len(items)}\0".encode())
        for item in items:
            _hash_image(digest, item)
        key = f"image-{digest.hexdigest()}"
    features = _cached(cache, key, (len(items), model.config.embed_dim), compute)
    return l2_normalize(features) if normalize else features


def text_features(
    model,
    texts: str | Iterable[str],
    *,
    batch_size: int = 256,
    cache: str | os.PathLike | None = None,
    normalize: bool = False,
    progress: bool = True,
    truncate: bool = False,
) -> np.ndarray:
    """float32 (N, D) text features, in input order, tokenized at the model's context length."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ValueError("no texts given")
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be strings; format templates with class names first")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    length = model.context_length

    def compute() -> np.ndarray:
        chunks = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]

        def encode(chunk):
            return model.encode_text(clip.tokenize(chunk, context_length=length, truncate=truncate))

        return _batched(encode, chunks, len(texts), "text", progress)

    key = None
    if cache is not None:
        digest = hashlib.sha256(_VERSION + b"text\0" + weights_digest(model).encode())
        digest.update(json.dumps([length, truncate, texts]).encode())
        key = f"text-{digest.hexdigest()}"
    features = _cached(cache, key, (len(texts), model.config.embed_dim), compute)
    return l2_normalize(features) if normalize else features
