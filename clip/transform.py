"""CLIP's image preprocessing, numerically identical to OpenAI's torchvision `_transform`."""

import numbers

import numpy as np
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
# The most pixels the short-side resize may make (64 MB as RGBA): a 4 KB PNG of 1 x 2,000,000 would
# be resized to 224 x 448,000,000. Resizing only the crop cannot keep OpenAI's numbers to the bit
# (Pillow's two passes round in between, in an order that depends on the sizes), so it is refused.
MAX_RESIZED_PIXELS = 1 << 24


def _as_pil(image) -> Image.Image:
    """A PIL image as is; an (H, W), (H, W, 1|2|3|4) uint8 array through Image.fromarray."""
    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"preprocess expects a PIL.Image.Image or a uint8 numpy array of shape (H, W) or "
            f"(H, W, C) with C in 1-4, got {type(image).__module__}.{type(image).__qualname__}"
        )
    if image.dtype != np.uint8:
        raise TypeError(
            f"preprocess expects uint8 arrays (values 0-255), got dtype {image.dtype}: pass "
            "(array * 255).round().astype(np.uint8) for floats in [0, 1], or a PIL image"
        )
    if image.ndim not in (2, 3) or (image.ndim == 3 and not 1 <= image.shape[2] <= 4):
        raise ValueError(
            f"preprocess expects an HWC array, (H, W) or (H, W, C) with C in 1-4, got shape "
            f"{image.shape}; transpose CHW arrays with array.transpose(1, 2, 0)"
        )
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)


def center_crop(size: tuple[int, int], n_px: int) -> tuple[tuple[int, int], tuple[int, ...]]:
    """Where preprocess takes its n_px crop of an image of size (width, height): the size the image
    is resized to, and the crop box (left, top, right, bottom) in the resized image."""
    w, h = size
    # torchvision Resize(n): short side to n, long side int(n * long / short)
    resized = (n_px, int(n_px * h / w)) if w <= h else (int(n_px * w / h), n_px)
    # torchvision CenterCrop(n); both sides are >= n here, so it never pads
    left, top = int(round((resized[0] - n_px) / 2.0)), int(round((resized[1] - n_px) / 2.0))
    return resized, (left, top, left + n_px, top + n_px)


class Preprocess:
    """Bicubic resize of the short side to n_px, center crop, RGB, scale to [0, 1], normalize."""

    def __init__(self, n_px: int, mean: tuple = MEAN, std: tuple = STD):
        if isinstance(n_px, bool) or not isinstance(n_px, numbers.Integral) or n_px < 1:
            raise ValueError(f"n_px must be a positive integer (e.g. 224), got {n_px!r}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need three values, std > 0; got {mean}, {std}")
        self.n_px = int(n_px)
        self.mean, self.std = tuple(map(float, mean)), tuple(map(float, std))
        self._mean = np.array(self.mean, np.float32).reshape(3, 1, 1)
        self._std = np.array(self.std, np.float32).reshape(3, 1, 1)

    def __call__(self, image: "Image.Image | np.ndarray") -> np.ndarray:
        """float32 array (3, n_px, n_px) for a PIL image or an HWC uint8 array."""
        image, n = _as_pil(image), self.n_px
        w, h = image.size
        if w == 0 or h == 0:
            raise ValueError(f"cannot preprocess an empty image of size {w}x{h} (width x height)")
        size, box = center_crop((w, h), n)
        if size[0] * size[1] > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"cannot preprocess a {w}x{h} image (width x height): resizing its short side to "
                f"{n} makes it {size[0]}x{size[1]}, over the limit of {MAX_RESIZED_PIXELS} pixels "
                f"(MAX_RESIZED_PIXELS); crop it to an aspect ratio under "
                f"{MAX_RESIZED_PIXELS // n // n}:1 around what matters first"
            )
        if size != image.size:  # as torchvision's Resize, which skips an image of the right size
            image = image.resize(size, Image.Resampling.BICUBIC)
        image = image.crop(box).convert("RGB")
        x = np.asarray(image, np.float32).transpose(2, 0, 1) / np.float32(255)
        return np.ascontiguousarray((x - self._mean) / self._std)

    def __repr__(self) -> str:
        n = self.n_px
        return (
            f"Preprocess(n_px={n}: bicubic resize of the short side to {n}, center crop "
            f"{n}x{n}, convert RGB, /255, normalize mean={self.mean} std={self.std}) -> float32 "
            f"(3, {n}, {n})"
        )


def transform(n_px: int, mean: tuple = MEAN, std: tuple = STD) -> Preprocess:
    """The preprocessing for a model with input resolution n_px (and its normalisation)."""
    return Preprocess(n_px, mean, std)
