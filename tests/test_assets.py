"""workbench.assets: what the notebooks read ships with the package, as copies that cannot drift."""

import json
from pathlib import Path

import pytest

from workbench import assets

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_FOLDERS = ("checkpoints", "open_clip", "hf")  # from tests/fixtures/; the rest: assets/


def source(name: str) -> Path:
    """The repository file a shipped asset is a copy of."""
    top = name.split("/")[0]
    return ROOT / ("tests/fixtures" if top in FIXTURE_FOLDERS else "assets") / name


def test_the_shipped_copies_are_byte_identical_to_their_sources():
    names = assets.names()
    assert {"CLIP.png", "LICENSE-openai-clip.txt", "checkpoints/io.npz"} <= set(names)
    for name in names:
        copy, original = assets.path(name), source(name)
        assert original.is_file(), f"workbench/assets/{name} has no source {original}"
        assert copy.read_bytes() == original.read_bytes(), (
            f"workbench/assets/{name} differs from {original.relative_to(ROOT)}: copy it again"
        )


def test_path_names_files_and_folders_and_says_what_ships():
    assert assets.path("CLIP.png").is_file()
    assert (assets.path("hf/gelu") / "config.json").is_file()
    with pytest.raises(FileNotFoundError, match=r"no 'nope\.png'; it ships: CLIP\.png, "):
        assets.path("nope.png")


def test_notebooks_read_no_file_by_a_relative_path():
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        assert "../" not in code and "fixtures" not in code, notebook.name
        assert 'CLIP_WORKBENCH = "' in "".join(cells[1]["source"]), f"{notebook.name}: set-up cell"
