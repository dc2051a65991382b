"""Set-up: dependencies listed alike everywhere, CI calling the README's command."""

import re
import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    return set(project["dependencies"]).union(*extras)


def test_environment_yml_lists_the_pyproject_dependencies():
    text = (ROOT / "environment.yml").read_text()
    pip_section = text.split("- pip:")[1]
    listed = set(re.findall(r"^\s+- (\S+)\s*$", pip_section, re.MULTILINE))
    assert listed == pyproject_requirements()


def test_python_311_and_312_are_supported_and_listed_alike():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = SpecifierSet(project["requires-python"])
    assert all(requires.contains(v) for v in ["3.11.0", "3.11.7", "3.12.0", "3.12.1"])
    assert not any(requires.contains(v) for v in ["3.10.13", "3.13.0"])
    listed = {
        c.rsplit(" :: ", 1)[1]
        for c in project["classifiers"]
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert listed == {"3.11", "3.12"}
    # conda's default interpreter is the one `make lab` uses (.venv), and pyproject admits it
    conda = re.findall(r"^\s+- python=(\S+)$", (ROOT / "environment.yml").read_text(), re.M)
    make = re.findall(r"^PYTHON \?= python(\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert conda == make == ["3.11"]
    assert requires.contains(conda[0])
    # and `make test` runs the suite on 3.12 as well
    assert re.search(r"^test-3\.12:", (ROOT / "Makefile").read_text(), re.M)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^make test\s+#", readme, re.MULTILINE)
    assert re.search(r"^make lab\s+#", readme, re.MULTILINE)
    commands = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line[:1].isalpha()]
    assert commands[-1] == "make test"


def test_the_bpe_vocabulary_ships_with_the_package():
    assert (ROOT / "clip" / "bpe_simple_vocab_16e6.txt.gz").stat().st_size > 1_000_000
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "*.txt.gz" in package_data["package-data"]["clip"]
