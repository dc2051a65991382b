"""Set-up: dependencies listed alike everywhere, CI calling the README's command."""

import re
import tomllib
from pathlib import Path

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
    assert re.search(r"^\s+- python=3\.11$", text, re.MULTILINE)


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
