"""Zero-shot accuracy on unseen shapes images: shape, colour, and colour+shape on held-out combos.

python -m workbench.demo.evaluate --model clip/weights/demo.ckpt
"""

import argparse

import numpy as np

import clip
from clip.model import CLIP
from clip.transform import Preprocess

from ..features import image_features, l2_normalize
from . import shapes

TEMPLATE = "a photo of a {}."
COLOUR_TEMPLATE = "a photo of a {} shape."


def _unit(features: np.ndarray) -> np.ndarray:
    return l2_normalize(features.astype(np.float64))


def classify(image: np.ndarray, model: CLIP, classes: list[str], template: str) -> np.ndarray:
    """Index of the best-matching class prompt for each row of unit image features."""
    prompts = [shapes.with_articles(template.format(c)) for c in classes]
    return (image @ _unit(model.encode_text(clip.tokenize(prompts)).asnumpy()).T).argmax(-1)


def evaluate(model: CLIP, preprocess: Preprocess, n: int = 300, seed: int = 0) -> dict[str, float]:
    """Zero-shot accuracies on n single-object test images (seen combinations) and n heldout ones.

    shape and colour are measured on test, shape_heldout and colour_heldout on heldout; combo is
    colour+shape chosen among all combinations, on heldout (combo_heldout) and test (combo_seen).
    """
    samples = {split: shapes.generate(split, n, seed, objects=1) for split in ("test", "heldout")}
    image = {  # each split encoded once, for all three tasks
        split: _unit(image_features(model, preprocess, [s.image for s in ss], 100, progress=False))
        for split, ss in samples.items()
    }

    def accuracy(split, classes, template, name):
        predicted = classify(image[split], model, classes, template)
        truth = [classes.index(name(s.labels[0])) for s in samples[split]]
        return float(np.mean(predicted == truth))

    def shape(split):
        return accuracy(split, list(shapes.SHAPES), TEMPLATE, lambda o: o.shape)

    def colour(split):
        return accuracy(split, list(shapes.COLOURS), COLOUR_TEMPLATE, lambda o: o.colour)

    def combo(split):
        return accuracy(split, list(shapes.COMBOS), TEMPLATE, lambda o: f"{o.colour} {o.shape}")

    return {
        "shape": shape("test"),
        "colour": colour("test"),
        "shape_heldout": shape("heldout"),
        "colour_heldout": colour("heldout"),
        "combo_seen": combo("test"),
        "combo_heldout": combo("heldout"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="clip/weights/demo.ckpt", help="name or checkpoint path")
    parser.add_argument("-n", type=int, default=500, help="images per split")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, preprocess = clip.load(args.model)
    for name, value in evaluate(model, preprocess, args.n, args.seed).items():
        print(f"{name:14s} {value:.1%}")


if __name__ == "__main__":
    main()
