"""constraints.txt (the versions CI ran) is current with pyproject: one exact pin per package, each inside the range
pyproject gives it, for every dependency of the core and of every extra. That it pins everything pip installs, and
nothing else, is tests/test_install.py's (a real resolution from the configured index)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    """constraints.txt as {normalised name: version}; every line an exact pin, no name twice."""
    found = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==" and not requirement.extras and requirement.marker is None, line
        name = canonicalize_name(requirement.name)
        assert name not in found, f"{name} pinned twice"
        found[name] = Version(specifier.version)
    return found


def requirements() -> list[tuple[str, Requirement]]:
    """(where, requirement) for the core's dependencies and each extra's, sdflow's own extras left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = [("dependencies", r) for r in project["dependencies"]]
    listed += [(f"[{extra}]", r) for extra, rs in project["optional-dependencies"].items() for r in rs]
    return [(where, Requirement(r)) for where, r in listed if Requirement(r).name != "sdflow"]


def test_every_dependency_of_every_extra_is_pinned_inside_its_range():
    pinned = pins()
    problems = []
    for where, requirement in requirements():
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{where}: {requirement} is not pinned")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{where}: {requirement} does not allow the pinned {version}")
    assert not problems, "constraints.txt is not current with pyproject.toml:\n" + "\n".join(problems)


def test_the_pins_are_releases_and_torch_has_no_build_tag():
    # torch==X matches X+cpu and the CUDA build alike (install.sh picks the build); sdflow is what is installed.
    pinned = pins()
    assert "sdflow" not in pinned
    assert [name for name, version in pinned.items() if version.local is not None] == []
