# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Secrets: HashiCorp Vault / OpenBao KV v2 through hvac, ansible-vault files, and the config layer's references.

Plain functions over plain data, so the vault_secret module and the xl_secret lookup stay thin shells and pytest
calls every branch against a real OpenBao dev server.

References (the syntax of the configuration layer, see xl_config):

- ``{vault: "<mount>/<path>#<key>"}`` or the string ``vault:<mount>/<path>#<key>``: one key of a KV v2 secret.
  The first path segment is the KV v2 mount (``secret/xlerobot/gateway#api_key`` reads key ``api_key`` of
  ``xlerobot/gateway`` on mount ``secret``). ``#<key>@<n>`` pins version ``n``; without it the latest version is
  read. The string form may leave out ``#<key>``: then the whole secret (a mapping) is the value.
- ``{ansible_vault_file: "<file>"}``: the decrypted text of an ansible-vault (AES256) encrypted file, one trailing
  newline removed; ``<file>#<key>`` reads the file as YAML and takes that key. Relative files are relative to the
  ``base_dir`` given to the resolver (the configuration directory).

Errors are ``SecretError``: ``cause`` is one word of ``CAUSES`` and the message names the server, the mount and
path (or the file) and the cause. Messages are built from this module's own phrases and the server's error
strings, never from secret data, and every value this module knows to be secret (tokens, secret ids, data being
written) is masked in them anyway.

The ansible-vault password never lives in the repository: ``vault_password`` reads it from a file or script
named by ``$XL_VAULT_PASSWORD_FILE`` (or ``$ANSIBLE_VAULT_PASSWORD_FILE``), else from ``$XL_VAULT_PASSWORD``.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

try:
    import hvac
    import hvac.exceptions
    import requests

    HAS_HVAC = True
    HVAC_IMPORT_ERROR: ImportError | None = None
except ImportError as _error:  # the module reports it with missing_required_lib
    HAS_HVAC = False
    HVAC_IMPORT_ERROR = _error

AUTH_METHODS = ("token", "approle", "kubernetes")
KUBERNETES_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
PASSWORD_FILE_VARS = ("XL_VAULT_PASSWORD_FILE", "ANSIBLE_VAULT_PASSWORD_FILE")
# The name of a variable, not a password.
PASSWORD_VAR = "XL_VAULT_PASSWORD"  # noqa: S105 # nosec B105
MASKED = "<masked>"
REFERENCE_PREFIX = "vault:"
# mount/path[#key][@version]: a version pins the whole secret too (rotation reads the keys it replaced).
_REFERENCE = re.compile(r"(?P<mount>[^/#@\s]+)/(?P<path>[^#@\s]+?)(?:#(?P<key>[^#@\s]+?))?(?:@(?P<version>\d+))?")

# Messages, not passwords (bandit's B105 reads the keys as such).
CAUSES = {  # nosec B105
    "unreachable": "server unreachable",
    "sealed": "the server is sealed (unseal it, then run again)",
    "token_invalid": "the token is invalid or expired (log in again or renew it)",
    "login_failed": "login refused",
    "permission_denied": "permission denied by the token's policies",
    "path_missing": "no secret at this path",
    "version_missing": "no such version of the secret",
    "key_missing": "the secret has no such key",
    "bad_reference": "not a secret reference",
    "bad_request": "the server refused the request",
    "server_error": "the server failed",
    "password_missing": "no ansible-vault password",
    "decrypt_failed": "cannot decrypt (wrong ansible-vault password?)",
    "file_missing": "cannot read the file",
}


class SecretError(Exception):
    """A secret cannot be read or written. ``where`` is ``<url> <mount>/<path>`` or a file; never a value."""

    def __init__(self, cause: str, where: str, detail: str = "", masked: Iterable[str] = ()) -> None:
        self.cause = cause
        self.where = where
        text = f"{where}: {CAUSES[cause]}" + (f": {detail}" if detail else "")
        super().__init__(mask(text, masked))


def mask(text: str, values: Iterable[Any]) -> str:
    """`text` with every string of `values` (longest first, 4 characters or more) replaced by ``<masked>``."""
    for value in sorted({v for v in _strings(values) if len(v) >= 4}, key=len, reverse=True):
        text = text.replace(value, MASKED)
    return text


