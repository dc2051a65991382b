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

    shape and colour count both sets; combo_heldout is colour+shape on the held-out combinations,
    chosen among all 30 combinations; combo_seen the same on the test images.
    """
    test = shapes.generate("test", n, seed, objects=1)
    heldout = shapes.generate("heldout", n, seed, objects=1)
    both = test + heldout

    def accuracy(samples, classes, template, name):
        predicted = classify(model, preprocess, [s.image for s in samples], classes, template)
        truth = [classes.index(name(s.labels[0])) for s in samples]
        return float(np.mean(predicted == truth))

    def combo(label):
        return f"{label.colour} {label.shape}"

    colours = list(shapes.COLOURS)
    return {
        "shape": accuracy(both, list(shapes.SHAPES), TEMPLATE, lambda o: o.shape),
        "colour": accuracy(both, colours, "a photo of a {} shape.", lambda o: o.colour),
        "combo_heldout": accuracy(heldout, list(shapes.COMBOS), TEMPLATE, combo),
        "combo_seen": accuracy(test, list(shapes.COMBOS), TEMPLATE, combo),
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
