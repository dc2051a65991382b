"""The wheel holds the package data; the quickstart notebook runs from it, far from the checkout.

The wheel is built from a copy of the sources (so the checkout gets no build/ or egg-info) and
installed with --no-deps into a fresh virtual environment, which sees this interpreter's
site-packages (the dependencies) through a .pth file, but never the repository.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "clip", "workbench"]
NOTEBOOK = "00_quickstart.ipynb"


def run(*command: str | Path, cwd: Path, env: dict | None = None, timeout: float = 300) -> str:
    """Run a command; its output, or a failure that shows it."""
    done = subprocess.run(
        [str(c) for c in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{command}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def package_files(folder: str, pattern: str = "*") -> list[str]:
    """The checkout's files under a package folder, as names in the wheel."""
    found = (ROOT / folder).rglob(pattern)
    return sorted(
        p.relative_to(ROOT).as_posix()
        for p in found
        if p.is_file() and "__pycache__" not in p.parts
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the package, built by pip from a copy of its sources."""
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", dist, cwd=source)
    (built,) = dist.glob("clip_workbench-*.whl")
    return built


def test_the_wheel_holds_the_model_vocabulary_configs_assets_and_prompts(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = ["clip/weights/demo.ckpt", "clip/bpe_simple_vocab_16e6.txt.gz"]
    expected += package_files("clip/open_clip_configs", "*.json")
    expected += package_files("workbench/assets")
    expected += package_files("workbench/prompts", "*.json")
    assert len(package_files("clip/open_clip_configs", "*.json")) >= 17
    assert "workbench/assets/checkpoints/io.npz" in expected
    assert sorted(set(expected) - names) == []


def test_the_quickstart_runs_from_the_installed_wheel_in_an_empty_folder(
    wheel: Path, tmp_path: Path
):
    venv, folder = tmp_path / "venv", tmp_path / "empty"
    folder.mkdir()
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # Installed before the .pth exists, so pip sees no clip-workbench of the checkout.
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index"]
    run(*pip, "-q", wheel, cwd=tmp_path)
    site = Path(
        run(
            python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path
        ).strip()
    )
    dependencies = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    assert str(ROOT) not in dependencies
    (site / "dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(dependencies)))

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_NO_INDEX"] = "1"  # the set-up cell must not install: that would mean a broken wheel
    probe = "import clip, sys, workbench.assets; print(clip.__file__); print(*sys.path, sep='\\n')"
    clip_file, *path = run(python, "-c", probe, cwd=folder, env=env).splitlines()
    assert Path(clip_file).is_relative_to(venv), clip_file
    assert all(Path(p or folder).resolve() != ROOT for p in path), path

    notebook = json.loads((ROOT / "notebooks" / NOTEBOOK).read_text())
    check = (
        "import sys\nfrom pathlib import Path\n\nimport workbench.assets\n\n"
        "assert Path(clip.__file__).is_relative_to(sys.prefix), clip.__file__\n"
        "assert Path(workbench.assets.__file__).is_relative_to(sys.prefix)\n"
        f"assert Path.cwd() == Path({str(folder)!r})\n"
        f"assert all(Path(p or '.').resolve() != Path({str(ROOT)!r}) for p in sys.path)\n"
    )
    notebook["cells"].append(
        {"cell_type": "code", "execution_count": None, "id": "wheel-check", "metadata": {}}
        | {"outputs": [], "source": check}
    )
    (folder / NOTEBOOK).write_text(json.dumps(notebook))
    shutil.copy(ROOT / "notebooks" / "nbval_sanitize.cfg", folder)
    nbval = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval", NOTEBOOK]
    run(python, *nbval, "--nbval-sanitize-with", "nbval_sanitize.cfg", cwd=folder, env=env)
    assert sorted(p.name for p in folder.iterdir()) == sorted([NOTEBOOK, "nbval_sanitize.cfg"])