def _strings(values: Iterable[Any]) -> Iterable[str]:
    for value in values:
        if isinstance(value, str):
            yield value
        elif isinstance(value, Mapping):
            yield from _strings(value.values())
        elif isinstance(value, (list, tuple, set)):
            yield from _strings(value)
        elif value is not None and not isinstance(value, bool):
            yield str(value)


# --- connecting ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Auth:
    """How to log in. ``mount_point`` defaults to the method's name (``approle``, ``kubernetes``).

    - token: ``token``;
    - approle: ``role_id`` and ``secret_id``;
    - kubernetes: ``role`` and the service account JWT, ``jwt`` or read from ``jwt_file`` (the pod's token).
    """

    method: str = "token"
    token: str | None = field(default=None, repr=False)
    role_id: str | None = None
    secret_id: str | None = field(default=None, repr=False)
    role: str | None = None
    jwt: str | None = field(default=None, repr=False)
    jwt_file: str = KUBERNETES_JWT_FILE
    mount_point: str | None = None

    def secrets(self) -> list[str]:
        return [v for v in (self.token, self.secret_id, self.jwt) if v]


def _require_hvac() -> None:
    if not HAS_HVAC:
        raise ImportError(f"the hvac Python library is required: {HVAC_IMPORT_ERROR}")


def _describe_connection_error(exc: Exception) -> str:
    text = str(exc)
    for marker, phrase in (("Connection refused", "connection refused"), ("timed out", "timed out"),
                           ("Name or service not known", "unknown host"), ("CERTIFICATE_VERIFY_FAILED",
                                                                             "TLS certificate not trusted")):
        if marker in text:
            return phrase
    return type(exc).__name__


def _server_errors(exc: Exception) -> str:
    errors = getattr(exc, "errors", None) or []
    return "; ".join(" ".join(str(e).split()) for e in errors)


def login(url: str, auth: Auth, timeout: float = 10, verify: bool | str = True,
          namespace: str | None = None) -> Any:
    """An hvac.Client for `url`, logged in with `auth` (token auth only checks that a token was given)."""
    _require_hvac()
    if auth.method not in AUTH_METHODS:
        raise ValueError(f"auth method {auth.method!r} is not one of {', '.join(AUTH_METHODS)}")
    mount = auth.mount_point or auth.method
    where = f"{url} auth/{mount}" if auth.method != "token" else url
    # hvac falls back to $VAULT_TOKEN and ~/.vault-token when given no token; an explicit empty one stops that.
    client = hvac.Client(url=url, token=auth.token or "", timeout=timeout, verify=verify, namespace=namespace)
    if auth.method == "token":
        if not auth.token:
            raise SecretError("token_invalid", where, "no token given (option token or $VAULT_TOKEN)")
        return client
    if auth.method == "approle":
        if not auth.role_id or not auth.secret_id:
            raise SecretError("login_failed", where, "approle needs role_id and secret_id")
        with _translated(client, where, auth.secrets(), logging_in=True):
            client.auth.approle.login(role_id=auth.role_id, secret_id=auth.secret_id, mount_point=mount)
        return client
    if not auth.role:
        raise SecretError("login_failed", where, "kubernetes auth needs role")
    jwt = auth.jwt
    if not jwt:
        try:
            with open(auth.jwt_file, encoding="utf-8") as handle:
                jwt = handle.read().strip()
        except OSError as exc:
            raise SecretError("login_failed", where, f"cannot read the service account token {auth.jwt_file}: "
                              f"{exc.strerror}") from exc
    with _translated(client, where, [*auth.secrets(), jwt], logging_in=True):
        client.auth.kubernetes.login(role=auth.role, jwt=jwt, mount_point=mount)
    return client


