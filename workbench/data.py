"""Labelled image sets: CIFAR-10/100 binaries, image folders, synthetic shapes, scikit-learn digits.

Each is an `ImageDataset`: `dataset[i]` is `(image, label)`, `dataset.classes` the class names
(underscores turned into spaces, ready for prompts), `dataset.labels` an int64 array.
"""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
CIFAR_URLS = {
    "CIFAR-10": "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
    "CIFAR-100": "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
}
SPLITS = ("train", "test", "all")


def load_image(item) -> "Image.Image | np.ndarray":
    """A path read into a PIL image; a PIL image or a numpy array as is."""
    if isinstance(item, str | os.PathLike):
        try:
            with Image.open(item) as image:
                image.load()
                return image
        except Image.DecompressionBombError as err:
            raise ValueError(
                f"{item} is refused as a possible decompression bomb ({err}); if you trust it, "
                "raise PIL.Image.MAX_IMAGE_PIXELS, or downscale the file"
            ) from err
        except MemoryError:
            raise
        except Exception as err:  # Pillow's decoders raise many kinds on malformed files
            if isinstance(err, OSError) and err.filename is not None:
                raise  # from the operating system (absent, a directory, denied): names the path
            raise ValueError(
                f"{item} is not a readable image ({type(err).__name__}: {err}); check or replace it"
            ) from err
    if isinstance(item, Image.Image | np.ndarray):
        return item
    raise TypeError(
        f"an image must be a PIL image, an HWC uint8 numpy array or a path, got "
        f"{type(item).__module__}.{type(item).__qualname__}"
    )


class ImageDataset(Sequence):
    """Images (an (N, H, W, C) uint8 array or a list of arrays, PIL images, paths) with labels."""

    def __init__(self, images, labels, classes: Sequence[str], name: str = "images"):
        self.images = images if isinstance(images, np.ndarray) else list(images)
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        self.classes, self.name = list(classes), name
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(self.classes):
            raise ValueError(f"labels range over [{self.labels.min()}, {self.labels.max()}], "
                             f"outside the {len(self.classes)} classes")  # fmt: skip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        """(image, label) for an integer index; a sub-dataset for a slice or an index array."""
        if isinstance(index, int | np.integer):
            return load_image(self.images[index]), int(self.labels[index])
        indices = np.arange(len(self))[index]
        images = (self.images[indices] if isinstance(self.images, np.ndarray)
                  else [self.images[i] for i in indices])  # fmt: skip
        return ImageDataset(images, self.labels[indices], self.classes, self.name)

    def __repr__(self) -> str:
        return f"ImageDataset({self.name!r}, {len(self)} images, {len(self.classes)} classes)"


