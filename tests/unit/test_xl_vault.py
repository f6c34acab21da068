"""xl_vault, the vault_secret module and the xl_secret lookup against a real OpenBao dev server on 127.0.0.1.

Every secret value is random per run, so a test finds a leak by searching for it. The server runs for the whole
module (tests/support/openbao.py); the sealed test starts its own, since sealing is for good in dev mode.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.server
import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
import xl_vault as xv
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import ansible_cli
from tests.support.openbao import OpenBaoDevServer, closed_port

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MOUNT = "secret"
READ_POLICY = 'path "secret/data/xlerobot/*" { capabilities = ["read"] }\n' \
              'path "secret/metadata/xlerobot/*" { capabilities = ["read"] }'
NARROW_POLICY = 'path "secret/data/other/*" { capabilities = ["read"] }'


def value() -> str:
    return "sv-" + secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    server = OpenBaoDevServer(tmp_path_factory.mktemp("bao")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def root(bao: OpenBaoDevServer) -> Any:
    client = hvac.Client(url=bao.url, token=bao.root_token, timeout=5)
    client.sys.create_or_update_policy(name="xl-read", policy=READ_POLICY)
    client.sys.create_or_update_policy(name="narrow", policy=NARROW_POLICY)
    return client


@pytest.fixture()
def gateway(root: Any) -> dict[str, Any]:
    """A fresh secret with two versions: {path, v1, v2} (v1/v2 are the data of each version)."""
    path = f"xlerobot/gateway-{secrets.token_hex(4)}"
    v1 = {"api_key": value(), "admin_key": value()}
    v2 = {"api_key": value(), "admin_key": v1["admin_key"]}
    root.secrets.kv.v2.create_or_update_secret(path=path, secret=v1, mount_point=MOUNT)
    root.secrets.kv.v2.create_or_update_secret(path=path, secret=v2, mount_point=MOUNT)
    return {"path": path, "v1": v1, "v2": v2}


def token_with(root: Any, policy: str, ttl: str = "10m") -> str:
    token: str = root.auth.token.create(policies=[policy], ttl=ttl)["auth"]["client_token"]
    return token


def client_for(bao: OpenBaoDevServer, token: str) -> Any:
    return xv.login(bao.url, xv.Auth(token=token), timeout=5)


def assert_no_values(text: str, *values: Any) -> None:
    for secret in xv._strings(values):
        assert secret not in text, "a secret value leaked"


def error_of(call: Any) -> xv.SecretError:
    with pytest.raises(xv.SecretError) as caught:
        call()
    return caught.value


# --- references (no server) ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("secret/xlerobot/gateway#api_key", xv.Reference("secret", "xlerobot/gateway", "api_key")),
    ("vault:secret/xlerobot/gateway#api_key@3", xv.Reference("secret", "xlerobot/gateway", "api_key", 3)),
    ("vault:kv/app", xv.Reference("kv", "app")),
    ("vault:kv/app@7", xv.Reference("kv", "app", None, 7)),
    ("secret/a/b/c#key.with-dash", xv.Reference("secret", "a/b/c", "key.with-dash")),
])
def test_parse_reference(text: str, expected: xv.Reference) -> None:
    assert xv.parse_reference(text) == expected


@pytest.mark.parametrize("text", ["secret", "secret/#k", "/x#k", "secret/x#a#b", "secret/x #k",
                                  "secret/x@y", "secret/x#k@"])
def test_parse_reference_refuses_malformed(text: str) -> None:
    assert error_of(lambda: xv.parse_reference(text)).cause == "bad_reference"


def test_reference_of_the_config_layer_forms() -> None:
    assert xv.reference_of({"vault": "secret/x#k"}) == xv.Reference("secret", "x", "k")
    assert xv.reference_of("vault:secret/x#k@2") == xv.Reference("secret", "x", "k", 2)
    assert xv.reference_of({"ansible_vault_file": "files/gw.vault#api_key"}) == {"file": "files/gw.vault",
                                                                                 "key": "api_key"}
    assert xv.reference_of("plain text") is None
    assert xv.reference_of({"vault": "secret/x#k", "other": 1}) is None
    assert error_of(lambda: xv.reference_of({"vault": "secret/x"})).cause == "bad_reference"  # key required


def test_key_changes_and_rotation_name_keys_only() -> None:
    before = {"a": "1", "b": "2", "c": "3"}
    assert xv.key_changes(before, {"a": "1", "b": "x", "d": "4"}) == {
        "a": "unchanged", "b": "changed", "c": "removed", "d": "added"}
    after = xv.rotated(before, ["b"], length=16)
    assert after["a"] == "1" and after["c"] == "3" and after["b"] != "2" and len(after["b"]) >= 20
    assert xv.rotated(before, ["b"]) != xv.rotated(before, ["b"])


def test_mask_hides_known_values() -> None:
    assert xv.mask("token abcd1234 in abcd1234x", ["abcd1234"]) == "token <masked> in <masked>x"
    assert xv.mask("short ab stays", ["ab"]) == "short ab stays"


# --- KV v2 read and write ----------------------------------------------------------------------------------------


def test_read_latest_and_a_given_version(bao: OpenBaoDevServer, gateway: dict[str, Any]) -> None:
    client = client_for(bao, bao.root_token)
    latest = xv.read_kv2(client, MOUNT, gateway["path"])
    assert (latest.version, latest.data) == (2, gateway["v2"])
    first = xv.read_kv2(client, MOUNT, gateway["path"], version=1)
    assert (first.version, first.data) == (1, gateway["v1"])
    assert first.keys == ["admin_key", "api_key"] and first.created_time
    reference = xv.parse_reference(f"vault:secret/{gateway['path']}#api_key@1")
    assert xv.read_reference(client, reference) == gateway["v1"]["api_key"]
    whole = xv.read_reference(client, xv.parse_reference(f"vault:secret/{gateway['path']}"))
    assert whole == gateway["v2"]


def test_write_bumps_the_version(bao: OpenBaoDevServer, gateway: dict[str, Any]) -> None:
    client = client_for(bao, bao.root_token)
    new = {"api_key": value()}
    assert xv.write_kv2(client, MOUNT, gateway["path"], new) == 3
    assert xv.current_version(client, MOUNT, gateway["path"]) == 3
    current = xv.read_current(client, MOUNT, gateway["path"])
    assert current is not None and (current.version, current.data) == (3, new)
    assert xv.read_current(client, MOUNT, "xlerobot/never-written") is None
    assert xv.current_version(client, MOUNT, "xlerobot/never-written") is None


def test_check_and_set_refuses_a_stale_version(bao: OpenBaoDevServer, gateway: dict[str, Any]) -> None:
    client = client_for(bao, bao.root_token)
    secret = value()
    exc = error_of(lambda: xv.write_kv2(client, MOUNT, gateway["path"], {"api_key": secret}, cas=1))
    assert exc.cause == "bad_request" and "check-and-set" in str(exc)
    assert f"secret/{gateway['path']}" in str(exc)
    assert_no_values(str(exc), secret, gateway["v1"], gateway["v2"])
    assert xv.current_version(client, MOUNT, gateway["path"]) == 2


# --- auth ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def approle(root: Any) -> dict[str, str]:
    if "approle/" not in root.sys.list_auth_methods()["data"]:
        root.sys.enable_auth_method("approle")
    root.auth.approle.create_or_update_approle("xl-deploy", token_policies=["xl-read"], token_ttl="5m")  # noqa: S106
    role_id = root.auth.approle.read_role_id("xl-deploy")["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id("xl-deploy")["data"]["secret_id"]
    return {"role_id": role_id, "secret_id": secret_id}


def test_approle_login_reads_what_its_policy_allows(bao: OpenBaoDevServer, root: Any, approle: dict[str, str],
                                                    gateway: dict[str, Any]) -> None:
    client = xv.login(bao.url, xv.Auth(method="approle", **approle), timeout=5)
    assert client.token and client.token != bao.root_token
    assert xv.read_kv2(client, MOUNT, gateway["path"]).data == gateway["v2"]
    root.secrets.kv.v2.create_or_update_secret(path="other/x", secret={"k": value()}, mount_point=MOUNT)
    exc = error_of(lambda: xv.read_kv2(client, MOUNT, "other/x"))
    assert exc.cause == "permission_denied"
    exc = error_of(lambda: xv.write_kv2(client, MOUNT, gateway["path"], {"api_key": value()}))
    assert exc.cause == "permission_denied"


def test_approle_with_a_wrong_secret_id_is_refused(bao: OpenBaoDevServer, approle: dict[str, str]) -> None:
    wrong = secrets.token_hex(18)
    exc = error_of(lambda: xv.login(bao.url, xv.Auth(method="approle", role_id=approle["role_id"],
                                                     secret_id=wrong), timeout=5))
    assert exc.cause == "login_failed"
    assert "auth/approle" in str(exc) and "invalid role or secret ID" in str(exc)
    assert_no_values(str(exc), wrong, approle["secret_id"])


class _TokenReviewStub(http.server.BaseHTTPRequestHandler):
    """The one Kubernetes API call Vault's kubernetes auth makes: a TokenReview that accepts `ACCOUNT`."""

    reviews: list[dict[str, Any]] = []

    def log_message(self, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).reviews.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                   "token": body.get("spec", {}).get("token")})
        answer = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": {
            "authenticated": True, "user": {"username": f"system:serviceaccount:{K8S_NAMESPACE}:{K8S_ACCOUNT}",
                                            "uid": K8S_UID, "groups": []}}}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)


