#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: speech_config
short_description: Merge the layered deploy configuration, validate it and record the version applied
description:
  - Reads the configuration layers under O(config_dir), lowest first, later layers winning
    (C(base/*.yml), C(environments/<environment>/*.yml), C(services/<service>/*.yml) nested under
    C(services.<service>), C(runtime/*.yml), C(secrets/*.yml)), then O(extra_layers) in the order given.
  - "Mappings merge key by key; scalars and lists replace; a key ending in C(+) appends to the earlier list;
    a value of C(null) deletes the key. A top-level C(xlerobot_services) key is read as C(services)."
  - Validates the merged configuration against the JSON Schema O(schema) (Draft 2020-12) and checks the
    policies the schema cannot express (TLS and authentication on the gateway and two replicas per service in
    production; no plaintext secret and no C(latest) image tag anywhere). Every violation is reported at once,
    each with the file that set the value, and the task fails.
  - Returns the merged configuration, where each value came from, and a content version (a hash of the
    merged configuration).
  - With O(state_file), compares the version with the one recorded there; when they differ the task is
    changed, and (outside check mode) the record is replaced atomically (mode 0600), the version is kept whole
    as C(<state_file>.versions/<version>.json) and a line is appended to C(<state_file>.history.jsonl).
  - With O(restore_version), the configuration is an earlier applied version read from that store instead of
    the layers; it is validated against today's schema and policies like merged layers are, and recorded as
    applied again.
options:
  config_dir:
    description: Directory holding the layer directories (C(base), C(environments), ...), usually C(config).
    type: path
    required: true
  environment:
    description:
      - Environment whose layer is read; also selects the production policies.
      - Must be one of the names the schema's C(environment) enum lists.
    type: str
    required: true
  schema:
    description: JSON Schema of the merged configuration. Defaults to C(<config_dir>/schema.json).
    type: path
  service:
    description: Also return this service's effective configuration (C(defaults) merged with the service).
    type: str
  extra_layers:
    description:
      - In-memory layers merged after all files, in this order, for inventory or extra-vars overrides.
      - Their values appear in RV(origins) as C(<name>:extra_layers[<index>]).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the layer, shown in RV(origins) and in violations.
        type: str
        required: true
      data:
        description: The layer's content, shaped like a layer file.
        type: dict
        required: true
  state_file:
    description:
      - JSON record of the configuration applied last (version, environment, configuration).
      - When given, the task is changed exactly when the merged configuration differs from the recorded one (and
        O(record) is true).
    type: path
  record:
    description:
      - Write the record, the kept version and the history line when the version changed (needs O(state_file)).
      - V(false) only compares with the record, for a run that records after it has applied the configuration.
    type: bool
    default: true
  restore_version:
    description:
      - An earlier applied version (C(cfg-) and 12 hex digits) to return to, read from
        C(<state_file>.versions/) instead of merging the layers. Needs O(state_file).
      - A version never applied in this environment fails, naming the latest applied ones.
    type: str
attributes:
  check_mode:
    support: full
    details: Reports whether the record would change, and the diff, without writing.
  diff_mode:
    support: full
    details: The recorded configuration against the merged one (needs O(state_file)).
  idempotent:
    support: full
notes:
  - "Runs on the controller: use C(delegate_to: localhost) (and C(run_once: true)) with the controller's
    Python, which must have PyYAML and jsonschema (the project venv has both)."
  - Dotted paths in RV(origins) and violations name keys; a key that contains a dot is ambiguous there.
requirements:
  - PyYAML
  - jsonschema >= 4.18
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Merge and validate the configuration of this environment
  speech_config:
    config_dir: "{{ playbook_dir | dirname }}/config"
    environment: "{{ xlerobot_environment }}"
    service: asr
    extra_layers:
      - name: inventory
        data:
          services: "{{ xlerobot_services_overrides }}"
    state_file: "{{ playbook_dir | dirname }}/.run/{{ xlerobot_environment }}/config.json"
  delegate_to: localhost
  run_once: true
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  register: xl_config

- name: Use the merged catalogue
  ansible.builtin.set_fact:
    xlerobot_services: "{{ xl_config.merged.services }}"
"""

RETURN = r"""
merged:
  description: The merged configuration.
  returned: success
  type: dict
origins:
  description: "Every leaf path of RV(merged) (dotted; lists are leaves) and the C(<layer>:<file>) that set it last."
  returned: success
  type: dict
  sample: {"services.asr.memory": "base:base/services.yml",
           "services.asr.env.ASR_MAX_CONCURRENCY": "environment:environments/local/services.yml"}
layers:
  description: The layers read, lowest first, as C(<layer>:<file>).
  returned: success
  type: list
  elements: str
version:
  description: Content version of RV(merged), C(cfg-) and 12 hex digits of its SHA-256.
  returned: success
  type: str
  sample: cfg-0b88d013f87a
recorded_version:
  description: The version O(state_file) held before the task (null when there was none).
  returned: when O(state_file) is given
  type: str
violations:
  description: Schema and policy violations, sorted by path; the task fails when there is any.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: Dotted path of the key, with list indexes as C([n]).
      type: str
    rule:
      description: The JSON Schema keyword (C(type), C(required), ...) or the policy name.
      type: str
    message:
      description: What is wrong.
      type: str
    value:
      description: The offending value (repr, shortened; masked under secret keys).
      type: str
    origin:
      description: The C(<layer>:<file>) that set the value.
      type: str
rendered:
  description: Effective configuration of O(service) (C(defaults) merged with the service).
  returned: when O(service) is given
  type: dict
changes:
  description: Leaves that differ from the recorded configuration (C(path), C(change), C(before), C(after), C(origin)).
  returned: when O(state_file) is given
  type: list
  elements: dict
diff:
  description: The recorded configuration (C(before)) and the merged one (C(after)).
  returned: when O(state_file) is given
  type: dict
restart_paths:
  description: Paths of RV(changes) that reach instances only when they restart (schema C(x-restart) true or unmarked).
  returned: when O(state_file) is given
  type: list
  elements: str
reload_paths:
  description: Paths of RV(changes) the services reload while running (schema C(x-restart) false).
  returned: when O(state_file) is given
  type: list
  elements: str
applied_versions:
  description: Versions applied in this environment so far, oldest first (C(version), C(at) of the latest application).
  returned: when O(state_file) is given
  type: list
  elements: dict
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

try:
    from ansible.module_utils.xl_config import (
        ConfigError,
        applied_versions,
        check_environment,
        check_policies,
        content_version,
        diff,
        format_violations,
        load_layers,
        load_schema,
        make_layer,
        merge,
        needs_restart,
        read_applied,
        read_version,
        record_applied,
        render_service,
        utc_now,
        validate,
    )
except ImportError:  # PyYAML or jsonschema missing on the interpreter that runs the module
    IMPORT_ERROR: str | None = traceback.format_exc()
else:
    IMPORT_ERROR = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            config_dir=dict(type="path", required=True),
            environment=dict(type="str", required=True),
            schema=dict(type="path"),
            service=dict(type="str"),
            extra_layers=dict(type="list", elements="dict", default=[], options=dict(
                name=dict(type="str", required=True),
                data=dict(type="dict", required=True),
            )),
            state_file=dict(type="path"),
            restore_version=dict(type="str"),
            record=dict(type="bool", default=True),
        ),
        required_by={"restore_version": "state_file"},
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg=missing_required_lib("PyYAML and jsonschema (run the module with the controller's "
                                                  "Python: delegate_to: localhost)"), exception=IMPORT_ERROR)
    params = module.params
    environment = params["environment"]
    schema_path = params["schema"] or f"{params['config_dir'].rstrip('/')}/schema.json"
    try:
        schema = load_schema(schema_path)
        check_environment(environment, schema)
        if params["restore_version"] and params["extra_layers"]:
            raise ConfigError("restore_version returns to a whole recorded configuration; extra_layers cannot be "
                              "merged into it")
        restored = read_version(params["state_file"], params["restore_version"]) if params["restore_version"] else None
        if restored is not None:
            if restored.get("environment") != environment:
                raise ConfigError(f"configuration {params['restore_version']} was applied to environment "
                                  f"{restored.get('environment')!r}, not {environment!r}")
            merged = restored["config"]
            origins = {path: origin if origin.startswith("cfg-") else f"{params['restore_version']}:{origin}"
                       for path, origin in (restored.get("origins") or {}).items()}
            layers = []
        else:
            layers = load_layers(params["config_dir"], environment)
            layers += [make_layer(extra["name"], f"extra_layers[{index}]", extra["data"])
                       for index, extra in enumerate(params["extra_layers"])]
            merged, origins = merge(layers)
        violations = sorted(validate(merged, schema, origins) + check_policies(merged, environment, origins),
                            key=lambda v: (v.path, v.rule, v.message))
        if violations:
            module.fail_json(
                msg=f"configuration for environment {environment} has {len(violations)} violation(s):\n"
                    + format_violations(violations),
                violations=[vars(v) for v in violations])
        result = dict(changed=False, merged=merged, origins=origins, version=content_version(merged),
                      layers=[layer.origin for layer in layers] or [f"restored:{params['restore_version']}"],
                      violations=[])
        if params["service"]:
            result["rendered"] = render_service(merged, params["service"])
        if params["state_file"]:
            recorded = read_applied(params["state_file"])
            before = recorded["config"] if recorded else {}
            result["recorded_version"] = recorded.get("version") if recorded else None
            result["changes"] = diff(before, merged, origins)
            result["changed"] = params["record"] and result["recorded_version"] != result["version"]
            result["restart_paths"] = [c["path"] for c in result["changes"] if needs_restart(schema, c["path"])]
            result["reload_paths"] = [c["path"] for c in result["changes"] if not needs_restart(schema, c["path"])]
            result["diff"] = {"before": before, "after": merged, "before_header": params["state_file"],
                              "after_header": f"{environment} {result['version']}"}
            if result["changed"] and params["record"] and not module.check_mode:
                at = utc_now()
                record_applied(
                    params["state_file"],
                    {"version": result["version"], "environment": environment, "at": at, "config": merged,
                     "origins": origins},
                    {"at": at, "environment": environment, "version": result["version"],
                     "previous_version": result["recorded_version"],
                     "changed_paths": [change["path"] for change in result["changes"]],
                     **({"restored": True} if restored is not None else {})})
            result["applied_versions"] = applied_versions(params["state_file"])
    except ConfigError as exc:
        module.fail_json(msg=str(exc), violations=[])
    except OSError as exc:
        module.fail_json(msg=f"configuration record {params['state_file']}: {exc}", violations=[])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
