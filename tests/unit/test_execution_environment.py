"""execution-environment.yml is a valid ansible-builder v3 definition whose pins are the project's own."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_builder.user_definition import UserDefinition
from bindep.depends import Depends

REPO = Path(__file__).resolve().parents[2]
EE_FILE = REPO / "execution-environment.yml"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line (comments, -r and -c lines left out)."""
    pins = {}
    for line in path.read_text().splitlines():
        requirement = re.sub(r"\[.*?\]", "", line.split("#", 1)[0].strip())
        if match := PIN.match(requirement):
            pins[_name(match[1])] = match[2]
    return pins


@pytest.fixture(scope="module")
def ee() -> dict[str, Any]:
    return yaml.safe_load(EE_FILE.read_text())


def test_ansible_builder_accepts_the_definition() -> None:
    definition = UserDefinition(str(EE_FILE))
    definition.validate()  # ansible-builder's JSON schema for version 3, plus its own image and option checks
    assert definition.version == 3
    assert definition.python_path == "/usr/bin/python3.11"


def test_a_broken_definition_is_refused(tmp_path: Path, ee: dict[str, Any]) -> None:
    from ansible_builder.exceptions import DefinitionError

    broken = {**ee, "dependencies": {**ee["dependencies"], "pyhton": ["typo==1.0"]}}
    path = tmp_path / "execution-environment.yml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(DefinitionError):
        UserDefinition(str(path)).validate()


def test_python_dependencies_are_the_project_pins(ee: dict[str, Any]) -> None:
    direct, every = _pins(REPO / "requirements.txt"), _pins(REPO / "constraints.txt")
    deps = ee["dependencies"]
    listed = [*deps["python"], deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"]]
    for requirement in listed:
        match = PIN.match(requirement)
        assert match, f"{requirement!r} is not pinned with =="
        name, version = _name(match[1]), match[2]
        assert name in every, f"{name}: in execution-environment.yml, in neither requirements.txt nor constraints.txt"
        assert version == every[name], f"{name}: the EE pins {version}, constraints.txt {every[name]}"
        if name in direct:
            assert version == direct[name], f"{name}: the EE pins {version}, requirements.txt {direct[name]}"
    # The toolchain AWX runs the playbooks with is the one pinned for the shell.
    for name in ("ansible", "ansible-core", "ansible-runner"):
        assert name in direct and any(_name(PIN.match(r)[1]) == name for r in listed if PIN.match(r)), name


def test_system_dependencies_are_a_valid_bindep_list(ee: dict[str, Any]) -> None:
    system = ee["dependencies"]["system"]
    depends = Depends("\n".join(system) + "\n")
    packages = {rule[0] for rule in depends._rules}
    assert {"espeak-ng", "git"} <= packages
    # Every entry names the platforms it applies to, so the list means the same on rpm and dpkg images.
    assert all("[" in line and "platform:" in line for line in system), system