K8S_NAMESPACE, K8S_ACCOUNT, K8S_UID = "xlerobot", "xl-deploy", "0c0ffee0-uid"


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _service_account_jwt() -> str:
    """A token shaped like a pod's; the stub TokenReview is what vouches for it, as the API server would."""
    claims = {"iss": "kubernetes/serviceaccount", "sub": f"system:serviceaccount:{K8S_NAMESPACE}:{K8S_ACCOUNT}",
              "kubernetes.io/serviceaccount/namespace": K8S_NAMESPACE,
              "kubernetes.io/serviceaccount/service-account.name": K8S_ACCOUNT,
              "kubernetes.io/serviceaccount/service-account.uid": K8S_UID}
    return ".".join((_b64({"alg": "RS256", "kid": "stub"}), _b64(claims), _b64({"nonce": secrets.token_hex(16)})))


def _ca_pem() -> str:
    """Vault wants a CA for the Kubernetes API even over plain HTTP; any self-signed one does."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stub-kubernetes-ca")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def test_kubernetes_login(bao: OpenBaoDevServer, root: Any, gateway: dict[str, Any], tmp_path: Path) -> None:
    """Real kubernetes auth in OpenBao; only the cluster's TokenReview API is a stub on 127.0.0.1."""
    _TokenReviewStub.reviews = []
    api = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenReviewStub)
    thread = threading.Thread(target=api.serve_forever, daemon=True)
    thread.start()
    try:
        reviewer = secrets.token_hex(12)
        root.sys.enable_auth_method("kubernetes", path="k8s-prod")
        root.write_data("auth/k8s-prod/config", data={
            "kubernetes_host": f"http://127.0.0.1:{api.server_address[1]}", "kubernetes_ca_cert": _ca_pem(),
            "token_reviewer_jwt": reviewer, "disable_local_ca_jwt": True})
        root.write_data("auth/k8s-prod/role/xl-deploy", data={
            "bound_service_account_names": K8S_ACCOUNT, "bound_service_account_namespaces": K8S_NAMESPACE,
            "token_policies": "xl-read", "token_ttl": "5m"})
        root.write_data("auth/k8s-prod/role/elsewhere", data={
            "bound_service_account_names": K8S_ACCOUNT, "bound_service_account_namespaces": "other",
            "token_policies": "xl-read"})
        jwt = _service_account_jwt()
        jwt_file = tmp_path / "token"
        jwt_file.write_text(jwt + "\n")
        jwt_file.chmod(0o600)

        client = xv.login(bao.url, xv.Auth(method="kubernetes", role="xl-deploy", jwt_file=str(jwt_file),
                                           mount_point="k8s-prod"), timeout=5)
        assert client.auth.token.lookup_self()["data"]["meta"]["service_account_name"] == K8S_ACCOUNT
        assert xv.read_kv2(client, MOUNT, gateway["path"]).data == gateway["v2"]
        assert _TokenReviewStub.reviews == [{"path": "/apis/authentication.k8s.io/v1/tokenreviews",
                                             "authorization": f"Bearer {reviewer}", "token": jwt}]

        exc = error_of(lambda: xv.login(bao.url, xv.Auth(method="kubernetes", role="elsewhere", jwt=jwt,
                                                         mount_point="k8s-prod"), timeout=5))
        assert exc.cause == "login_failed" and f"{bao.url} auth/k8s-prod: login refused" in str(exc)
        assert_no_values(str(exc), jwt, reviewer)
        missing = str(tmp_path / "absent")
        exc = error_of(lambda: xv.login(bao.url, xv.Auth(method="kubernetes", role="r", jwt_file=missing)))
        assert exc.cause == "login_failed" and missing in str(exc)
    finally:
        api.shutdown()
        api.server_close()