def _names(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    return [line.strip().replace("_", " ") for line in lines if line.strip()]


def _cifar_dir(root, title: str, folder: str, needed: dict[str, int | None]) -> Path:
    """The directory holding CIFAR's files (root or root/folder), their sizes checked."""
    root = Path(root).expanduser()
    for directory in (root / folder, root):
        if all((directory / name).is_file() for name in needed):
            for name, size in needed.items():
                if size is not None and (actual := (directory / name).stat().st_size) != size:
                    raise ValueError(
                        f"{directory / name} has {actual} bytes, not the {size} of the {title} "
                        f"binary version; download it again from {CIFAR_URLS[title]}"
                    )
            return directory
    url = CIFAR_URLS[title]
    raise FileNotFoundError(
        f"no {title} binary data in {root} (looked for {', '.join(needed)} there and in "
        f"{root / folder}). Download the binary version from {url} and unpack it with "
        f"`tar xzf {url.rsplit('/', 1)[1]} -C {root}`, which makes {root / folder}"
    )


def _split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _read(dataset, columns: list[str]) -> list[np.ndarray]:
    """All rows of a mindspore dataset, column by column, in order."""
    batches = [[] for _ in columns]
    for row in dataset.batch(1000).create_tuple_iterator(columns=columns, output_numpy=True):
        for batch, value in zip(batches, row, strict=True):
            batch.append(value)
    return [np.concatenate(b) for b in batches]


def cifar10(root: str | os.PathLike, split: str = "test") -> ImageDataset:
    """CIFAR-10 (binary version) through mindspore.dataset.Cifar10Dataset, in file order."""
    import mindspore.dataset as ds

    files = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
    files = files.get(_split(split), files["train"] + files["test"])
    needed = {"batches.meta.txt": None, **dict.fromkeys(files, 10000 * 3073)}
    directory = _cifar_dir(root, "CIFAR-10", "cifar-10-batches-bin", needed)
    dataset = ds.Cifar10Dataset(str(directory), usage=split, shuffle=False)
    images, labels = _read(dataset, ["image", "label"])
    return ImageDataset(images, labels, _names(directory / "batches.meta.txt"), f"CIFAR-10 {split}")


def cifar100(root: str | os.PathLike, split: str = "test", label: str = "fine") -> ImageDataset:
    """CIFAR-100 (binary version) via mindspore.dataset.Cifar100Dataset; fine or coarse labels."""
    import mindspore.dataset as ds

    if label not in ("fine", "coarse"):
        raise ValueError(f"label must be 'fine' or 'coarse', got {label!r}")
    files = {"train": {"train.bin": 50000 * 3074}, "test": {"test.bin": 10000 * 3074}}
    names = f"{label}_label_names.txt"
    needed = {names: None, **files.get(_split(split), files["train"] | files["test"])}
    directory = _cifar_dir(root, "CIFAR-100", "cifar-100-binary", needed)
    dataset = ds.Cifar100Dataset(str(directory), usage=split, shuffle=False)
    images, labels = _read(dataset, ["image", f"{label}_label"])
    return ImageDataset(images, labels, _names(directory / names), f"CIFAR-100 {split}")


def image_folder(root: str | os.PathLike) -> ImageDataset:
    """Images in root/<class name>/*, classes in sorted folder order (as in ImageFolder)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory; put images in {root}/<class name>/")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise FileNotFoundError(
            f"no images in {root}: expected {root}/<class name>/<image> with extensions "
            f"{', '.join(IMAGE_EXTENSIONS)}"
        )
    return ImageDataset(paths, labels, [f.name.replace("_", " ") for f in folders], root.name)


def shapes_dataset(
    split: str = "test", n: int = 500, seed: int = 0, target: str = "shape"
) -> ImageDataset:
    """Single-object synthetic shapes (64x64) of workbench.demo; target shape, colour or combo."""
    from .demo import shapes as demo

    classes = {"shape": demo.SHAPES, "colour": tuple(demo.COLOURS), "combo": demo.COMBOS}
    if target not in classes:
        raise ValueError(f"target must be one of {tuple(classes)}, got {target!r}")
    samples = demo.generate(split, n, seed, objects=1)
    key = {"shape": lambda o: o.shape, "colour": lambda o: o.colour,
           "combo": lambda o: f"{o.colour} {o.shape}"}[target]  # fmt: skip
    labels = [classes[target].index(key(s.labels[0])) for s in samples]
    return ImageDataset(np.stack([s.image for s in samples]), labels, classes[target],
                        f"shapes {split} {target}")  # fmt: skip


def digits(split: str = "all", scale: int = 4) -> ImageDataset:
    """scikit-learn's 1797 8x8 digits as white-on-black RGB uint8 of 8*scale pixels; test is a
    fixed 25% (seeded permutation), train the rest."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255 / 16)).astype(np.uint8)
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)[..., None].repeat(3, axis=3)
    order = np.random.default_rng(0).permutation(len(images))
    cut = len(images) // 4
    chosen = {"test": order[:cut], "train": order[cut:], "all": order}[_split(split)]
    return ImageDataset(images[chosen], bunch.target[chosen], [str(d) for d in range(10)],
                        f"digits {split}")  # fmt: skip
