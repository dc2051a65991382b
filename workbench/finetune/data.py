"""Image-text pairs for fine-tuning: from a table, an image folder, a collection or the shapes."""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from mindspore import Tensor

from clip import tokenize
from clip.transform import Preprocess

from ..data import image_folder, load_image

TABLES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Pairs:
    """Images (paths or HWC uint8 arrays) with a caption each; labels index classes, if known."""

    images: Sequence
    captions: Sequence[str]
    labels: Sequence[int] | None = None
    classes: Sequence[str] | None = None

    def __post_init__(self):
        if len(self.images) != len(self.captions):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} captions")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices) -> "Pairs":
        """The pairs at indices, in that order."""
        pick = [int(i) for i in indices]
        labels = None if self.labels is None else [self.labels[i] for i in pick]
        return Pairs([self.images[i] for i in pick], [self.captions[i] for i in pick], labels,
                     self.classes)  # fmt: skip


def split(pairs: Pairs, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[Pairs, Pairs]:
    """Train and validation pairs: a seeded random val_fraction held out (at least one pair)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to hold some out, got {len(pairs)}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    held = max(1, round(len(pairs) * val_fraction))
    return pairs.subset(np.sort(order[held:])), pairs.subset(np.sort(order[:held]))


def _table(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path).to_pylist()
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def _resolve(paths: list, root: Path, source) -> list[str]:
    resolved = [str(p if Path(p).is_absolute() else root / p) for p in paths]
    if missing := [p for p in resolved if not Path(p).is_file()]:
        raise FileNotFoundError(
            f"{source}: {len(missing)} images not found, e.g. {missing[0]}; paths are read "
            f"relative to {root}"
        )
    return resolved


def read_pairs(path: str | os.PathLike, *, image: str = "path", caption: str = "caption") -> Pairs:
    """Pairs from a CSV, JSONL or parquet table with an image path and a caption column; relative
    paths are read from the table's folder."""
    path = Path(path)
    if path.suffix not in TABLES:
        raise ValueError(f"{path}: a {', '.join(TABLES)} table of ({image}, {caption}) expected")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    rows = _table(path)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    if missing := [c for c in (image, caption) if c not in rows[0]]:
        raise ValueError(f"{path} has columns {list(rows[0])}, lacks {missing}; pass image= and "
                         "caption= to name the columns")  # fmt: skip
    if empty := [i for i, r in enumerate(rows) if not r[caption] or not r[image]]:
        raise ValueError(f"{path}: rows {empty[:5]} have an empty image path or caption")
    images = _resolve([r[image] for r in rows], path.parent, path)
    return Pairs(images, [str(r[caption]) for r in rows])


def folder_pairs(
    root: str | os.PathLike, *, templates: Sequence[str] = ("a photo of a {}.",)
) -> Pairs:
    """Pairs from root/<class name>/<image>: captions are the templates filled with the class
    name, one template per image in turn."""
    if isinstance(templates, str) or not templates or any(t.count("{}") != 1 for t in templates):
        raise ValueError(f"templates must be a list of strings with one '{{}}': {templates!r}")
    dataset = image_folder(root)
    labels = [int(y) for y in dataset.labels]
    captions = [templates[i % len(templates)].format(dataset.classes[y])
                for i, y in enumerate(labels)]  # fmt: skip
    return Pairs(list(dataset.images), captions, labels, list(dataset.classes))


def collection_pairs(root: str | os.PathLike) -> Pairs:
    """Pairs from a collection folder (root/metadata/metadata_*.parquet: key, path, caption, size,
    error): the rows without an error that have a caption."""
    root = Path(root)
    tables = sorted((root / "metadata").glob("metadata_*.parquet"))
    if not tables:
        raise FileNotFoundError(f"{root} has no metadata/metadata_*.parquet: not a collection")
    rows = [r for t in tables for r in pq.read_table(t, columns=["path", "caption", "error"])
            .to_pylist()]  # fmt: skip
    kept = [r for r in rows if not r["error"] and r["caption"] and r["path"]]
    if not kept:
        raise ValueError(f"{root}: none of its {len(rows)} items has a caption and no error")
    return Pairs(_resolve([r["path"] for r in kept], root, root), [r["caption"] for r in kept])


def shapes_pairs(split: str = "train", n: int = 1000, *, seed: int = 0) -> Pairs:
    """Pairs of the demo's synthetic shapes (in-memory images and their captions)."""
    from ..demo import shapes

    samples = shapes.generate(split, n, seed)
    return Pairs([s.image for s in samples], [s.caption for s in samples])


def open_pairs(source: str | os.PathLike, **options) -> Pairs:
    """Pairs from a table file, a collection folder, an image folder of classes, or 'shapes'."""
    if str(source) == "shapes":
        return shapes_pairs(**options)
    path = Path(source)
    if path.is_dir():
        if (path / "metadata").is_dir():
            return collection_pairs(path)
        return folder_pairs(path, **options)
    return read_pairs(path, **options)


class PairBatches:
    """Batch `step` of pairs: seeded shuffles per epoch (last partial batch dropped), preprocessed
    images (N, 3, H, W), token ids (N, L) and eot positions; a function of step, so runs resume."""

    def __init__(self, pairs: Pairs, preprocess: Preprocess, batch_size: int, *, seed: int = 0,
                 context_length: int = 77):  # fmt: skip
        if not 1 <= batch_size <= len(pairs):
            raise ValueError(f"batch_size must be between 1 and the {len(pairs)} pairs, "
                             f"got {batch_size}")  # fmt: skip
        self.pairs, self.preprocess, self.batch_size = pairs, preprocess, batch_size
        self.seed, self.context_length = seed, context_length
        self.per_epoch = len(pairs) // batch_size

    def indices(self, step: int) -> np.ndarray:
        """Indices into pairs of batch `step`."""
        epoch, i = divmod(step, self.per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.pairs))
        return order[i * self.batch_size : (i + 1) * self.batch_size]

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        pick = self.indices(step)
        images = np.stack([self.preprocess(load_image(self.pairs.images[i])) for i in pick])
        captions = [self.pairs.captions[i] for i in pick]
        tokens = tokenize(captions, context_length=self.context_length, truncate=True).asnumpy()
        eot = tokens.argmax(-1).astype(np.int32)
        # causal attention: tokens after eot change nothing; lengths in 8s limit jit recompiles
        length = min(-(-(int(eot.max()) + 1) // 8) * 8, self.context_length)
        return Tensor(images), Tensor(tokens[:, :length]), Tensor(eot)