def test_auth_arguments_are_checked_before_any_request(bao: OpenBaoDevServer) -> None:
    assert error_of(lambda: xv.login(bao.url, xv.Auth(token=None))).cause == "token_invalid"
    assert error_of(lambda: xv.login(bao.url, xv.Auth(method="approle", role_id="r"))).cause == "login_failed"
    assert error_of(lambda: xv.login(bao.url, xv.Auth(method="kubernetes"))).cause == "login_failed"
    with pytest.raises(ValueError, match="ldap"):
        xv.login(bao.url, xv.Auth(method="ldap"))


# --- faults: every message names the path and the cause, never a value ----------------------------------------


def test_permission_denied_for_a_narrow_policy(bao: OpenBaoDevServer, root: Any, gateway: dict[str, Any]) -> None:
    token = token_with(root, "narrow")
    exc = error_of(lambda: xv.read_kv2(client_for(bao, token), MOUNT, gateway["path"]))
    assert exc.cause == "permission_denied"
    assert f"{bao.url} secret/{gateway['path']}: permission denied" in str(exc)
    assert_no_values(str(exc), token, gateway["v1"], gateway["v2"])


def test_path_version_and_key_missing(bao: OpenBaoDevServer, gateway: dict[str, Any]) -> None:
    client = client_for(bao, bao.root_token)
    exc = error_of(lambda: xv.read_kv2(client, MOUNT, "xlerobot/absent"))
    assert exc.cause == "path_missing" and "secret/xlerobot/absent: no secret at this path" in str(exc)
    exc = error_of(lambda: xv.read_kv2(client, MOUNT, gateway["path"], version=7))
    assert exc.cause == "version_missing" and "version 7" in str(exc) and "current version 2" in str(exc)
    exc = error_of(lambda: xv.read_kv2(client, "nomount", "x"))
    assert exc.cause == "path_missing" and "no secrets engine is mounted there" in str(exc)
    reference = xv.parse_reference(f"secret/{gateway['path']}#nokey")
    exc = error_of(lambda: xv.read_reference(client, reference))
    assert exc.cause == "key_missing"
    assert "'nokey'" in str(exc) and "admin_key, api_key" in str(exc)
    assert_no_values(str(exc), gateway["v1"], gateway["v2"])


