"""Every module and lookup documents itself the way ansible-doc reads it: a DOCUMENTATION naming the plugin, with a
description and type for each option, EXAMPLES that are YAML tasks using it, and RETURN for modules. A text that
YAML cannot parse makes ansible-doc (and ansible-lint's argument checks) silently lose the plugin's documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.parsing.plugin_docs import read_docstring

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
MODULES = sorted((PLUGINS / "modules").glob("[!_]*.py"))
LOOKUPS = sorted((PLUGINS / "lookup").glob("[!_]*.py"))


def _docs(path: Path) -> dict:
    docs = read_docstring(str(path))
    assert docs["doc"], f"{path.name}: DOCUMENTATION is missing or does not parse as YAML"
    return docs


def _check_options(name: str, options: dict) -> None:
    for option, spec in options.items():
        assert spec.get("description"), f"{name}: option {option} has no description"
        assert spec.get("type") or spec.get("choices"), f"{name}: option {option} has no type"
        if spec.get("type") == "dict" and "suboptions" in spec:
            _check_options(f"{name}.{option}", spec["suboptions"])


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_module_documentation(path):
    docs = _docs(path)
    doc = docs["doc"]
    assert doc["module"] == path.stem
    assert doc.get("short_description")
    _check_options(path.stem, doc.get("options") or {})
    examples = yaml.safe_load(docs["plainexamples"])
    assert isinstance(examples, list) and examples, f"{path.stem}: EXAMPLES is not a list of tasks"
    used = [task for task in examples if any(key.split(".")[-1] == path.stem for key in task)]
    assert used, f"{path.stem}: no example task calls the module"
    returned = docs["returndocs"] or {}  # parsed by ansible itself
    assert isinstance(returned, dict), f"{path.stem}: RETURN is not a mapping"
    for key, spec in returned.items():
        assert spec.get("description"), f"{path.stem}: return value {key} has no description"


@pytest.mark.parametrize("path", LOOKUPS, ids=lambda path: path.stem)
def test_lookup_documentation(path):
    docs = _docs(path)
    assert docs["doc"]["name"] == path.stem
    assert docs["doc"].get("short_description")
    _check_options(path.stem, docs["doc"].get("options") or {})
    assert f"lookup('{path.stem}'" in docs["plainexamples"] or f'lookup("{path.stem}"' in docs["plainexamples"]


def test_every_plugin_is_covered():
    assert len(MODULES) >= 10 and LOOKUPS
