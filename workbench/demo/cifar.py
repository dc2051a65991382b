"""Write images and labels as CIFAR-10 / CIFAR-100 binary directories, as mindspore.dataset reads.

CIFAR-10: data_batch_1.bin .. data_batch_5.bin and test_batch.bin of records <label><3072 bytes>,
batches.meta.txt with a class name per line. CIFAR-100: train.bin and test.bin of records
<coarse><fine><3072 bytes>, coarse_label_names.txt and fine_label_names.txt. The 3072 bytes are the
red, green and blue 32x32 planes, row by row. mindspore.dataset reads exactly 10000 records per
CIFAR-10 file and 50000 / 10000 from CIFAR-100's train.bin / test.bin: the counts are CIFAR's own.
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image

from . import shapes

# (images (N, 32, 32, 3) uint8, labels (N,)), or for CIFAR-100 (images, coarse, fine)
Split = tuple
TRAIN, TEST = 50000, 10000


def _check_names(names, what: str) -> list[str]:
    names = list(names)
    if not names or len(names) > 256:
        raise ValueError(
            f"{what} must hold 1 to 256 class names (labels are bytes), got {len(names)}"
        )
    for name in names:
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise ValueError(f"{what}: {name!r} is not a class name; use words joined by '_'")
    return names


def _records(split: Split, names: list[list[str]], what: str, count: int) -> bytes:
    images, *labels = split
    images = np.asarray(images)
    if len(images) != count:
        raise ValueError(
            f"{what} has {len(images)} images; the CIFAR binary format (and mindspore.dataset, "
            f"which reads fixed-size files) holds exactly {TRAIN} train and {TEST} test images"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"{what} images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}: CIFAR "
            "stores 32x32 RGB; resize first, e.g. with PIL's Image.resize((32, 32))"
        )
    columns = []
    for label, classes in zip(labels, names, strict=True):
        label = np.asarray(label)
        if label.shape != (len(images),) or not np.issubdtype(label.dtype, np.integer):
            raise ValueError(
                f"{what} needs one integer label per image, got {label.dtype} {label.shape}"
            )
        if len(label) and not 0 <= label.min() <= label.max() < len(classes):
            raise ValueError(
                f"{what} labels range over [{label.min()}, {label.max()}], "
                f"outside the {len(classes)} class names"
            )
        columns.append(label.astype(np.uint8)[:, None])
    columns.append(images.transpose(0, 3, 1, 2).reshape(len(images), 3072))
    return np.concatenate(columns, axis=1).tobytes()


def write_cifar10(
    root: str | os.PathLike, train: Split | None, test: Split, names: list[str]
) -> Path:
    """Write (images, labels) train and test splits as a CIFAR-10 binary directory at root; with
    train None, the test split alone."""
    names = _check_names(names, "names")
    test = _records(test, [names], "test", TEST)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if train is not None:
        records = _records(train, [names], "train", TRAIN)
        size = len(records) // 5
        for i in range(5):
            (root / f"data_batch_{i + 1}.bin").write_bytes(records[i * size : (i + 1) * size])
    (root / "test_batch.bin").write_bytes(test)
    (root / "batches.meta.txt").write_text("\n".join(names) + "\n")
    return root


def write_cifar100(
    root: str | os.PathLike,
    train: Split | None,
    test: Split,
    coarse_names: list[str],
    fine_names: list[str],
) -> Path:
    """Write (images, coarse labels, fine labels) splits as a CIFAR-100 binary directory at root;
    with train None, the test split alone."""
    names = [_check_names(coarse_names, "coarse_names"), _check_names(fine_names, "fine_names")]
    test = _records(test, names, "test", TEST)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if train is not None:
        (root / "train.bin").write_bytes(_records(train, names, "train", TRAIN))
    (root / "test.bin").write_bytes(test)
    (root / "coarse_label_names.txt").write_text("\n".join(names[0]) + "\n")
    (root / "fine_label_names.txt").write_text("\n".join(names[1]) + "\n")
    return root


def as_cifar(samples: list[shapes.Sample]) -> Split:
    """Single-object samples as (images downscaled to 32x32, shape labels, colour_shape labels)."""
    if any(len(s.labels) != 1 for s in samples):
        raise ValueError("CIFAR has one label per image: generate the samples with objects=1")
    images = [Image.fromarray(s.image).resize((32, 32), Image.Resampling.BOX) for s in samples]
    shape = [shapes.SHAPES.index(s.labels[0].shape) for s in samples]
    combo = [shapes.COMBOS.index(f"{s.labels[0].colour} {s.labels[0].shape}") for s in samples]
    return np.stack([np.asarray(i) for i in images]), np.array(shape), np.array(combo)


def write_shapes(
    root: str | os.PathLike, seed: int = 0, *, train: bool = True
) -> tuple[Path, Path]:
    """Single-object shapes as CIFAR-10 (label: shape) and CIFAR-100 (coarse: shape, fine:
    colour_shape) directories under root; test is half test split, half heldout. train=False
    writes the test splits alone, in a sixth of the time."""
    # train: seen combinations in colour, drawn from the test split with another seed (the train
    # split's black-and-white photos would carry colour labels that cannot be seen)
    train = as_cifar(shapes.generate("test", TRAIN, seed + 1, objects=1)) if train else None
    test = shapes.generate("test", TEST // 2, seed, objects=1)
    test = as_cifar(test + shapes.generate("heldout", TEST // 2, seed, objects=1))
    root = Path(root)
    shape_labels = None if train is None else train[:2]
    cifar10 = write_cifar10(root / "cifar-10-batches-bin", shape_labels, test[:2], shapes.SHAPES)
    fine = [c.replace(" ", "_") for c in shapes.COMBOS]
    cifar100 = write_cifar100(root / "cifar-100-binary", train, test, shapes.SHAPES, fine)
    return cifar10, cifar100