class _translated:
    """Turn hvac and requests exceptions raised inside the block into SecretError naming `where` and the cause."""

    def __init__(self, client: Any, where: str, masked: Sequence[str] = (), logging_in: bool = False,
                 missing: Callable[[], SecretError] | None = None) -> None:
        self.client, self.where, self.masked, self.logging_in, self.missing = client, where, masked, logging_in, missing

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, _tb: Any) -> Literal[False]:
        if exc is None or isinstance(exc, SecretError) or not isinstance(exc, Exception):
            return False
        raise self._error(exc) from exc

    def _error(self, exc: Exception) -> SecretError:
        where, masked = self.where, self.masked
        if isinstance(exc, requests.exceptions.RequestException):
            return SecretError("unreachable", where, _describe_connection_error(exc), masked)
        if isinstance(exc, hvac.exceptions.VaultDown):
            return SecretError("sealed", where, masked=masked)
        detail = _server_errors(exc)
        if isinstance(exc, hvac.exceptions.Forbidden):
            if self.logging_in:
                return SecretError("login_failed", where, detail, masked)
            return SecretError(self._token_or_policy(), where, masked=masked)
        if isinstance(exc, hvac.exceptions.InvalidPath):
            if "no handler for route" in detail:
                return SecretError("path_missing", where, "no secrets engine is mounted there", masked)
            return self.missing() if self.missing else SecretError("path_missing", where, masked=masked)
        if isinstance(exc, (hvac.exceptions.InvalidRequest, hvac.exceptions.Unauthorized)):
            cause = "login_failed" if self.logging_in else "bad_request"
            return SecretError(cause, where, detail, masked)
        if isinstance(exc, hvac.exceptions.VaultError):
            return SecretError("server_error", where, detail or type(exc).__name__, masked)
        return SecretError("server_error", where, type(exc).__name__, masked)

    def _token_or_policy(self) -> str:
        """Vault answers 403 both for a bad token and for a policy refusal; lookup-self tells them apart."""
        try:
            self.client.auth.token.lookup_self()
        except hvac.exceptions.Forbidden:
            return "token_invalid"
        except Exception:  # noqa: BLE001 - any other failure here says nothing about the token
            return "permission_denied"
        return "permission_denied"


# --- references ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """A KV v2 secret (``mount``, ``path``), one ``key`` of it or all (None), a ``version`` or the latest (None)."""

    mount: str
    path: str
    key: str | None = None
    version: int | None = None

    @property
    def where(self) -> str:
        return f"{self.mount}/{self.path}"

    def __str__(self) -> str:
        text = self.where + (f"#{self.key}" if self.key else "")
        return text + (f"@{self.version}" if self.version is not None else "")


def parse_reference(text: str, key_required: bool = False) -> Reference:
    """``mount/path[#key][@version]`` (``vault:`` prefix allowed) into a Reference; SecretError when malformed."""
    body = text[len(REFERENCE_PREFIX):] if text.startswith(REFERENCE_PREFIX) else text
    match = _REFERENCE.fullmatch(body.strip())
    if not match or (key_required and not match["key"]):
        form = "mount/path#key" if key_required else "mount/path[#key][@version]"
        raise SecretError("bad_reference", repr(text), f"expected {form}")
    version = int(match["version"]) if match["version"] else None
    return Reference(match["mount"], match["path"].strip("/"), match["key"], version)


def reference_of(value: Any) -> Reference | dict[str, str] | None:
    """The reference `value` stands for: a Reference (Vault), ``{"file": ..., "key": ...}`` (ansible-vault), or
    None when `value` is no reference at all (a plain value)."""
    if isinstance(value, str):
        return parse_reference(value) if value.startswith(REFERENCE_PREFIX) else None
    if isinstance(value, Mapping) and len(value) == 1:
        if isinstance(value.get("vault"), str):
            return parse_reference(value["vault"], key_required=True)
        if isinstance(value.get("ansible_vault_file"), str):
            name, _, key = value["ansible_vault_file"].partition("#")
            return {"file": name, "key": key}
    return None


# --- KV v2 --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecretVersion:
    data: dict[str, Any] = field(repr=False)
    version: int
    created_time: str = ""

    @property
    def keys(self) -> list[str]:
        return sorted(self.data)


def _where(client: Any, mount: str, path: str) -> str:
    return f"{client.url} {mount}/{path}"


def read_kv2(client: Any, mount: str, path: str, version: int | None = None) -> SecretVersion:
    """One version of a KV v2 secret, the latest by default. A deleted or destroyed version counts as missing."""
    where = _where(client, mount, path)

    def missing() -> SecretError:
        if version is None:
            return SecretError("path_missing", where)
        try:
            current = current_version(client, mount, path)
        except SecretError:  # a policy may allow reading data but not metadata
            return SecretError("version_missing", where, f"version {version} does not exist or was deleted")
        if current is None:
            return SecretError("path_missing", where, f"(version {version} asked)")
        return SecretError("version_missing", where, f"version {version} does not exist or was deleted "
                           f"(current version {current})")

    with _translated(client, where, missing=missing):
        answer = client.secrets.kv.v2.read_secret_version(path=path, version=version, mount_point=mount,
                                                          raise_on_deleted_version=True)
    data, metadata = answer["data"]["data"], answer["data"]["metadata"]
    if data is None:
        raise missing()
    return SecretVersion(dict(data), int(metadata["version"]), str(metadata.get("created_time", "")))


