"""The GitHub workflow mirrors `.ci/run`: the same make targets, the same molecule scenarios, the strategies the
deploy playbook accepts; a job that calls a target the Makefile lacks cannot land."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import xl_release
import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def _workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def _makefile_targets() -> dict[str, list[str]]:
    """Each target of the Makefile with its prerequisites."""
    targets = {}
    for match in re.finditer(r"^([a-z][a-z0-9_-]*):(?!=)([^\n]*)$", (REPO / "Makefile").read_text(), re.MULTILINE):
        targets[match.group(1)] = match.group(2).split()
    return targets


def _make_calls(job: dict[str, Any]) -> list[str]:
    calls = []
    for step in job.get("steps", []):
        for target in re.findall(r"\bmake ((?:[a-z][a-z0-9_-]*\s?)+)", step.get("run", "")):
            calls += [word for word in target.split() if "=" not in word]
    return calls


def test_every_make_call_of_the_workflow_is_a_target() -> None:
    targets = _makefile_targets()
    for name, job in _workflow()["jobs"].items():
        for target in _make_calls(job):
            assert target in targets, f"job {name} calls make {target}, which the Makefile does not have"


def test_the_workflow_runs_everything_the_ci_entry_point_runs() -> None:
    assert (REPO / ".ci" / "run").read_text().strip().endswith("make test")
    readme = (REPO / "README.md").read_text()
    assert re.search(r"^make test\b", readme, re.MULTILINE), "the README's second command is make test"
    in_workflow = {target for job in _workflow()["jobs"].values() for target in _make_calls(job)}
    missing = set(_makefile_targets()["test"]) - {"bootstrap"} - in_workflow
    assert not missing, f"make test runs {sorted(missing)}, which no workflow job runs"


def test_the_molecule_matrix_is_every_scenario() -> None:
    matrix = _workflow()["jobs"]["molecule"]["strategy"]["matrix"]["scenario"]
    scenarios = re.search(r"^MOLECULE_SCENARIOS := (.*)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert scenarios is not None
    on_disk = sorted(p.parent.name for p in (REPO / "molecule").glob("*/molecule.yml"))
    assert sorted(matrix) == sorted(scenarios.group(1).split()) == on_disk


def test_the_deploy_input_offers_the_strategies_the_engine_accepts() -> None:
    accepted = list(xl_release.STRATEGIES)
    offered = _workflow()["on"]["workflow_dispatch"]["inputs"]["strategy"]["options"]
    assert sorted(offered) == sorted(accepted)


def test_the_images_job_keeps_an_sbom_of_each_image() -> None:
    job = _workflow()["jobs"]["images"]
    assert "sbom" in _make_calls(job)
    uploads = [step["with"]["path"] for step in job["steps"] if "upload-artifact" in step.get("uses", "")]
    assert uploads == ["reports/sbom/"]
    sbom_recipe = (REPO / "Makefile").read_text().split("\nsbom:")[1].split("\n\n")[0]
    assert "scripts/sbom.py" in sbom_recipe
