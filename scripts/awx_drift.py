#!/usr/bin/env python3
"""Check that the AWX templates of ``awx/objects.yml`` and the playbooks they launch agree.

For every job template (and every workflow, through its nodes):

- its playbook exists (a template marked ``pending: true`` is skipped, naming its ``pending_reason``);
- every survey variable is one the playbook accepts: a variable its plays read in a template or condition
  (following ``import_playbook``), or an option of a role it applies, as declared in that role's
  ``meta/argument_specs.yml`` (options the playbook binds itself in ``include_role``'s ``vars`` are not
  inputs);
- every choice list equals each set of values the playbooks and roles accept for that variable: a literal
  list of an ``assert`` (``var | default(...) in [...]``), the ``choices`` of a role option the variable feeds,
  ``true``/``false`` for a variable read through ``| bool``, and the configuration's own domains
  (environments: config/schema.json's enum, which the xlerobot role enforces; services: the catalogue of
  config/base/services.yml, which the release role enforces; strategies: xl_release.STRATEGIES). A choice
  question whose variable has no known domain is an error too: its choices would go unchecked.

Inventories' source paths must exist unless pending. ``python scripts/awx_drift.py`` prints the findings
and exits 1 when any is an error.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, nodes
from jinja2.exceptions import TemplateSyntaxError

REPO = Path(__file__).resolve().parents[1]
CONDITION_KEYS = frozenset({"when", "that", "failed_when", "changed_when", "until"})
INCLUDE_ROLE = frozenset({"include_role", "import_role", "ansible.builtin.include_role",
                          "ansible.builtin.import_role"})
IMPORT_PLAYBOOK = frozenset({"import_playbook", "ansible.builtin.import_playbook"})
ASSERT = frozenset({"assert", "ansible.builtin.assert"})
SET_FACT = frozenset({"set_fact", "ansible.builtin.set_fact"})
# Names Ansible provides itself: a survey that sets one is never asking the playbook for an input.
MAGIC = frozenset({"groups", "hostvars", "inventory_hostname", "inventory_hostname_short", "inventory_dir",
                   "playbook_dir", "role_path", "item", "omit", "ansible_check_mode", "ansible_play_hosts",
                   "ansible_playbook_python", "play_hosts", "lookup", "query", "q", "now", "range", "dict",
                   "undef", "namespace", "loop", "true", "false", "none", "True", "False", "None"})
BOOL_CHOICES = ("true", "false")
# AWX's survey spec: the question types it knows and the keys every question needs.
QUESTION_TYPES = frozenset({"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"})
QUESTION_KEYS = ("question_name", "variable", "type", "required")


@dataclass(frozen=True)
class Finding:
    """One result of the check: an ``error`` or a ``skipped`` object, named by template and variable."""

    template: str
    variable: str | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.template + (f" / {self.variable}" if self.variable else "")
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class PlaybookInputs:
    """What a playbook reads: free template variables, role options, and the values it accepts per variable."""

    read: set[str] = field(default_factory=set)
    role_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    defined: set[str] = field(default_factory=set)
    # variable -> [(where the set comes from, the accepted values)]
    domains: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)

    @property
    def accepted(self) -> set[str]:
        return ((self.read - self.defined) | set(self.role_options)) - MAGIC

    def add_domain(self, variable: str, source: str, values: list[str]) -> None:
        entry = (source, [str(v) for v in values])
        if entry not in self.domains.setdefault(variable, []):
            self.domains[variable].append(entry)


class _UnsafeLoader(yaml.SafeLoader):
    """Reads Ansible's ``!unsafe`` strings (the controller's own templates) as plain strings."""


_UnsafeLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


def load_yaml(path: Path) -> Any:
    # A SafeLoader with one extra tag (see _UnsafeLoader), despite what its yaml.load call looks like.
    return yaml.load(path.read_text(), Loader=_UnsafeLoader)  # noqa: S506 # nosec B506


def _parse(source: str, where: str) -> nodes.Template:
    try:
        # Parsed only, never rendered: autoescape has nothing to escape.
        return Environment(autoescape=False).parse(source)  # noqa: S701  # nosec B701
    except TemplateSyntaxError as exc:
        raise ValueError(f"{where}: cannot parse {source!r}: {exc}") from exc


def _free_names(tree: nodes.Template) -> set[str]:
    """Names a template reads without assigning them first (jinja2.meta's rule, minus its env lookups)."""
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    return {n.name for n in tree.find_all(nodes.Name) if n.ctx == "load"} - assigned


def _subject(node: nodes.Node | None) -> str | None:
    """``var``, ``var | default(x)``, ``var | string`` ... -> ``var``."""
    while isinstance(node, nodes.Filter) and node.name in ("default", "d", "string", "lower", "trim"):
        node = node.node
    return node.name if isinstance(node, nodes.Name) else None


def _bool_reads(tree: nodes.Template) -> set[str]:
    found = set()
    for node in tree.find_all(nodes.Filter):
        if node.name == "bool" and node.node is not None and (name := _subject(node.node)):
            found.add(name)
    return found


def _membership(tree: nodes.Template, task_vars: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """``var | default(..) in [a, b]`` or ``in list_var`` (a list defined in the task's vars)."""
    for compare in tree.find_all(nodes.Compare):
        name = _subject(compare.expr)
        for operand in compare.ops:
            if operand.op != "in" or name is None:
                continue
            target = operand.expr
            if isinstance(target, nodes.List | nodes.Tuple) and all(isinstance(i, nodes.Const) for i in target.items):
                yield name, [i.value for i in target.items]  # type: ignore[attr-defined]
            elif isinstance(target, nodes.Name) and isinstance(task_vars.get(target.name), list):
                yield name, task_vars[target.name]


class _PlaybookReader:
    def __init__(self, repo: Path) -> None:
        self.repo = repo
        # Files are read once per check: deploy.yml imports release.yml three times, every template a role.
        self._files: dict[Path, Any] = {}
        self._play_bound: dict[str, Any] = {}

    def _load(self, path: Path) -> Any:
        if path not in self._files:
            self._files[path] = load_yaml(path)
        return copy.deepcopy(self._files[path])

    def read(self, playbook: Path, inputs: PlaybookInputs | None = None) -> PlaybookInputs:
        inputs = inputs if inputs is not None else PlaybookInputs()
        rel = playbook.relative_to(self.repo)
        for play in self._load(playbook) or []:
            imported = next((play[k] for k in IMPORT_PLAYBOOK if k in play), None)
            if imported is not None:
                inputs.defined |= set(play.get("vars") or {})
                self._strings(play, inputs, f"{rel}", {})
                self.read((playbook.parent / imported).resolve(), inputs)
                continue
            inputs.defined |= set(play.get("vars") or {})
            # Variables a play binds from its vars_files feed the roles the same way include_role's vars do.
            self._play_bound = {}
            for vars_file in play.get("vars_files") or []:
                bound = self._load((playbook.parent / vars_file).resolve()) or {}
                inputs.defined |= set(bound)
                self._strings(bound, inputs, f"{rel}: {vars_file}", {})
                self._play_bound.update(bound)
            for role in play.get("roles") or []:
                self._role(role if isinstance(role, str) else role["role"], "main", self._play_bound, inputs)
            for section in ("pre_tasks", "tasks", "post_tasks", "handlers"):
                for task in play.get(section) or []:
                    self._task(task, inputs, f"{rel}")
            self._play_bound = {}
            self._strings({k: v for k, v in play.items() if k not in ("tasks", "pre_tasks", "post_tasks",
                                                                        "handlers", "roles")}, inputs, f"{rel}", {})
        return inputs

    def _task(self, task: dict[str, Any], inputs: PlaybookInputs, where: str) -> None:
        task_vars = task.get("vars") or {}
        inputs.defined |= set(task_vars)
        if "register" in task:
            inputs.defined.add(task["register"])
        inputs.defined |= {v for k, v in (task.get("loop_control") or {}).items() if k in ("loop_var", "index_var")}
        for block_key in ("block", "rescue", "always"):
            for inner in task.get(block_key) or []:
                self._task(inner, inputs, where)
        for key in SET_FACT:
            if isinstance(task.get(key), dict):
                inputs.defined |= set(task[key])
        for key in INCLUDE_ROLE:
            if key in task:
                spec = task[key]
                self._role(spec["name"], spec.get("tasks_from", "main"), {**self._play_bound, **task_vars}, inputs)
        self._strings({k: v for k, v in task.items() if k not in ("block", "rescue", "always")}, inputs, where,
                      task_vars)
        for key in ASSERT:
            if key in task:
                that = task[key].get("that")
                for expr in [that] if isinstance(that, str) else that or []:
                    tree = _parse("{{ " + str(expr) + " }}", where)
                    for name, values in _membership(tree, task_vars):
                        inputs.add_domain(name, f"{where}: assert {expr!r}", values)

    def _role(self, name: str, entry: str, bound: dict[str, Any], inputs: PlaybookInputs) -> None:
        inputs.defined |= self._role_facts(name)
        path = self.repo / "roles" / name / "meta" / "argument_specs.yml"
        specs = (self._load(path) or {}).get("argument_specs", {}) if path.is_file() else {}
        options = (specs.get(entry) or specs.get("main") or {}).get("options") or {}
        for option, spec in options.items():
            if option in bound:
                # The playbook feeds this option from its own inputs: those inputs accept what the option does.
                value = bound[option]
                feeders = _free_names(_parse(value, f"roles/{name}: {option}")) if isinstance(value, str) else set()
                for feeder in feeders:
                    if spec.get("choices"):
                        inputs.add_domain(feeder, f"roles/{name} option {option} choices", spec["choices"])
                    if spec.get("type") == "bool" and len(feeders) == 1:
                        inputs.add_domain(feeder, f"roles/{name} option {option} (bool)", list(BOOL_CHOICES))
                continue
            inputs.role_options[option] = {**spec, "role": name}
            if spec.get("choices"):
                inputs.add_domain(option, f"roles/{name} option {option} choices", spec["choices"])
            if spec.get("type") == "bool":
                inputs.add_domain(option, f"roles/{name} option {option} (bool)", list(BOOL_CHOICES))

    def _role_facts(self, name: str) -> set[str]:
        """Facts and registered results a role's tasks set: results of the role, never inputs of a survey."""
        facts: set[str] = set()
        pending = [t for path in sorted((self.repo / "roles" / name / "tasks").glob("*.yml"))
                   for t in self._load(path) or []]
        while pending:
            task = pending.pop()
            if "register" in task:
                facts.add(task["register"])
            for key in SET_FACT:
                if isinstance(task.get(key), dict):
                    facts |= set(task[key])
            pending += [inner for key in ("block", "rescue", "always") for inner in task.get(key) or []]
        return facts

    def _strings(self, value: Any, inputs: PlaybookInputs, where: str, task_vars: dict[str, Any],
                 condition: bool = False) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                self._strings(inner, inputs, where, task_vars, condition=key in CONDITION_KEYS)
        elif isinstance(value, list):
            for inner in value:
                self._strings(inner, inputs, where, task_vars, condition)
        elif isinstance(value, str) and (condition or "{{" in value or "{%" in value):
            tree = _parse("{{ " + value + " }}" if condition else value, where)
            inputs.read |= _free_names(tree)
            for name in _bool_reads(tree):
                inputs.add_domain(name, f"{where}: read as '| bool'", list(BOOL_CHOICES))


def playbook_inputs(repo: Path, playbook: str, reader: _PlaybookReader | None = None) -> PlaybookInputs:
    """What `playbook` (a path inside `repo`) accepts, following its imports."""
    return (reader or _PlaybookReader(repo)).read((repo / playbook).resolve())


def _schema_environments(repo: Path) -> list[str]:
    schema = json.loads((repo / "config" / "schema.json").read_text())
    return list(schema["properties"]["environment"]["enum"])


def _catalogue_services(repo: Path) -> list[str]:
    return list(load_yaml(repo / "config" / "base" / "services.yml")["xlerobot_services"])


def _engine_constant(repo: Path, name: str) -> list[str]:
    """A list of the release engine's choices (xl_release.STRATEGIES, ABORT_SCOPES): the one list its preamble
    checks, read from the source without importing it."""
    tree = ast.parse((repo / "plugins" / "module_utils" / "xl_release.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", "") == name for target in node.targets):
            return [str(value) for value in ast.literal_eval(node.value)]
    raise ValueError(f"plugins/module_utils/xl_release.py defines no {name}")


def _release_strategies(repo: Path) -> list[str]:
    return _engine_constant(repo, "STRATEGIES")


def _abort_scopes(repo: Path) -> list[str]:
    return _engine_constant(repo, "ABORT_SCOPES")


# Domains the configuration defines rather than a playbook line: each is enforced where the comment says.
CONFIG_DOMAINS: dict[str, tuple[str, Callable[[Path], list[str]]]] = {
    # xl_config.check_environment refuses an environment the schema's enum does not list.
    "xlerobot_environment": ("config/schema.json environment enum", _schema_environments),
    # roles/release refuses a service the merged catalogue does not have.
    "services": ("config/base/services.yml catalogue", _catalogue_services),
    # deploy.yml dispatches to the strategies roles/release implements.
    "strategy": ("plugins/module_utils/xl_release.py STRATEGIES", _release_strategies),
    # The release engine's preamble refuses any other abort scope.
    "abort_scope": ("plugins/module_utils/xl_release.py ABORT_SCOPES", _abort_scopes),
}


def _question_values(question: dict[str, Any], key: str) -> list[str]:
    value = question.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [v for v in value.split("\n") if v]
    return [str(v) for v in value]


def check_survey(repo: Path, template: str, survey: list[dict[str, Any]],
                 inputs: list[tuple[str, PlaybookInputs]]) -> list[Finding]:
    """Every question of `survey` against the playbooks that receive its answers (a workflow: all nodes')."""
    findings = []
    variables = [question.get("variable") for question in survey]
    for duplicate in sorted({v for v in variables if v and variables.count(v) > 1}):
        findings.append(Finding(template, duplicate, "asked more than once in the survey"))
    for question in survey:
        missing = [key for key in QUESTION_KEYS if key not in question]
        if missing or question.get("type") not in QUESTION_TYPES:
            types = ", ".join(sorted(QUESTION_TYPES))
            findings.append(Finding(template, question.get("variable"), f"not a valid AWX survey question: missing "
                                    f"{missing}, type {question.get('type')!r} (one of {types})"))
            continue
        variable = str(question["variable"])
        takers = [(name, found) for name, found in inputs if variable in found.accepted]
        if not takers:
            names = ", ".join(name for name, _ in inputs)
            findings.append(Finding(template, variable, f"survey variable {variable!r} is not one {names} accepts "
                                    "(no role argument spec declares it and no play reads it)"))
            continue
        if question.get("type") not in ("multiplechoice", "multiselect"):
            continue
        choices = _question_values(question, "choices")
        domains = [d for _, found in takers for d in found.domains.get(variable, [])]
        if variable in CONFIG_DOMAINS:
            source, values = CONFIG_DOMAINS[variable]
            domains.append((source, values(repo)))
        if not domains:
            findings.append(Finding(template, variable, f"choices {choices} cannot be checked: no playbook, role or "
                                    "configuration states the values this variable accepts"))
        for source, accepted in domains:
            if sorted(set(choices)) != sorted(set(accepted)) or len(choices) != len(set(choices)):
                findings.append(Finding(template, variable, f"choices {choices} differ from {source}: {accepted} "
                                        f"(missing {sorted(set(accepted) - set(choices))}, "
                                        f"unknown {sorted(set(choices) - set(accepted))})"))
        unknown_default = sorted(set(_question_values(question, "default")) - set(choices))
        if unknown_default:
            findings.append(Finding(template, variable, f"default {unknown_default} is not among the choices"))
    return findings


def check(repo: Path = REPO, objects: dict[str, Any] | None = None) -> list[Finding]:
    """All findings for the controller objects (default: ``awx/objects.yml``) against the playbooks in `repo`."""
    data = objects if objects is not None else load_yaml(repo / "awx" / "objects.yml")
    findings: list[Finding] = []
    inventories = {inv["name"]: inv for inv in data.get("awx_inventories", [])}
    for inventory in inventories.values():
        if inventory.get("pending"):
            findings.append(Finding(inventory["name"], None, f"skipped (pending): {inventory.get('pending_reason')}",
                                    "skipped"))
        elif not (repo / inventory["source_path"]).is_file():
            findings.append(Finding(inventory["name"], None, f"inventory source {inventory['source_path']} does not "
                                    "exist (mark the inventory `pending: true` with a reason if it is planned)"))
    templates: dict[str, PlaybookInputs | None] = {}
    reader = _PlaybookReader(repo)
    for template in data.get("awx_job_templates", []):
        name, playbook = template["name"], template["playbook"]
        templates[name] = None
        if template.get("pending"):
            findings.append(Finding(name, None, f"skipped (pending): {template.get('pending_reason')}", "skipped"))
            continue
        if not (repo / playbook).is_file():
            findings.append(Finding(name, None, f"playbook {playbook} does not exist (mark the template "
                                    "`pending: true` with a reason if it is planned)"))
            continue
        if template.get("inventory") not in inventories:
            findings.append(Finding(name, None, f"inventory {template.get('inventory')!r} is not defined"))
        templates[name] = found = playbook_inputs(repo, playbook, reader)
        findings += check_survey(repo, name, template.get("survey", []), [(playbook, found)])
    for workflow in data.get("awx_workflow_templates", []):
        findings += _check_workflow(repo, workflow, templates, data.get("awx_job_templates", []))
    return findings


def _check_workflow(repo: Path, workflow: dict[str, Any], templates: dict[str, PlaybookInputs | None],
                    job_templates: list[dict[str, Any]]) -> list[Finding]:
    name = workflow["name"]
    findings: list[Finding] = []
    playbooks = {t["name"]: t["playbook"] for t in job_templates}
    identifiers = {node["identifier"] for node in workflow.get("nodes", [])}
    receivers: list[tuple[str, PlaybookInputs]] = []
    for node in workflow.get("nodes", []):
        target = node["job_template"]
        for edge in ("success", "failure", "always"):
            for unknown in set(node.get(edge, [])) - identifiers:
                findings.append(Finding(name, None,
                                        f"node {node['identifier']}: {edge} node {unknown!r} is not defined"))
        if target not in templates:
            findings.append(Finding(name, None, f"node {node['identifier']}: job template {target!r} is not defined"))
            continue
        found = templates[target]
        if found is None:
            findings.append(Finding(name, None, f"node {node['identifier']}: job template {target!r} is pending or "
                                    "broken; the workflow cannot run it"))
            continue
        receivers.append((playbooks[target], found))
        for variable in node.get("extra_data", {}):
            if variable not in found.accepted:
                findings.append(Finding(name, variable, f"node {node['identifier']} passes {variable!r}, which "
                                        f"{playbooks[target]} does not accept"))
    if receivers:
        findings += check_survey(repo, name, workflow.get("survey", []), receivers)
    return findings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args(argv)
    findings = check(args.repo)
    for finding in findings:
        sys.stdout.write(f"{finding}\n")
    errors = [f for f in findings if f.severity == "error"]
    sys.stdout.write(f"{len(errors)} error(s), {len(findings) - len(errors)} skipped\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
