"""Zero-shot accuracy on unseen shapes images: shape, colour, and colour+shape on held-out combos.

python -m workbench.demo.evaluate --model clip/weights/demo.ckpt
"""

import argparse

import clip
from clip.model import CLIP
from clip.transform import Preprocess

from ..features import image_features
from ..zeroshot import ZeroShotClassifier
from . import shapes

TEMPLATE = "a photo of a {}."
COLOUR_TEMPLATE = "a photo of a {} shape."


def zero_shot(model: CLIP, classes: list[str], template: str) -> ZeroShotClassifier:
    """A fitted zero-shot classifier over classes (its labels) with one prompt per class: the
    template filled in, 'a' before a vowel turned into 'an'."""
    prompts = [shapes.with_articles(template.format(c)) for c in classes]
    return ZeroShotClassifier(model, prompts, templates=["{}"], labels=classes).fit()


def evaluate(model: CLIP, preprocess: Preprocess, n: int = 300, seed: int = 0) -> dict[str, float]:
    """Zero-shot accuracies on n single-object test images (seen combinations) and n heldout ones.

    shape and colour are measured on test, shape_heldout and colour_heldout on heldout; combo is
    colour+shape chosen among all combinations, on heldout (combo_heldout) and test (combo_seen).
    """
    samples = {split: shapes.generate(split, n, seed, objects=1) for split in ("test", "heldout")}
    features = {  # each split encoded once, for all three tasks
        split: image_features(
            model, preprocess, [s.image for s in ss], batch_size=100, progress=False
        )
        for split, ss in samples.items()
    }
    tasks = {  # classes, template, and the class an object belongs to
        "shape": (list(shapes.SHAPES), TEMPLATE, lambda o: o.shape),
        "colour": (list(shapes.COLOURS), COLOUR_TEMPLATE, lambda o: o.colour),
        "combo": (list(shapes.COMBOS), TEMPLATE, lambda o: f"{o.colour} {o.shape}"),
    }
    classifiers = {task: zero_shot(model, classes, template)
                   for task, (classes, template, _) in tasks.items()}  # fmt: skip

    def accuracy(task: str, split: str) -> float:
        name = tasks[task][2]
        return classifiers[task].score(features[split], [name(s.labels[0]) for s in samples[split]])

    return {
        "shape": accuracy("shape", "test"),
        "colour": accuracy("colour", "test"),
        "shape_heldout": accuracy("shape", "heldout"),
        "colour_heldout": accuracy("colour", "heldout"),
        "combo_seen": accuracy("combo", "test"),
        "combo_heldout": accuracy("combo", "heldout"),
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
