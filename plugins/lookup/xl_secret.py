# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
name: xl_secret
short_description: Values of the configuration layer's secret references (Vault/OpenBao KV v2 or ansible-vault)
description:
  - "Each term is a reference as the configuration layer writes it (see C(plugins/module_utils/xl_config.py)):
    V({vault: 'mount/path#key'}), the string V(vault:mount/path#key), or V({ansible_vault_file: 'file'}), or a
    bare string V(mount/path#key). C(@<n>) at the end pins version C(n) of the secret; a string with no C(#key)
    returns the whole secret as a mapping (V(vault:mount/path@3) - all keys of version 3). C(file#key) reads
    the decrypted file as YAML and takes that key."
  - Returns one value per term. Use it in tasks with C(no_log) - the values are secrets.
  - Failures name the server, mount and path (or the file) and the cause - server unreachable, sealed, token
    invalid or expired, login refused, permission denied, path, version or key missing, wrong ansible-vault
    password - never a value.
  - For a plain read with no reference syntax, community.hashi_vault.vault_kv2_get does the same job.
options:
  _terms:
    description: References to resolve.
    required: true
    type: list
    elements: raw
  url:
    description: Address of the Vault/OpenBao server.
    type: str
    env:
      - name: VAULT_ADDR
      - name: BAO_ADDR
      - name: ANSIBLE_HASHI_VAULT_URL
    vars:
      - name: xl_vault_url
  auth_method:
    description: V(token), V(approle) or V(kubernetes).
    type: str
    default: token
    choices: [token, approle, kubernetes]
    env:
      - name: ANSIBLE_HASHI_VAULT_AUTH_METHOD
    vars:
      - name: xl_vault_auth_method
  token:
    description: Token for O(auth_method=token).
    type: str
    env:
      - name: VAULT_TOKEN
      - name: BAO_TOKEN
      - name: ANSIBLE_HASHI_VAULT_TOKEN
    vars:
      - name: xl_vault_token
  role_id:
    description: AppRole role id.
    type: str
    env:
      - name: XL_VAULT_ROLE_ID
      - name: ANSIBLE_HASHI_VAULT_ROLE_ID
    vars:
      - name: xl_vault_role_id
  secret_id:
    description: AppRole secret id.
    type: str
    env:
      - name: XL_VAULT_SECRET_ID
      - name: ANSIBLE_HASHI_VAULT_SECRET_ID
    vars:
      - name: xl_vault_secret_id
  kubernetes_role:
    description: Vault role for O(auth_method=kubernetes).
    type: str
    vars:
      - name: xl_vault_kubernetes_role
  kubernetes_jwt_file:
    description: Service account token presented for O(auth_method=kubernetes).
    type: path
    default: /var/run/secrets/kubernetes.io/serviceaccount/token
  auth_mount_point:
    description: Mount of the auth method; defaults to the method's name.
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
  base_dir:
    description: Directory that relative C(ansible_vault_file) names are relative to; the playbook's directory by
      default.
    type: path
  vault_password_file:
    description:
      - File or executable script giving the ansible-vault password. When left out, E(XL_VAULT_PASSWORD_FILE),
        E(ANSIBLE_VAULT_PASSWORD_FILE), then E(XL_VAULT_PASSWORD) are tried.
    type: path
notes:
  - Runs on the controller and needs hvac there for Vault references (the project venv has it).
  - Vault is contacted only when a term is a Vault reference, and a secret version is read once per lookup call.
seealso:
  - module: vault_secret
  - plugin: community.hashi_vault.vault_kv2_get
    plugin_type: lookup
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Give the gateway its API key
  ansible.builtin.template:
    src: gateway.env.j2
    dest: /etc/xlerobot/gateway.env
    mode: "0600"
  vars:
    gateway_api_key: "{{ lookup('xl_secret', 'secret/xlerobot/gateway#api_key') }}"
  no_log: true

- name: Resolve the references of the merged configuration's gateway section
  ansible.builtin.set_fact:
    gateway_api_keys: "{{ lookup('xl_secret', xl_config.merged.gateway.auth.api_keys) }}"
  no_log: true

- name: A secret kept in the repository, encrypted with ansible-vault
  ansible.builtin.set_fact:
    registry_password: "{{ lookup('xl_secret', {'ansible_vault_file': 'secrets/registry.vault'}) }}"
  no_log: true
"""

RETURN = r"""
_raw:
  description: One value per term - a string (or whatever the key holds), or a mapping for a whole secret.
  type: list
  elements: raw
"""

import os
import sys

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

# This repository is no installed collection, so ansible.module_utils does not reach plugins/module_utils on the
# controller; the lookup imports the same plain module the vault_secret module ships.
_MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MODULE_UTILS not in sys.path:
    sys.path.insert(0, _MODULE_UTILS)

import xl_vault


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        base_dir = self.get_option("base_dir") or self._loader.get_basedir()
        password_file = self.get_option("vault_password_file")
        resolver = xl_vault.Resolver(client=self._client, base_dir=base_dir,
                                     password=lambda: xl_vault.vault_password(password_file))
        values = []
        for term in terms:
            try:
                reference = xl_vault.reference_of(term)
                if reference is None and isinstance(term, str):
                    reference = xl_vault.parse_reference(term)
                if reference is None:
                    raise AnsibleLookupError(f"xl_secret: term of type {type(term).__name__} is no reference; use "
                                             "'mount/path#key', {vault: ...} or {ansible_vault_file: ...}")
                values.append(resolver.value(reference))
            except xl_vault.SecretError as exc:
                raise AnsibleLookupError(f"xl_secret: {exc}") from None
        return values

    def _client(self):
        if not xl_vault.HAS_HVAC:
            raise AnsibleLookupError(f"xl_secret: the hvac Python library is needed on the controller "
                                     f"({xl_vault.HVAC_IMPORT_ERROR})")
        url = self.get_option("url")
        if not url:
            raise AnsibleLookupError("xl_secret: no server address; set url, xl_vault_url or VAULT_ADDR")
        validate, ca_cert = self.get_option("validate_certs"), self.get_option("ca_cert")
        auth = xl_vault.Auth(method=self.get_option("auth_method"), token=self.get_option("token"),
                             role_id=self.get_option("role_id"), secret_id=self.get_option("secret_id"),
                             role=self.get_option("kubernetes_role"),
                             jwt_file=self.get_option("kubernetes_jwt_file"),
                             mount_point=self.get_option("auth_mount_point"))
        return xl_vault.login(url, auth, timeout=self.get_option("timeout"),
                              verify=ca_cert if validate and ca_cert else validate)
