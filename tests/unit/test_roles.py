"""Every role documents its defaults and declares the same keys in meta/argument_specs.yml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_agree(role: Path) -> None:
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    specs = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    options = specs["main"].get("options", {})
    assert set(defaults) == set(options), (
        f"{role.name}: only in defaults {sorted(set(defaults) - set(options))}, "
        f"only in argument_specs {sorted(set(options) - set(defaults))}")
    for name, option in options.items():
        assert option.get("description"), f"{role.name}: option {name} has no description"
        if "default" in option and not option.get("required"):
            templated = isinstance(defaults[name], str) and "{{" in defaults[name]
            assert option["default"] == defaults[name] or templated, (
                f"{role.name}: {name} defaults to {defaults[name]!r} but argument_specs says {option['default']!r}")


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_every_default_has_a_comment(role: Path) -> None:
    lines = (role / "defaults" / "main.yml").read_text().splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"^([a-z_]+):", line)
        if match:
            above = lines[index - 1] if index else ""
            assert above.startswith("#"), f"{role.name}: default {match.group(1)} has no comment above it"


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_variables_carry_the_role_prefix(role: Path) -> None:
    defaults = yaml.safe_load((role / "defaults" / "main.yml").read_text()) or {}
    prefix = role.name + "_"
    assert all(name.startswith(prefix) for name in defaults), sorted(n for n in defaults if not n.startswith(prefix))