def current_version(client: Any, mount: str, path: str) -> int | None:
    """The latest version number of a KV v2 secret (deleted or not), None when the path has no secret."""
    with _translated(client, _where(client, mount, path)):
        try:
            metadata = client.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
        except hvac.exceptions.InvalidPath as exc:
            if "no handler for route" in _server_errors(exc):
                raise
            return None
    return int(metadata["data"]["current_version"])


def read_current(client: Any, mount: str, path: str) -> SecretVersion | None:
    """The latest version, None when there is no secret at the path (or its latest version was deleted)."""
    try:
        return read_kv2(client, mount, path)
    except SecretError as exc:
        if exc.cause == "path_missing" and "no secrets engine" not in str(exc):
            return None
        raise


def write_kv2(client: Any, mount: str, path: str, data: Mapping[str, Any], cas: int | None = None) -> int:
    """Write `data` as a new version of the secret (check-and-set with `cas`); return the new version number."""
    where = _where(client, mount, path)
    with _translated(client, where, masked=list(_strings([data]))):
        answer = client.secrets.kv.v2.create_or_update_secret(path=path, secret=dict(data), cas=cas,
                                                              mount_point=mount)
    return int(answer["data"]["version"])


def read_reference(client: Any, reference: Reference) -> Any:
    """The value a Vault reference stands for: one key, or the whole mapping when the reference names no key."""
    return pick(read_kv2(client, reference.mount, reference.path, reference.version), reference,
                _where(client, reference.mount, reference.path))


def pick(secret: SecretVersion, reference: Reference, where: str) -> Any:
    """The reference's key of `secret` (all of it when the reference names no key); key_missing names the keys."""
    if reference.key is None:
        return dict(secret.data)
    if reference.key not in secret.data:
        raise SecretError("key_missing", where, f"key {reference.key!r} not in version {secret.version} (keys: "
                          f"{', '.join(secret.keys) or 'none'})")
    return secret.data[reference.key]


def key_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> dict[str, str]:
    """Per key name: added, removed, changed or unchanged. Names only: the values stay here."""
    before = before or {}
    changes = {}
    for key in sorted(set(before) | set(after)):
        if key not in before:
            changes[key] = "added"
        elif key not in after:
            changes[key] = "removed"
        else:
            changes[key] = "unchanged" if before[key] == after[key] else "changed"
    return changes


def rotated(before: Mapping[str, Any] | None, keys: Sequence[str], length: int = 32) -> dict[str, Any]:
    """`before` with a fresh random URL-safe value (``length`` bytes of entropy) for each of `keys`."""
    data = dict(before or {})
    for key in keys:
        data[key] = secrets.token_urlsafe(length)
    return data


# --- ansible-vault ------------------------------------------------------------------------------------------


def vault_password(password_file: str | None = None, environ: Mapping[str, str] | None = None) -> bytes:
    """The ansible-vault password: `password_file`, else $XL_VAULT_PASSWORD_FILE, $ANSIBLE_VAULT_PASSWORD_FILE,
    else $XL_VAULT_PASSWORD. An executable file is run and its first output line is the password (the
    ansible-vault client script convention); any other file's first line is."""
    environ = os.environ if environ is None else environ
    name = password_file or next((environ[var] for var in PASSWORD_FILE_VARS if environ.get(var)), None)
    if name:
        where = f"ansible-vault password file {name}"
        try:
            if os.access(name, os.X_OK) and not os.path.isdir(name):
                proc = subprocess.run([name], capture_output=True, check=False, timeout=30, env=dict(environ))
                if proc.returncode != 0:
                    reason = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                    raise SecretError("password_missing", where, f"the script exited {proc.returncode}"
                                      + (f": {reason[-1]}" if reason else ""))
                text = proc.stdout
            else:
                with open(name, "rb") as handle:
                    text = handle.read()
        except OSError as exc:
            raise SecretError("password_missing", where, exc.strerror or type(exc).__name__) from exc
        password = text.splitlines()[0].strip() if text.strip() else b""
        if not password:
            raise SecretError("password_missing", where, "it gave an empty password")
        return password
    if environ.get(PASSWORD_VAR):
        return environ[PASSWORD_VAR].encode("utf-8")
    raise SecretError("password_missing", "ansible-vault",
                      f"set ${PASSWORD_FILE_VARS[0]} (a file or script) or ${PASSWORD_VAR}")


