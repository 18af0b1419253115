"""constraints.txt pins every package that requirements.txt and requirements-dev.txt name, inside their ranges,
and requirements.txt applies it (README: Dependencies)."""
import re
from pathlib import Path

from packaging.requirements import Requirement

PROJECT = Path(__file__).resolve().parent.parent


def requirement_lines(name):
    lines = (line.split("#")[0].strip() for line in (PROJECT / name).read_text().splitlines())
    return [line for line in lines if line]


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions():
    pins = {}
    for line in requirement_lines("constraints.txt"):
        name, _, version = line.partition("==")
        assert version, f"constraints.txt: {line!r} is not name==version"
        pins[canonical(name)] = version
    return pins


def test_requirements_txt_applies_the_constraints():
    assert requirement_lines("requirements.txt")[0] == "-c constraints.txt"
    assert requirement_lines("requirements-dev.txt")[0] == "-r requirements.txt"


def test_every_requirement_is_pinned_inside_its_range():
    pins = pinned_versions()
    for file in ("requirements.txt", "requirements-dev.txt"):
        for line in requirement_lines(file):
            if line.startswith("-"):
                continue
            requirement = Requirement(line)
            name = canonical(requirement.name)
            assert name in pins, f"{file}: {requirement.name} is not pinned in constraints.txt"
            assert requirement.specifier.contains(pins[name]), \
                f"constraints.txt pins {requirement.name}=={pins[name]}, outside {file}'s {requirement.specifier}"
