#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vault_secret
short_description: Inspect, write or rotate a KV v2 secret in HashiCorp Vault or OpenBao, never showing its values
description:
  - V(read) checks that the secret exists (at O(version), or the latest) and returns its version and key names.
    It never returns values; the P(xl_secret#lookup) lookup does, in tasks that set C(no_log).
  - V(present) makes O(data) the content of the secret. It reads the latest version first and writes a new version
    only when the content differs, so a second run changes nothing.
  - V(rotated) writes a new version in which each key of O(rotate_keys) gets a fresh random value (URL-safe, from
    Python's C(secrets)); the other keys are kept. It always writes, so it is not idempotent by design.
  - Every failure names the server, the mount and path, and the cause (server unreachable, sealed, token invalid or
    expired, login refused, permission denied, path, version or key missing), never a value.
  - Why not only community.hashi_vault? Its C(vault_kv2_get) and C(vault_kv2_write) do plain reads and writes, and
    plays may keep using them. This module exists for what they lack here - the error vocabulary shared with the
    P(xl_secret#lookup) lookup and the configuration layer's references, check mode and a diff (versions and key
    names) for rotation writes, and random rotation that never passes the new value through the playbook.
options:
  url:
    description: Address of the server. Defaults to E(VAULT_ADDR), then E(BAO_ADDR), then E(ANSIBLE_HASHI_VAULT_URL).
    type: str
    required: true
    fallback: env VAULT_ADDR, BAO_ADDR, ANSIBLE_HASHI_VAULT_URL
  auth_method:
    description: How to log in. Defaults to E(ANSIBLE_HASHI_VAULT_AUTH_METHOD) (what AWX credentials inject).
    type: str
    choices: [token, approle, kubernetes]
    default: token
  token:
    description: Token for O(auth_method=token). Defaults to E(VAULT_TOKEN), E(BAO_TOKEN), E(ANSIBLE_HASHI_VAULT_TOKEN).
    type: str
  role_id:
    description: AppRole role id for O(auth_method=approle). Defaults to E(XL_VAULT_ROLE_ID),
      E(ANSIBLE_HASHI_VAULT_ROLE_ID).
    type: str
  secret_id:
    description: AppRole secret id for O(auth_method=approle). Defaults to E(XL_VAULT_SECRET_ID),
      E(ANSIBLE_HASHI_VAULT_SECRET_ID).
    type: str
  kubernetes_role:
    description: Vault role to log in as for O(auth_method=kubernetes).
    type: str
  kubernetes_jwt_file:
    description: Service account token presented for O(auth_method=kubernetes).
    type: path
    default: /var/run/secrets/kubernetes.io/serviceaccount/token
  auth_mount_point:
    description: Mount of the auth method; defaults to the method's name (C(approle), C(kubernetes)).
    type: str
  timeout:
    description: Seconds to wait for each request.
    type: int
    default: 10
  validate_certs:
    description: Verify the server's TLS certificate (with O(ca_cert) when given).
    type: bool
    default: true
  ca_cert:
    description: CA bundle that signed the server's certificate.
    type: path
  engine_mount_point:
    description: Mount of the KV v2 secrets engine.
    type: str
    default: secret
  path:
    description: Path of the secret under O(engine_mount_point) (without C(data/)).
    type: str
    required: true
  state:
    description: V(read), V(present) or V(rotated).
    type: str
    choices: [read, present, rotated]
    default: read
  version:
    description: Version to check for V(read); the latest when left out.
    type: int
  data:
    description: Content of the secret for V(present), key to value. Never logged.
    type: dict
  rotate_keys:
    description: Keys that get a new random value for V(rotated).
    type: list
    elements: str
  rotate_length:
    description: Bytes of randomness of each rotated value (the value is about 4/3 as many characters).
    type: int
    default: 32
  cas:
    description:
      - Check-and-set for V(present) and V(rotated) - write only if the latest version is this one (V(0) - only
        if the secret does not exist yet). Guards a rotation against a concurrent writer.
    type: int
attributes:
  check_mode:
    support: full
    details: Reads the latest version and reports whether it would write and which version would result; writes
      nothing.
  diff_mode:
    support: full
    details: Before and after show the version and the key names, plus the names of changed keys; never values.
  idempotent:
    support: partial
    details: V(read) and V(present) are idempotent; V(rotated) writes a new version on every run.
notes:
  - Needs C(read) on C(<mount>/data/<path>) for every state, and C(create)/C(update) to write. The version in a
    V(version_missing) message also needs C(read) on C(<mount>/metadata/<path>).
  - Values from O(data) and the new values of V(rotated) never appear in the result, in the diff or in errors.
seealso:
  - module: community.hashi_vault.vault_kv2_get
  - module: community.hashi_vault.vault_kv2_write
requirements:
  - hvac
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Check that the gateway's keys exist before deploying
  vault_secret:
    url: https://vault.internal:8200
    path: xlerobot/gateway
  delegate_to: localhost

- name: Store the TTS token (AppRole login)
  vault_secret:
    url: https://vault.internal:8200
    auth_method: approle
    role_id: "{{ xl_vault_role_id }}"
    secret_id: "{{ xl_vault_secret_id }}"
    path: xlerobot/tts
    state: present
    data:
      token: "{{ new_tts_token }}"
  no_log: true
  delegate_to: localhost

- name: Rotate the gateway API key, only over the version read earlier
  vault_secret:
    path: xlerobot/gateway
    state: rotated
    rotate_keys: [api_key]
    cas: "{{ gateway_secret.version }}"
  delegate_to: localhost
"""

RETURN = r"""
mount:
  description: The KV v2 mount.
  returned: always
  type: str
  sample: secret
path:
  description: The secret's path under the mount.
  returned: always
  type: str
  sample: xlerobot/gateway
version:
  description: Version read, written, or (check mode) that a write would create; 0 when there is no secret.
  returned: always
  type: int
  sample: 4
previous_version:
  description: Latest version before the task; 0 when there was no secret.
  returned: always
  type: int
  sample: 3
keys:
  description: Key names of the secret after the task.
  returned: always
  type: list
  elements: str
  sample: [admin_key, api_key]
changes:
  description: For V(present) and V(rotated), each key name with added, removed, changed or unchanged.
  returned: always
  type: dict
  sample: {"api_key": "changed", "admin_key": "unchanged"}
created_time:
  description: When the version read was created (V(read) only).
  returned: when state is read
  type: str
"""

from ansible.module_utils.basic import AnsibleModule, env_fallback, missing_required_lib
from ansible.module_utils.xl_vault import (
    HAS_HVAC,
    HVAC_IMPORT_ERROR,
    Auth,
    SecretError,
    key_changes,
    login,
    read_current,
    read_kv2,
    rotated,
    write_kv2,
)


def _client(params):
    verify = params["ca_cert"] if params["validate_certs"] and params["ca_cert"] else params["validate_certs"]
    auth = Auth(method=params["auth_method"], token=params["token"], role_id=params["role_id"],
                secret_id=params["secret_id"], role=params["kubernetes_role"],
                jwt_file=params["kubernetes_jwt_file"], mount_point=params["auth_mount_point"])
    return login(params["url"], auth, timeout=params["timeout"], verify=verify)


def _summary(version, keys, changes=None):
    summary = {"version": version, "keys": sorted(keys)}
    if changes is not None:
        summary["changed_keys"] = sorted(k for k, change in changes.items() if change != "unchanged")
    return summary


def run(module):
    params = module.params
    mount, path, state = params["engine_mount_point"], params["path"].strip("/"), params["state"]
    result = {"mount": mount, "path": path}
    client = _client(params)
    if state == "read":
        secret = read_kv2(client, mount, path, params["version"])
        return dict(result, changed=False, version=secret.version, previous_version=secret.version,
                    keys=secret.keys, changes={}, created_time=secret.created_time)
    before = read_current(client, mount, path)
    before_data = before.data if before else {}
    before_version = before.version if before else 0
    if params["cas"] is not None and params["cas"] != before_version:
        raise SecretError("bad_request", f"{client.url} {mount}/{path}",
                          f"check-and-set: the latest version is {before_version}, not {params['cas']}")
    data = params["data"] if state == "present" else rotated(before_data, params["rotate_keys"],
                                                                params["rotate_length"])
    changes = key_changes(before_data, data)
    write = state == "rotated" or before is None or data != before_data
    version = before_version
    if write:
        version = before_version + 1 if module.check_mode else write_kv2(client, mount, path, data, params["cas"])
    return dict(result, changed=write, version=version, previous_version=before_version, keys=sorted(data),
                changes=changes, diff={"before": _summary(before_version, before_data),
                                       "after": _summary(version, data, changes)})


def main():
    module = AnsibleModule(
        argument_spec=dict(
            url=dict(type="str", required=True,
                     fallback=(env_fallback, ["VAULT_ADDR", "BAO_ADDR", "ANSIBLE_HASHI_VAULT_URL"])),
            auth_method=dict(type="str", default="token", choices=["token", "approle", "kubernetes"],
                             fallback=(env_fallback, ["ANSIBLE_HASHI_VAULT_AUTH_METHOD"])),
            token=dict(type="str", no_log=True,
                       fallback=(env_fallback, ["VAULT_TOKEN", "BAO_TOKEN", "ANSIBLE_HASHI_VAULT_TOKEN"])),
            role_id=dict(type="str", fallback=(env_fallback, ["XL_VAULT_ROLE_ID", "ANSIBLE_HASHI_VAULT_ROLE_ID"])),
            secret_id=dict(type="str", no_log=True,
                           fallback=(env_fallback, ["XL_VAULT_SECRET_ID", "ANSIBLE_HASHI_VAULT_SECRET_ID"])),
            kubernetes_role=dict(type="str"),
            kubernetes_jwt_file=dict(type="path", default="/var/run/secrets/kubernetes.io/serviceaccount/token"),
            auth_mount_point=dict(type="str"),
            timeout=dict(type="int", default=10),
            validate_certs=dict(type="bool", default=True),
            ca_cert=dict(type="path"),
            engine_mount_point=dict(type="str", default="secret"),
            path=dict(type="str", required=True),
            state=dict(type="str", default="read", choices=["read", "present", "rotated"]),
            version=dict(type="int"),
            data=dict(type="dict", no_log=True),
            rotate_keys=dict(type="list", elements="str", no_log=False),
            rotate_length=dict(type="int", default=32),
            cas=dict(type="int"),
        ),
        required_if=[
            ("state", "present", ["data"]),
            ("state", "rotated", ["rotate_keys"]),
            ("auth_method", "token", ["token"]),
            ("auth_method", "approle", ["role_id", "secret_id"]),
            ("auth_method", "kubernetes", ["kubernetes_role"]),
        ],
        mutually_exclusive=[("version", "data"), ("version", "rotate_keys"), ("data", "rotate_keys")],
        supports_check_mode=True,
    )
    if not HAS_HVAC:
        module.fail_json(msg=missing_required_lib("hvac"), exception=str(HVAC_IMPORT_ERROR))
    try:
        result = run(module)
    except SecretError as exc:
        module.fail_json(msg=str(exc), cause=exc.cause, mount=module.params["engine_mount_point"],
                         path=module.params["path"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