def decrypt_file(path: str, password: bytes) -> str:
    """The decrypted text of an ansible-vault encrypted file (any vault id); SecretError names the file."""
    # Controller-only: ansible.parsing is not shipped with modules, so import it here, not at the top.
    from ansible.errors import AnsibleError
    from ansible.parsing.vault import VaultLib, VaultSecret, is_encrypted

    try:
        with open(path, "rb") as handle:
            blob = handle.read()
    except OSError as exc:
        raise SecretError("file_missing", path, exc.strerror or type(exc).__name__) from exc
    if not is_encrypted(blob):
        raise SecretError("decrypt_failed", path, "the file is not ansible-vault encrypted; encrypt it with "
                          "ansible-vault encrypt")
    try:
        plain = VaultLib([("default", VaultSecret(password))]).decrypt(blob)
    except AnsibleError as exc:
        raise SecretError("decrypt_failed", path, "no password given decrypts it") from exc
    return plain.decode("utf-8")


def read_vault_file(name: str, key: str, base_dir: str, password: bytes) -> Any:
    """An ``{ansible_vault_file: name[#key]}`` reference: the text, or with `key` one key of its YAML mapping."""
    import yaml

    path = name if os.path.isabs(name) else os.path.join(base_dir, name)
    text = decrypt_file(path, password)
    if not key:
        return text[:-1] if text.endswith("\n") else text
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SecretError("bad_reference", path, "the decrypted text is not YAML; leave out #key to read it "
                          "whole") from exc
    if not isinstance(data, Mapping) or key not in data:
        keys = ", ".join(sorted(map(str, data))) if isinstance(data, Mapping) else "not a mapping"
        raise SecretError("key_missing", path, f"key {key!r} not in the decrypted file (keys: {keys})")
    return data[key]


# --- resolving a configuration tree -------------------------------------------------------------------------


class Resolver:
    """Turns references into values; one read per Vault secret version, one decryption per file.

    `client` is called once, on the first Vault reference (so a tree with no Vault reference needs no
    server); `password` likewise on the first ansible-vault reference.
    """

    def __init__(self, client: Callable[[], Any] | None = None, base_dir: str = ".",
                 password: Callable[[], bytes] | None = None) -> None:
        self._client_factory = client
        self._password_factory = password or vault_password
        self._client: Any = None
        self._password: bytes | None = None
        self.base_dir = base_dir
        self._secrets: dict[tuple[str, str, int | None], SecretVersion] = {}
        self._files: dict[str, str] = {}

    def value(self, reference: Reference | Mapping[str, str]) -> Any:
        if isinstance(reference, Reference):
            return self._vault_value(reference)
        if self._password is None:
            self._password = self._password_factory()
        return read_vault_file(reference["file"], reference["key"], self.base_dir, self._password)

    def _vault_value(self, reference: Reference) -> Any:
        if self._client is None:
            if self._client_factory is None:
                raise SecretError("bad_reference", str(reference), "no Vault connection configured")
            self._client = self._client_factory()
        cache_key = (reference.mount, reference.path, reference.version)
        if cache_key not in self._secrets:
            self._secrets[cache_key] = read_kv2(self._client, reference.mount, reference.path, reference.version)
        return pick(self._secrets[cache_key], reference, _where(self._client, reference.mount, reference.path))

    def resolve(self, tree: Any) -> Any:
        """A copy of `tree` with every reference replaced by its value; `tree` is not modified."""
        reference = reference_of(tree)
        if reference is not None:
            return self.value(reference)
        if isinstance(tree, Mapping):
            return {key: self.resolve(value) for key, value in tree.items()}
        if isinstance(tree, list):
            return [self.resolve(value) for value in tree]
        return tree
