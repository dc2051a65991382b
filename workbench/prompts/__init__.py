"""Class names and prompt templates of the paper's zero-shot data sets, shipped as package data.

`datasets.json` holds the 26 data sets of OpenAI's data/prompts.md, `imagenet_prompts.json` the
1000 ImageNet classes and 80 templates of OpenAI's prompt-engineering notebook (both MIT).
"""

import json
from functools import cache
from pathlib import Path

_HERE = Path(__file__).resolve().parent


@cache
def _library() -> dict[str, dict]:
    library = json.loads((_HERE / "datasets.json").read_text(encoding="utf-8"))["datasets"]
    imagenet = json.loads((_HERE / "imagenet_prompts.json").read_text(encoding="utf-8"))
    return {**library, "ImageNet": {k: imagenet[k] for k in ("classes", "templates")}}


def _entry(name: str) -> dict:
    library = _library()
    found = {key.lower(): key for key in library}.get(str(name).lower())
    if found is None:
        raise KeyError(f"no prompts for data set {name!r}; available: {', '.join(library)}")
    return library[found]


def datasets() -> list[str]:
    """Names of the data sets with class names and templates (26 of the paper, and ImageNet)."""
    return list(_library())


def classes(name: str) -> list[str | list[str]]:
    """Class names of a data set (case-insensitive name); a class may be a list of synonyms."""
    return [c if isinstance(c, str) else list(c) for c in _entry(name)["classes"]]


def templates(name: str) -> list[str]:
    """Prompt templates of a data set, each with one '{}' for the class name."""
    return list(_entry(name)["templates"])
