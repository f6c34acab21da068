"""The AWX templates (awx/objects.yml) and the playbooks they launch cannot drift apart (scripts/awx_drift.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from awx_drift import Finding, check, load_yaml, main, playbook_inputs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def objects() -> dict[str, Any]:
    # A JSON round trip unshares the questions the file shares through YAML anchors: a test edits one template.
    return json.loads(json.dumps(load_yaml(REPO / "awx" / "objects.yml")))


def _template(objects: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in objects["awx_job_templates"] if t["name"] == name)


def _question(survey: list[dict[str, Any]], variable: str) -> dict[str, Any]:
    return next(q for q in survey if q["variable"] == variable)


def _errors(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


def test_the_repository_has_no_drift() -> None:
    findings = check(REPO)
    assert _errors(findings) == [], "\n".join(map(str, findings))
    skipped = {f.template: f.message for f in findings if f.severity == "skipped"}
    assert set(skipped) == {"xlerobot-staging", "xlerobot-production"}
    assert "inventories/staging/ is not in the repository yet" in skipped["xlerobot-staging"]


def test_every_template_of_the_issue_exists_with_its_survey(objects: dict[str, Any]) -> None:
    names = {t["name"] for t in objects["awx_job_templates"]}
    assert names == {"xlerobot-deploy", "xlerobot-rollback", "xlerobot-provision", "xlerobot-validate",
                     "xlerobot-rotate-secrets", "xlerobot-abort"}
    deploy = {q["variable"] for q in _template(objects, "xlerobot-deploy")["survey"]}
    assert deploy == {"xlerobot_environment", "strategy", "version", "services", "rollback", "abort_scope"}
    assert {q["variable"] for q in _template(objects, "xlerobot-abort")["survey"]} == {"xlerobot_environment", "reason"}
    workflow = objects["awx_workflow_templates"][0]
    edges = {(n["identifier"], edge, target) for n in workflow["nodes"]
             for edge in ("success", "failure") for target in n.get(edge, [])}
    assert edges == {("validate", "success", "deploy"), ("deploy", "failure", "rollback")}


def test_a_survey_variable_the_playbook_does_not_know_is_named(objects: dict[str, Any]) -> None:
    _template(objects, "xlerobot-deploy")["survey"].append(
        {"question_name": "Colour", "variable": "colour", "type": "multiplechoice", "required": True,
         "choices": ["blue", "green"]})
    errors = _errors(check(REPO, objects))
    assert [(e.template, e.variable) for e in errors] == [("xlerobot-deploy", "colour")]
    assert "playbooks/deploy.yml" in errors[0].message and "'colour'" in errors[0].message
    assert str(errors[0]).startswith("error: xlerobot-deploy / colour:")


def test_a_variable_only_another_playbook_reads_is_refused(objects: dict[str, Any]) -> None:
    # rollback.yml reads to_version; validate.yml does not.
    _template(objects, "xlerobot-validate")["survey"].append(
        {"question_name": "To", "variable": "to_version", "type": "text", "required": False})
    assert [(e.template, e.variable) for e in _errors(check(REPO, objects))] == [("xlerobot-validate", "to_version")]


def test_a_strategy_the_playbooks_do_not_have_is_refused(objects: dict[str, Any]) -> None:
    _question(_template(objects, "xlerobot-deploy")["survey"], "strategy")["choices"] = ["bluegreen", "canary",
                                                                                          "shadow"]
    errors = _errors(check(REPO, objects))
    deploy = [e for e in errors if e.template == "xlerobot-deploy"]
    assert deploy and all(e.variable == "strategy" for e in deploy)
    sources = " ".join(e.message for e in deploy)
    # The strategies live in one place, the release engine's own list; deploy.yml no longer restates them.
    assert "plugins/module_utils/xl_release.py STRATEGIES" in sources and "deploy.yml: assert" not in sources
    assert "missing ['rolling']" in sources and "unknown ['shadow']" in sources


def test_a_missing_strategy_is_refused_too(objects: dict[str, Any]) -> None:
    _question(_template(objects, "xlerobot-deploy")["survey"], "strategy")["choices"] = ["bluegreen", "canary"]
    assert {(e.template, e.variable) for e in _errors(check(REPO, objects))} == {("xlerobot-deploy", "strategy")}


def test_environment_choices_follow_the_schema_enum(objects: dict[str, Any]) -> None:
    question = _question(_template(objects, "xlerobot-validate")["survey"], "xlerobot_environment")
    question["choices"] = [*question["choices"], "qa"]
    errors = _errors(check(REPO, objects))
    assert [(e.template, e.variable) for e in errors] == [("xlerobot-validate", "xlerobot_environment")]
    assert "config/schema.json environment enum" in errors[0].message and "unknown ['qa']" in errors[0].message


def test_service_choices_follow_the_catalogue(objects: dict[str, Any]) -> None:
    _question(_template(objects, "xlerobot-rollback")["survey"], "services")["choices"] = ["asr", "tts"]
    errors = _errors(check(REPO, objects))
    assert [(e.template, e.variable) for e in errors] == [("xlerobot-rollback", "services")]
    assert "missing ['llm', 'multimodal']" in errors[0].message


def test_a_boolean_offers_true_and_false(objects: dict[str, Any]) -> None:
    _question(_template(objects, "xlerobot-deploy")["survey"], "rollback")["choices"] = ["yes", "no"]
    errors = _errors(check(REPO, objects))
    assert {(e.template, e.variable) for e in errors} == {("xlerobot-deploy", "rollback")}
    assert any("read as '| bool'" in e.message for e in errors)
    assert any("option release_freeze (bool)" in e.message for e in errors)


def test_a_malformed_or_repeated_question_is_refused(objects: dict[str, Any]) -> None:
    survey = _template(objects, "xlerobot-deploy")["survey"]
    survey.append({"question_name": "Version again", "variable": "version", "type": "string", "required": False})
    errors = [(e.variable, e.message) for e in _errors(check(REPO, objects))]
    assert ("version", "asked more than once in the survey") in errors
    assert any(v == "version" and "type 'string'" in m for v, m in errors)


def test_a_default_outside_the_choices_is_refused(objects: dict[str, Any]) -> None:
    _question(_template(objects, "xlerobot-deploy")["survey"], "strategy")["default"] = "shadow"
    errors = _errors(check(REPO, objects))
    assert [(e.template, e.variable, e.message) for e in errors] == [
        ("xlerobot-deploy", "strategy", "default ['shadow'] is not among the choices")]


def test_choices_nobody_states_cannot_pass_unchecked(objects: dict[str, Any]) -> None:
    _template(objects, "xlerobot-deploy")["survey"].append(
        {"question_name": "Prefix", "variable": "xlerobot_prefix", "type": "multiplechoice", "required": True,
         "choices": ["xl"]})
    errors = _errors(check(REPO, objects))
    assert [(e.template, e.variable) for e in errors] == [("xlerobot-deploy", "xlerobot_prefix")]
    assert "cannot be checked" in errors[0].message


def test_a_missing_playbook_is_an_error_unless_pending(objects: dict[str, Any]) -> None:
    provision = _template(objects, "xlerobot-provision")
    provision["playbook"] = "playbooks/provision_gpus.yml"
    errors = _errors(check(REPO, objects))
    assert [(e.template, e.message) for e in errors] == [
        ("xlerobot-provision", "playbook playbooks/provision_gpus.yml does not exist (mark the template "
         "`pending: true` with a reason if it is planned)")]
    provision.update(pending=True, pending_reason="GPU hosts come next quarter")
    assert _errors(check(REPO, objects)) == []


def test_a_missing_inventory_source_is_an_error_unless_pending(objects: dict[str, Any]) -> None:
    staging = next(i for i in objects["awx_inventories"] if i["name"] == "xlerobot-staging")
    del staging["pending"]
    errors = _errors(check(REPO, objects))
    assert [e.template for e in errors] == ["xlerobot-staging"]
    assert "inventories/staging/hosts.yml does not exist" in errors[0].message


def test_workflow_nodes_and_extra_data_are_checked(objects: dict[str, Any]) -> None:
    workflow = objects["awx_workflow_templates"][0]
    nodes = {n["identifier"]: n for n in workflow["nodes"]}
    nodes["rollback"]["extra_data"] = {"restore_everything": True}
    nodes["deploy"]["failure"] = ["rollback", "page-someone"]
    workflow["survey"] = [*workflow["survey"], {"question_name": "Colour", "variable": "colour", "type": "text",
                                                  "required": False}]
    errors = {(e.variable, e.message.split(":")[0]) for e in _errors(check(REPO, objects))}
    assert (None, "node deploy") in errors
    assert ("restore_everything", "node rollback passes 'restore_everything', which playbooks/rollback.yml does "
            "not accept") in errors
    assert any(variable == "colour" for variable, _ in errors)


def test_a_workflow_cannot_run_a_pending_template(objects: dict[str, Any]) -> None:
    _template(objects, "xlerobot-provision").update(pending=True, pending_reason="not yet")
    objects["awx_workflow_templates"][0]["nodes"].append({"identifier": "provision",
                                                          "job_template": "xlerobot-provision"})
    errors = _errors(check(REPO, objects))
    assert [e.message for e in errors] == [
        "node provision: job template 'xlerobot-provision' is pending or broken; the workflow cannot run it"]


def _write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(textwrap.dedent(text))


def test_inputs_come_from_imports_asserts_role_specs_and_reads(tmp_path: Path) -> None:
    _write(tmp_path, "roles/engine/meta/argument_specs.yml", """\
        argument_specs:
          main:
            options:
              engine_mode: {type: str, choices: [fast, safe]}
              engine_fresh: {type: bool}
              engine_label: {type: str}
        """)
    _write(tmp_path, "roles/engine/tasks/main.yml", """\
        - name: Result
          ansible.builtin.set_fact:
            engine_result: done
        """)
    _write(tmp_path, "playbooks/inner.yml", """\
        - name: Inner
          hosts: all
          tasks:
            - name: Run
              ansible.builtin.include_role:
                name: engine
              vars:
                engine_mode: "{{ mode | default('fast') }}"
                engine_fresh: "{{ not (keep | default(true) | bool) }}"
            - name: Look
              ansible.builtin.debug:
                msg: "{{ engine_result }} {{ label | default('') }}"
        """)
    _write(tmp_path, "playbooks/outer.yml", """\
        - name: Check
          hosts: localhost
          tasks:
            - name: Known
              ansible.builtin.assert:
                that: level | default(1) in levels
              vars:
                levels: [1, 2, 3]
        - name: Inner
          ansible.builtin.import_playbook: inner.yml
          when: go | bool
        """)
    inputs = playbook_inputs(tmp_path, "playbooks/outer.yml")
    # engine_mode and engine_fresh are bound by the playbook; engine_result is the role's own fact.
    assert inputs.accepted == {"level", "go", "mode", "keep", "label", "engine_label"}
    assert inputs.domains["level"][0][1] == ["1", "2", "3"]
    assert inputs.domains["mode"] == [("roles/engine option engine_mode choices", ["fast", "safe"])]
    assert ("roles/engine option engine_fresh (bool)", ["true", "false"]) in inputs.domains["keep"]
    assert inputs.domains["go"] == [("playbooks/outer.yml: read as '| bool'", ["true", "false"])]


def test_the_command_line_exits_nonzero_on_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--repo", str(REPO)]) == 0
    out = capsys.readouterr().out
    assert "0 error(s), 2 skipped" in out


def test_configure_playbook_parses() -> None:
    ansible_playbook = Path(sys.executable).parent / "ansible-playbook"
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg")}
    done = subprocess.run([str(ansible_playbook), "--syntax-check", "awx/configure.yml"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
