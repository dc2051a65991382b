"""Synthetic captioned shapes: 64x64 RGB images of one or two coloured shapes, labels and masks.

Black-and-white train photos, whose captions name shapes but no colours, and colour photos captioned
with the shape alone only in COMPLETE colours are what lets a small CLIP recognise a shape in a
colour it never saw it in: "a photo of a circle." learns of no colour that circles lack. Dark or
light backgrounds keep objects apart from them in brightness as well as in hue, so shapes learnt in
black and white are seen in colour too.
"""

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (235, 215, 40),
    "green": (40, 170, 60),
    "cyan": (40, 200, 210),
    "blue": (40, 80, 220),
    "purple": (140, 60, 190),
    "pink": (240, 110, 180),
}
SIZES = {"small": (8.0, 10.0), "large": (12.0, 14.0)}  # circumradius range, pixels
POSITIONS = {
    "left": (15, 32), "right": (49, 32), "top": (32, 15), "bottom": (32, 49), "centre": (32, 32)
}  # fmt: skip
BACKGROUNDS = ("flat", "gradient", "noise")
# Colour-shape combinations that never occur in the train split: two colours lose two shapes each,
# so six colours are seen with every shape (COMPLETE).
HELD_OUT = (("red", "triangle"), ("red", "star"), ("orange", "circle"), ("orange", "cross"))
# Colours seen with every shape. Only their colour photos have captions that name the shape alone,
# so that "a photo of a cross." learns of no colour that crosses lack.
COMPLETE = tuple(c for c in COLOURS if c not in {colour for colour, _ in HELD_OUT})
COMBOS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)  # "red circle", ...
SEEN = tuple((c, s) for c in COLOURS for s in SHAPES if (c, s) not in HELD_OUT)
SPLITS = ("train", "test", "heldout")
GREYSCALE = 0.5  # chance that a train image, if its objects stay legible, turns black and white
_PAIRS = (("left", "right"), ("top", "bottom"))  # two objects sit opposite and never touch
_JITTER = 2
_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
            "bottom": "at the bottom", "centre": "in the centre"}  # fmt: skip
_BACKGROUND_WORDS = {"flat": "plain", "gradient": "gradient", "noise": "noisy"}
_DARK, _LIGHT = (10.0, 35.0), (215.0, 245.0)  # background brightness bands
_SINGLE = (  # colour photos: most name colour and shape, some only the colour
    "a {colour} {shape}",
    "a photo of a {colour} {shape}.",
    "a {size} {colour} {shape}",
    "a {size} {colour} {shape} {position}",
    "a {colour} {shape} {position}",
    "there is a {colour} {shape} {position}",
    "a {size} {colour} {shape} on a {background} background",
    "a {shape} coloured {colour}",
    "a photo of a {colour} shape.",
    "something {colour} {position}",
    "a {size} {colour} shape",
    "a {colour} shape {position}",
)
_SHAPE_ONLY = (  # black-and-white photos, and colour photos of COMPLETE colours
    "a photo of a {shape}.",
    "a {shape}",
    "a {size} {shape} {position}",
    "a {shape} on a {background} background",
    "a {size} {shape}",
)
_GREY_SINGLE = ("a black and white photo of a {shape}.", *_SHAPE_ONLY)
_DOUBLE = (
    "a {a} and a {b}",
    "a photo of a {a} and a {b}.",
    "a {a} {pa} and a {b} {pb}",
    "two shapes: a {a} and a {b}",
)
_GREY_DOUBLE = "a black and white photo of a {a} and a {b}."


@dataclass(frozen=True)
class Label:
    """What one object is: shape, colour, size and position names."""

    shape: str
    colour: str
    size: str
    position: str


@dataclass(frozen=True)
class Sample:
    """One image (64, 64, 3) uint8, its caption, a label and a boolean mask (64, 64) per object.

    A greyscale image's labels keep the colour each object was drawn in; its caption names none.
    """

    image: np.ndarray
    caption: str
    labels: tuple[Label, ...]
    masks: np.ndarray
    background: str
    greyscale: bool


