"""Zero-shot accuracy on unseen shapes images: shape, colour, and colour+shape on held-out combos.

python -m workbench.demo.evaluate --model clip/weights/demo.ckpt
"""

import argparse

import numpy as np
from mindspore import Tensor

import clip
from clip.model import CLIP
from clip.transform import Preprocess

from . import shapes

TEMPLATE = "a photo of a {}."
COLOUR_TEMPLATE = "a photo of a {} shape."


def _normalised(features: Tensor) -> np.ndarray:
    features = features.asnumpy().astype(np.float64)
    return features / np.linalg.norm(features, axis=-1, keepdims=True)


def classify(
    model: CLIP, preprocess: Preprocess, images: list[np.ndarray], classes: list[str], template: str
) -> np.ndarray:
    """Index of the best-matching class prompt for each HWC uint8 image."""
    prompts = [shapes.with_articles(template.format(c)) for c in classes]
    text = _normalised(model.encode_text(clip.tokenize(prompts)))
    batches = (
        np.stack([preprocess(i) for i in images[k : k + 100]]) for k in range(0, len(images), 100)
    )
    image = np.concatenate([_normalised(model.encode_image(Tensor(b))) for b in batches])
    return (image @ text.T).argmax(-1)


def evaluate(model: CLIP, preprocess: Preprocess, n: int = 300, seed: int = 0) -> dict[str, float]:
    """Zero-shot accuracies on n single-object test images (seen combinations) and n heldout ones.

    shape and colour are measured on test, shape_heldout and colour_heldout on heldout; combo is
    colour+shape chosen among all combinations, on heldout (combo_heldout) and test (combo_seen).
    """
    test = shapes.generate("test", n, seed, objects=1)
    heldout = shapes.generate("heldout", n, seed, objects=1)

    def accuracy(samples, classes, template, name):
        predicted = classify(model, preprocess, [s.image for s in samples], classes, template)
        truth = [classes.index(name(s.labels[0])) for s in samples]
        return float(np.mean(predicted == truth))

    def shape(samples):
        return accuracy(samples, list(shapes.SHAPES), TEMPLATE, lambda o: o.shape)

    def colour(samples):
        return accuracy(samples, list(shapes.COLOURS), COLOUR_TEMPLATE, lambda o: o.colour)

    def combo(samples):
        return accuracy(samples, list(shapes.COMBOS), TEMPLATE, lambda o: f"{o.colour} {o.shape}")

    return {
        "shape": shape(test),
        "colour": colour(test),
        "shape_heldout": shape(heldout),
        "colour_heldout": colour(heldout),
        "combo_seen": combo(test),
        "combo_heldout": combo(heldout),
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