def test_invalid_and_expired_tokens(bao: OpenBaoDevServer, root: Any, gateway: dict[str, Any]) -> None:
    bogus = "s." + secrets.token_hex(12)
    exc = error_of(lambda: xv.read_kv2(client_for(bao, bogus), MOUNT, gateway["path"]))
    assert exc.cause == "token_invalid" and "invalid or expired" in str(exc)
    assert_no_values(str(exc), bogus)
    short = token_with(root, "xl-read", ttl="2s")
    client = client_for(bao, short)
    assert xv.read_kv2(client, MOUNT, gateway["path"]).version == 2  # valid while it lives
    time.sleep(3.5)
    exc = error_of(lambda: xv.read_kv2(client, MOUNT, gateway["path"]))
    assert exc.cause == "token_invalid"
    assert_no_values(str(exc), short, gateway["v2"])


def test_unreachable(gateway: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    token = secrets.token_hex(16)
    exc = error_of(lambda: xv.read_kv2(xv.login(url, xv.Auth(token=token), timeout=2), MOUNT, gateway["path"]))
    assert exc.cause == "unreachable"
    assert str(exc) == f"{url} secret/{gateway['path']}: server unreachable: connection refused"


def test_sealed(tmp_path: Path) -> None:
    server = OpenBaoDevServer(tmp_path).start()
    try:
        root = hvac.Client(url=server.url, token=server.root_token, timeout=5)
        secret = value()
        root.secrets.kv.v2.create_or_update_secret(path="xlerobot/s", secret={"k": secret}, mount_point=MOUNT)
        client = client_for(server, server.root_token)
        assert xv.read_kv2(client, MOUNT, "xlerobot/s").data == {"k": secret}
        root.sys.seal()
        assert server.health() == 503
        exc = error_of(lambda: xv.read_kv2(client, MOUNT, "xlerobot/s"))
        assert exc.cause == "sealed" and f"{server.url} secret/xlerobot/s: the server is sealed" in str(exc)
        assert_no_values(str(exc), secret, server.root_token)
    finally:
        server.stop()
    assert server.process is not None and server.process.poll() is not None


# --- resolving the configuration layer's references ---------------------------------------------------------------


def test_resolver_replaces_every_reference_once(bao: OpenBaoDevServer, gateway: dict[str, Any]) -> None:
    made = []

    def factory() -> Any:
        made.append(1)
        return client_for(bao, bao.root_token)

    path = gateway["path"]
    tree = {
        "gateway": {"auth": {"enabled": True, "api_keys": [{"vault": f"secret/{path}#api_key"},
                                                           f"vault:secret/{path}#api_key@1"]}},
        "admin": {"password": {"vault": f"secret/{path}#admin_key"}},
        "whole": f"vault:secret/{path}",
        "replicas": 2,
    }
    original = json.loads(json.dumps(tree))
    resolved = xv.Resolver(client=factory).resolve(tree)
    assert resolved == {
        "gateway": {"auth": {"enabled": True, "api_keys": [gateway["v2"]["api_key"], gateway["v1"]["api_key"]]}},
        "admin": {"password": gateway["v2"]["admin_key"]},
        "whole": gateway["v2"],
        "replicas": 2,
    }
    assert tree == original and made == [1]
    assert xv.Resolver().resolve({"a": [1, "plain"]}) == {"a": [1, "plain"]}  # no reference: no server needed
    exc = error_of(lambda: xv.Resolver().resolve({"a": "vault:secret/x#k"}))
    assert exc.cause == "bad_reference"


# --- ansible-vault files in the repository ------------------------------------------------------------------------


def _encrypt(path: Path, env: dict[str, str]) -> None:
    proc = subprocess.run([str(VENV_BIN / "ansible-vault"), "encrypt", "--vault-password-file",
                           str(REPO / "scripts" / "vault-password.sh"), str(path)],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr


def test_ansible_vault_file_reference(tmp_path: Path) -> None:
    password = secrets.token_urlsafe(24)
    password_file = tmp_path / "vault-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    env = {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "XL_VAULT_PASSWORD_FILE": str(password_file)}
    config_dir = tmp_path / "config"
    (config_dir / "secrets" / "files").mkdir(parents=True)
    token, api_key = value(), value()
    single = config_dir / "secrets" / "files" / "registry.vault"
    single.write_text(token + "\n")
    several = config_dir / "secrets" / "files" / "gateway.vault"
    several.write_text(f"api_key: {api_key}\nadmin_key: other\n")
    for path in (single, several):
        path.chmod(0o600)
        _encrypt(path, env)
        assert token not in path.read_text() and api_key not in path.read_text()

    # The same password from each source: the client script, the plain file, the variable.
    script = str(REPO / "scripts" / "vault-password.sh")
    script_env = {"PATH": env["PATH"], "ANSIBLE_VAULT_PASSWORD_FILE": script, "XL_VAULT_PASSWORD": password}
    for environ in (env, script_env, {"XL_VAULT_PASSWORD": password}):
        assert xv.vault_password(environ=environ) == password.encode()
    resolver = xv.Resolver(base_dir=str(config_dir), password=lambda: xv.vault_password(environ=env))
    tree = {"registry": {"token": {"ansible_vault_file": "secrets/files/registry.vault"}},
            "gateway": {"api_key": {"ansible_vault_file": "secrets/files/gateway.vault#api_key"}}}
    assert resolver.resolve(tree) == {"registry": {"token": token}, "gateway": {"api_key": api_key}}

    wrong = secrets.token_urlsafe(24)
    exc = error_of(lambda: xv.Resolver(base_dir=str(config_dir), password=lambda: wrong.encode()).resolve(tree))
    assert exc.cause == "decrypt_failed" and str(single) in str(exc) and "wrong ansible-vault password" in str(exc)
    assert_no_values(str(exc), wrong, password, token)
    exc = error_of(lambda: xv.vault_password(environ={}))
    assert exc.cause == "password_missing" and "XL_VAULT_PASSWORD_FILE" in str(exc)
    exc = error_of(lambda: xv.vault_password(environ={"PATH": env["PATH"], "ANSIBLE_VAULT_PASSWORD_FILE": script}))
    assert exc.cause == "password_missing" and "exited 1" in str(exc)
    plain = config_dir / "plain.yml"
    plain.write_text("k: v\n")
    assert error_of(lambda: xv.decrypt_file(str(plain), password.encode())).cause == "decrypt_failed"
    reference = {"file": "secrets/files/gateway.vault", "key": "nokey"}
    exc = error_of(lambda: resolver.value(reference))
    assert exc.cause == "key_missing" and "admin_key, api_key" in str(exc)
    assert_no_values(str(exc), api_key)


# --- the vault_secret module --------------------------------------------------------------------------------------


def run_vault_secret(bao: OpenBaoDevServer, token: str, args: dict[str, Any], *options: str) -> dict[str, Any]:
    return ansible_cli.run_module("vault_secret", {"url": bao.url, "token": token, **args}, *options,
                                  python=ansible_cli.CONTROLLER_PYTHON)


def test_module_present_is_idempotent_and_check_mode_writes_nothing(bao: OpenBaoDevServer,
                                                                    gateway: dict[str, Any]) -> None:
    client = client_for(bao, bao.root_token)
    new = {"api_key": value(), "admin_key": gateway["v2"]["admin_key"]}
    args = {"path": gateway["path"], "state": "present", "data": new}
    checked = run_vault_secret(bao, bao.root_token, args, "--check", "--diff")
    assert checked["changed"] is True and (checked["previous_version"], checked["version"]) == (2, 3)
    assert checked["changes"] == {"admin_key": "unchanged", "api_key": "changed"}
    assert checked["diff"] == {"before": {"version": 2, "keys": ["admin_key", "api_key"]},
                               "after": {"version": 3, "keys": ["admin_key", "api_key"], "changed_keys": ["api_key"]}}
    assert xv.current_version(client, MOUNT, gateway["path"]) == 2
    written = run_vault_secret(bao, bao.root_token, args)
    assert written["changed"] is True and written["version"] == 3
    assert xv.read_kv2(client, MOUNT, gateway["path"]).data == new
    again = run_vault_secret(bao, bao.root_token, args)
    assert again["changed"] is False and again["version"] == 3
    for result in (checked, written, again):
        assert_no_values(json.dumps(result), new, gateway["v1"], gateway["v2"], bao.root_token)


def test_module_read_and_rotate(bao: OpenBaoDevServer, gateway: dict[str, Any]) -> None:
    client = client_for(bao, bao.root_token)
    read = run_vault_secret(bao, bao.root_token, {"path": gateway["path"], "version": 1})
    assert (read["changed"], read["version"], read["keys"]) == (False, 1, ["admin_key", "api_key"])
    assert "data" not in read and "secret" not in read
    rotate = {"path": gateway["path"], "state": "rotated", "rotate_keys": ["api_key"], "cas": 2}
    checked = run_vault_secret(bao, bao.root_token, rotate, "--check")
    assert checked["changed"] is True and checked["version"] == 3
    assert xv.current_version(client, MOUNT, gateway["path"]) == 2
    rotated = run_vault_secret(bao, bao.root_token, rotate)
    assert rotated["changed"] is True and rotated["version"] == 3
    latest = xv.read_kv2(client, MOUNT, gateway["path"]).data
    assert latest["admin_key"] == gateway["v2"]["admin_key"] and latest["api_key"] != gateway["v2"]["api_key"]
    assert_no_values(json.dumps([read, checked, rotated]), latest, gateway["v1"], gateway["v2"])
    stale = run_vault_secret(bao, bao.root_token, rotate)  # cas 2, but the latest is 3 now
    assert stale.get("failed") and "check-and-set: the latest version is 3, not 2" in stale["msg"]


def test_module_reads_the_connection_awx_credentials_inject(bao: OpenBaoDevServer, gateway: dict[str, Any],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # AWX's OpenBao/Vault credential types inject community.hashi_vault's variables, nothing else.
    for name in ("VAULT_ADDR", "BAO_ADDR", "VAULT_TOKEN", "BAO_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANSIBLE_HASHI_VAULT_URL", bao.url)
    monkeypatch.setenv("ANSIBLE_HASHI_VAULT_TOKEN", bao.root_token)
    monkeypatch.setenv("ANSIBLE_HASHI_VAULT_AUTH_METHOD", "token")
    read = ansible_cli.run_module("vault_secret", {"path": gateway["path"]}, python=ansible_cli.CONTROLLER_PYTHON)
    assert (read.get("failed"), read["version"], read["keys"]) == (None, 2, ["admin_key", "api_key"]), read


def test_a_whole_secret_at_a_pinned_version(bao: OpenBaoDevServer, gateway: dict[str, Any]) -> None:
    resolver = xv.Resolver(client=lambda: client_for(bao, bao.root_token))
    assert resolver.value(xv.parse_reference(f"vault:secret/{gateway['path']}@1")) == gateway["v1"]
    assert resolver.value(xv.parse_reference(f"vault:secret/{gateway['path']}")) == gateway["v2"]


def test_module_failures_name_path_and_cause(bao: OpenBaoDevServer, root: Any, gateway: dict[str, Any]) -> None:
    missing = run_vault_secret(bao, bao.root_token, {"path": "xlerobot/absent"})
    assert missing["failed"] and missing["cause"] == "path_missing"
    assert "secret/xlerobot/absent: no secret at this path" in missing["msg"]
    token = token_with(root, "narrow")
    secret = value()
    denied = run_vault_secret(bao, token, {"path": gateway["path"], "state": "present", "data": {"api_key": secret}})
    assert denied["failed"] and denied["cause"] == "permission_denied"
    assert_no_values(json.dumps(denied), secret, token, gateway["v2"])


# --- a playbook: the lookup, the module, and no value in the output at -vvv -----------------------------------------


PLAYBOOK = """\
- name: Secrets through xl_secret and vault_secret
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  tasks:
    - name: Resolve references of the configuration layer
      ansible.builtin.set_fact:
        api_key: "{{ lookup('xl_secret', 'secret/PATH#api_key') }}"
        old_key: "{{ lookup('xl_secret', {'vault': 'secret/PATH#api_key@1'}) }}"
        whole: "{{ lookup('xl_secret', 'vault:secret/PATH') }}"
        kept: "{{ lookup('xl_secret', {'ansible_vault_file': 'kept.vault'}) }}"
      no_log: true

    - name: The same secret through community.hashi_vault
      ansible.builtin.set_fact:
        api_key_hv: "{{ lookup('community.hashi_vault.vault_kv2_get', 'PATH', url=lookup('env', 'VAULT_ADDR'),
                        token=lookup('env', 'VAULT_TOKEN')).secret.api_key }}"
      no_log: true

    - name: Compare with what the test wrote (hashes only)
      ansible.builtin.assert:
        that:
          - api_key | hash('sha256') == 'API_HASH'
          - old_key | hash('sha256') == 'OLD_HASH'
          - whole.admin_key | hash('sha256') == 'ADMIN_HASH'
          - kept | hash('sha256') == 'KEPT_HASH'
          - api_key_hv == api_key
        quiet: true
      no_log: true

    - name: Write a new version
      vault_secret:
        path: PATH
        state: present
        data:
          api_key: "{{ new_key }}"
          admin_key: "{{ whole.admin_key }}"
      diff: true
      register: written

    - name: Report the versions
      ansible.builtin.debug:
        msg: "versions {{ written.previous_version }} -> {{ written.version }}, api_key {{ written.changes.api_key }},
          admin_key {{ written.changes.admin_key }}"

    - name: A missing key fails with its name
      ansible.builtin.debug:
        msg: "{{ lookup('xl_secret', 'secret/PATH#nokey') }}"
      ignore_errors: true

    - name: A missing path fails with its name
      vault_secret:
        path: xlerobot/absent
      ignore_errors: true
"""


def test_playbook_at_vvv_shows_no_secret_value(bao: OpenBaoDevServer, gateway: dict[str, Any],
                                               tmp_path: Path) -> None:
    password = secrets.token_urlsafe(24)
    kept_value, new_key = value(), value()
    kept = tmp_path / "kept.vault"
    kept.write_text(kept_value + "\n")
    kept.chmod(0o600)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_HOME": str(tmp_path / ".ansible"),
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1", "XL_VAULT_PASSWORD": password,
           "VAULT_ADDR": bao.url, "VAULT_TOKEN": bao.root_token}
    _encrypt(kept, env)

    def sha(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()

    playbook = tmp_path / "secrets.yml"
    text = PLAYBOOK.replace("PATH", gateway["path"]).replace("API_HASH", sha(gateway["v2"]["api_key"]))
    text = text.replace("OLD_HASH", sha(gateway["v1"]["api_key"]))
    text = text.replace("ADMIN_HASH", sha(gateway["v2"]["admin_key"]))
    playbook.write_text(text.replace("KEPT_HASH", sha(kept_value)))
    proc = subprocess.run([str(VENV_BIN / "ansible-playbook"), "-vvv", "-i", "localhost,", str(playbook),
                           "-e", f"new_key={new_key}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, textwrap.shorten(xv.mask(output, [new_key, bao.root_token]), 4000)
    recap = re.search(r"^localhost\s+:.*$", output, re.MULTILINE)
    assert recap and recap.group().split()[2:] == ["ok=7", "changed=1", "unreachable=0", "failed=0", "skipped=0",
                                                   "rescued=0", "ignored=2"], recap
    assert "versions 2 -> 3, api_key changed, admin_key unchanged" in output, \
        [line for line in output.splitlines() if "versions" in line]
    assert "key 'nokey' not in version 3 (keys: admin_key, api_key)" in output
    assert "secret/xlerobot/absent: no secret at this path" in output
    assert xv.read_kv2(client_for(bao, bao.root_token), MOUNT, gateway["path"]).data["api_key"] == new_key
    assert_no_values(output, gateway["v1"], gateway["v2"], kept_value, password, bao.root_token)
    # -e puts new_key on the command line, which -vvv does not echo; the module's no_log option masks it too.
    assert_no_values(output, new_key)