def with_articles(text: str) -> str:
    """The text with 'a' before a vowel turned into 'an'."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _outline(shape: str, x: float, y: float, r: float, draw: ImageDraw.ImageDraw) -> None:
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    elif shape == "square":
        h = r * 0.8
        draw.rectangle((x - h, y - h, x + h, y + h), fill=1)
    elif shape == "triangle":
        r *= 1.15
        corners = [math.radians(a) for a in (0, 120, 240)]
        draw.polygon([(x + r * math.sin(a), y - r * math.cos(a) + r / 4) for a in corners], fill=1)
    elif shape == "star":
        points = [(r if i % 2 == 0 else 0.45 * r, math.radians(36 * i)) for i in range(10)]
        draw.polygon([(x + d * math.sin(a), y - d * math.cos(a)) for d, a in points], fill=1)
    else:  # cross
        t = r * 0.33
        draw.rectangle((x - r, y - t, x + r, y + t), fill=1)
        draw.rectangle((x - t, y - r, x + t, y + r), fill=1)


def _mask(label: Label, rng: np.random.Generator) -> np.ndarray:
    x, y = np.add(POSITIONS[label.position], rng.integers(-_JITTER, _JITTER + 1, 2))
    canvas = Image.new("L", (SIZE, SIZE))
    radius = rng.uniform(*SIZES[label.size])
    _outline(label.shape, float(x), float(y), radius, ImageDraw.Draw(canvas))
    return np.asarray(canvas) > 0


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    band = _DARK if rng.random() < 0.5 else _LIGHT

    def tone():
        return rng.uniform(*band) + rng.uniform(-20, 20, 3)

    if kind == "flat":
        return np.broadcast_to(tone(), (SIZE, SIZE, 3))
    if kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.cos(angle) * np.arange(SIZE)[None, :] + np.sin(angle) * np.arange(SIZE)[:, None]
        ramp = (ramp - ramp.min()) / (ramp.max() - ramp.min())
        return tone() + ramp[..., None] * (tone() - tone())
    return tone() + rng.normal(0, 18, (SIZE, SIZE, 3))


def _caption(
    labels: tuple[Label, ...], background: str, greyscale: bool, rng: np.random.Generator
) -> str:
    def words(label: Label) -> dict:
        position, ground = _PHRASES[label.position], _BACKGROUND_WORDS[background]
        return dict(vars(label), position=position, background=ground)

    if len(labels) == 1:
        templates = _GREY_SINGLE if greyscale else _SINGLE
        if not greyscale and labels[0].colour in COMPLETE:
            templates += _SHAPE_ONLY
        return with_articles(templates[rng.integers(len(templates))].format(**words(labels[0])))
    phrase = "{size} {colour} {shape}" if rng.random() < 0.5 else "{colour} {shape}"
    templates = _DOUBLE
    if greyscale:
        phrase, templates = phrase.replace("{colour} ", ""), [*_DOUBLE, _GREY_DOUBLE]
    a, b = labels if rng.random() < 0.5 else labels[::-1]
    template = templates[rng.integers(len(templates))]
    a_words, b_words = phrase.format(**words(a)), phrase.format(**words(b))
    return with_articles(
        template.format(a=a_words, b=b_words, pa=_PHRASES[a.position], pb=_PHRASES[b.position])
    )


def _channel_mean(image: np.ndarray) -> np.ndarray:
    """image.mean(-1) of an (H, W, 3) uint8 image, to the bit; numpy's reduction over an axis of 3
    is the slowest step of drawing a sample."""
    red, green, blue = image.astype(np.float64).transpose(2, 0, 1)
    return (red + green + blue) / 3


def sample(split: str, index: int, seed: int = 0, objects: int | None = None) -> Sample:
    """The index-th sample of a split; the same (split, index, seed, objects) gives the same one.

    train and test hold only SEEN colour-shape combinations; in heldout the first object is one of
    HELD_OUT. objects (1 or 2) fixes the object count, else it is drawn (heldout: always 1). Only
    train holds greyscale photos.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if objects not in (None, 1, 2):
        raise ValueError(f"objects must be None, 1 or 2, got {objects!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index, objects or 0])
    count = objects or (1 if split == "heldout" else int(rng.integers(1, 3)))
    first = HELD_OUT if split == "heldout" else SEEN
    combos = [first[rng.integers(len(first))]]
    if count == 2:
        others = [c for c in SEEN if c != combos[0]]
        combos.append(others[rng.integers(len(others))])
        places = _PAIRS[rng.integers(len(_PAIRS))]
        places = places if rng.random() < 0.5 else places[::-1]
    else:
        places = (list(POSITIONS)[rng.integers(len(POSITIONS))],)
    labels = tuple(
        Label(shape, colour, list(SIZES)[rng.integers(len(SIZES))], place)
        for (colour, shape), place in zip(combos, places, strict=True)
    )
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    image = _background(background, rng)
    masks = np.stack([_mask(label, rng) for label in labels])
    image = np.clip(image, 0, 255).round().astype(np.uint8)
    ground = _channel_mean(image)
    for label, mask in zip(labels, masks, strict=True):
        colour = np.add(COLOURS[label.colour], rng.integers(-20, 21, 3)) * rng.uniform(0.75, 1.1)
        image[mask] = np.clip(colour, 0, 255).round()
    grey = _channel_mean(image)  # black and white only where every object still stands out
    visible = all(abs(grey[m].mean() - ground[m].mean()) >= 30 for m in masks)
    greyscale = split == "train" and bool(rng.random() < GREYSCALE) and visible
    if greyscale:
        image[:] = grey.round().astype(np.uint8)[..., None]
    caption = _caption(labels, background, greyscale, rng)
    return Sample(image, caption, labels, masks, background, greyscale)


def generate(
    split: str, n: int, seed: int = 0, objects: int | None = None, start: int = 0
) -> list[Sample]:
    """Samples start .. start + n - 1 of a split."""
    return [sample(split, i, seed, objects) for i in range(start, start + n)]
