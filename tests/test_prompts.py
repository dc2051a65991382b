"""workbench.prompts: the class-name and template libraries shipped as package data."""

import pytest

from workbench import prompts

# (classes, templates) of the 26 data sets of OpenAI's data/prompts.md, and ImageNet's notebook
COUNTS = {
    "Birdsnap": (500, 1), "CIFAR10": (10, 18), "CIFAR100": (100, 18), "CLEVRCounts": (8, 1),
    "Caltech101": (102, 34), "Country211": (211, 5), "DescribableTextures": (47, 8),
    "EuroSAT": (10, 3), "FGVCAircraft": (100, 2), "FacialEmotionRecognition2013": (7, 6),
    "Flowers102": (102, 1), "Food101": (101, 1), "GTSRB": (43, 3), "HatefulMemes": (2, 1),
    "KITTI": (4, 1), "Kinetics700": (700, 28), "MNIST": (10, 1), "OxfordPets": (37, 1),
    "PascalVOC2007": (20, 1), "PatchCamelyon": (2, 1), "RESISC45": (45, 18), "SST2": (2, 1),
    "STL10": (10, 2), "SUN397": (397, 2), "StanfordCars": (196, 8), "UCF101": (101, 48),
    "ImageNet": (1000, 80),
}  # fmt: skip


def test_every_data_set_has_its_classes_and_templates():
    assert prompts.datasets() == list(COUNTS)
    for name, (n_classes, n_templates) in COUNTS.items():
        classes, templates = prompts.classes(name), prompts.templates(name)
        assert (len(classes), len(templates)) == (n_classes, n_templates), name
        assert all(t.count("{}") == 1 for t in templates), name
        repeated = 2 if name == "ImageNet" else 0  # OpenAI repeats 'missile' and 'sunglasses'
        assert len({str(c) for c in classes}) == n_classes - repeated, name


def test_contents_match_openai():
    assert prompts.classes("CIFAR10") == ["airplane", "automobile", "bird", "cat", "deer", "dog",
                                          "frog", "horse", "ship", "truck"]  # fmt: skip
    assert prompts.templates("CIFAR10")[:2] == ["a photo of a {}.", "a blurry photo of a {}."]
    assert prompts.classes("CIFAR100")[:3] == ["apple", "aquarium fish", "baby"]
    assert prompts.classes("FacialEmotionRecognition2013")[3] == ["happy", "smiling"]
    assert prompts.templates("KITTI") == ["{}"]
    assert prompts.classes("ImageNet")[:3] == ["tench", "goldfish", "great white shark"]
    # OpenAI's 7-template subset, found by forward selection, is drawn from the 80
    subset = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.",
              "a photo of the large {}.", "a {} in a video game.", "art of the {}.",
              "a photo of the small {}."]  # fmt: skip
    assert set(subset) <= set(prompts.templates("ImageNet"))


def test_names_are_case_insensitive_and_results_are_copies():
    assert prompts.classes("cifar10") == prompts.classes("CIFAR10")
    prompts.templates("MNIST").append("x {}")
    prompts.classes("FacialEmotionRecognition2013")[3].append("x")
    assert prompts.templates("MNIST") == ['a photo of the number: "{}".']
    assert prompts.classes("FacialEmotionRecognition2013")[3] == ["happy", "smiling"]


def test_unknown_data_set_names_the_available_ones():
    with pytest.raises(KeyError, match="no prompts for data set 'CIFAR-10'.*CIFAR10"):
        prompts.templates("CIFAR-10")
