"""Files the notebooks read, shipped with the package so that a notebook runs from any folder.

- `CLIP.png`: the example image of OpenAI's README (MIT, `LICENSE-openai-clip.txt`).
- `checkpoints/`: one tiny random CLIP saved by PyTorch in each format, and `io.npz`, OpenAI's
  outputs for it; `open_clip/<name>/`, `hf/<name>/`: tiny model folders written by open_clip's
  and transformers' code, with their outputs (`io.npz`).

These are byte-identical copies of `assets/` and `tests/fixtures/` in the repository
(`tests/test_assets.py` checks it).
"""

from importlib.resources import files
from pathlib import Path

__all__ = ["names", "path"]


def names() -> list[str]:
    """Every shipped file, as a name relative to this package (`checkpoints/io.npz`, ...)."""
    root = Path(str(files(__name__)))
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.suffix not in {".py", ".pyc"}
    )


def path(name: str) -> Path:
    """The path of a shipped file or folder, e.g. `path("CLIP.png")`, `path("hf/gelu")`."""
    found = Path(str(files(__name__) / name))
    if not name or not found.exists():
        raise FileNotFoundError(f"workbench.assets has no {name!r}; it ships: {', '.join(names())}")
    return found
