"""The gateway's front door: TLS (self-signed here), API keys read from OpenBao and kept only as hashes, a
per-client rate limit, and bad settings or an unreachable secret store refused before anything changes. A second
HAProxy (env-secure.yml) in front of the test environment's speech recognition."""

from __future__ import annotations

import hashlib
import json
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests
import xl_haproxy

from tests.integration.conftest import GOOD, REPO, PlaybookRun, playbook
from tests.support.openbao import OpenBaoDevServer, closed_port

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

ENV_SECURE = Path(__file__).with_name("env-secure.yml")
RUN_DIR = REPO / ".run" / "secure"
URL = "https://127.0.0.1:18380"
CERT = RUN_DIR / "haproxy" / "tls" / "selfsigned.pem"
CLIENTS = ("robot-kitchen", "dashboard")
KEYS_PATH = "xlerobot/gateway-api-keys"


def _secure(keys_file: Path, *extra: str) -> PlaybookRun:
    return playbook("gateway.yml", "-e", f"@{ENV_SECURE}", "-e", f"@{keys_file}", *extra)


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {client: secrets.token_urlsafe(24) for client in CLIENTS}


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Iterator[OpenBaoDevServer]:
    server = OpenBaoDevServer(tmp_path_factory.mktemp("bao")).start()
    client = hvac.Client(url=server.url, token=server.root_token, timeout=5)
    client.secrets.kv.v2.create_or_update_secret(path=KEYS_PATH, secret=keys, mount_point="secret")
    yield server
    server.stop()


def _vars_file(directory: Path, name: str, content: dict[str, object]) -> Path:
    path = directory / name
    path.write_text(json.dumps(content))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory, bao: OpenBaoDevServer) -> Path:
    # The keys come from the secret store through the xl_secret lookup, the way an inventory wires them.
    return _vars_file(tmp_path_factory.mktemp("secure"), "keys.json", {
        "gateway_api_keys_secret": f"vault:secret/{KEYS_PATH}",
        "xl_vault_url": bao.url, "xl_vault_token": bao.root_token})


@pytest.fixture(scope="module")
def first_run(keys_file: Path) -> Iterator[PlaybookRun]:
    live = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "services=asr")
    assert live.returncode == 0, live.output[-3000:]
    run = _secure(keys_file)
    assert run.returncode == 0, run.output[-4000:]
    # A new gateway starts with every server at weight 0; send this one's speech recognition traffic to whichever
    # colour of the test environment is up.
    socket = str(RUN_DIR / "haproxy" / "admin.sock")
    for server in ("asr_blue", "asr_green"):
        xl_haproxy.send_command(socket, f"set weight be_asr/{server} 100")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(server["up"] for server in xl_haproxy.backend_state(socket, "be_asr").values()):
            break
        time.sleep(0.5)
    # The role writes live weights back into its configuration: once, here, so later runs have nothing to do.
    persisted = _secure(keys_file)
    assert persisted.returncode == 0, persisted.output[-3000:]
    yield run
    playbook("teardown.yml", "-e", f"@{ENV_SECURE}", "-e", f"@{keys_file}")


def _transcribe(clip: Path, key: str) -> requests.Response:
    with clip.open("rb") as audio:
        return requests.post(f"{URL}/v1/audio/transcriptions", files={"file": audio},
                             headers={"Authorization": f"Bearer {key}"}, verify=str(CERT), timeout=60)


def test_only_a_valid_key_over_tls_reaches_the_service(first_run: PlaybookRun, keys: dict[str, str],
                                                      golden_clips: dict[str, Path]) -> None:
    clip = golden_clips["Turn off the radio in the living room"]
    # Refused before its body is read (HAProxy answers and closes; an unauthenticated upload is never taken in),
    # so the refusals are asked for with a request without one.
    missing = requests.get(f"{URL}/v1/models", verify=str(CERT), timeout=10)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.get(f"{URL}/v1/models", headers={"Authorization": f"Bearer not-{keys['dashboard']}"},
                         verify=str(CERT), timeout=10)
    assert wrong.status_code == 401
    answered = _transcribe(clip, keys["robot-kitchen"])
    assert answered.status_code == 200, answered.text[:300]
    assert "radio" in answered.json()["text"].lower()
    assert answered.headers["X-Served-By"].startswith(f"asr/{GOOD}/")
    assert answered.headers["Strict-Transport-Security"].startswith("max-age=")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(URL.replace("https", "http") + "/v1/models", timeout=10)


def test_keys_are_kept_only_as_hashes_and_never_printed(first_run: PlaybookRun, keys: dict[str, str]) -> None:
    key_map = RUN_DIR / "haproxy" / "api_keys.map"
    assert stat.S_IMODE(key_map.stat().st_mode) == 0o600
    text = key_map.read_text()
    for client, key in keys.items():
        assert f"{hashlib.sha256(key.encode()).hexdigest()} {client}" in text
        assert key not in text
        assert key not in first_run.output
        assert key not in (RUN_DIR / "haproxy" / "haproxy.cfg").read_text()
    assert stat.S_IMODE((RUN_DIR / "haproxy" / "tls" / "selfsigned.pem.key").stat().st_mode) == 0o600


def test_each_client_has_its_own_rate_limit(first_run: PlaybookRun, keys: dict[str, str]) -> None:
    def ask(client: str) -> requests.Response:
        return requests.get(f"{URL}/nowhere", headers={"Authorization": f"Bearer {keys[client]}"},
                            verify=str(CERT), timeout=10)

    statuses = [ask("dashboard").status_code for _ in range(12)]
    # Ten in any 10 s window (1 request/s over 10 s); the rest are refused until the window moves on.
    assert statuses[:10] == [404] * 10 and statuses[10:] == [429, 429], statuses
    limited = ask("dashboard")
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "10"
    assert "rate limit" in limited.json()["error"]["message"]
    assert ask("robot-kitchen").status_code == 404, "another client's budget is its own"


def test_a_second_run_changes_nothing_and_even_at_vvv_prints_no_key(first_run: PlaybookRun, keys_file: Path,
                                                                     keys: dict[str, str]) -> None:
    again = _secure(keys_file, "-vvv")
    assert again.returncode == 0, again.output[-3000:]
    assert again.changed == 0, again.output[-3000:]
    assert "Keep the keys for this run" in again.output and "ESTABLISH LOCAL CONNECTION" in again.output
    for key in keys.values():
        assert key not in again.output


def test_bad_security_settings_stop_before_anything_changes(first_run: PlaybookRun, keys: dict[str, str],
                                                            keys_file: Path, tmp_path: Path) -> None:
    config = RUN_DIR / "haproxy" / "haproxy.cfg"
    before = config.read_text(), (RUN_DIR / "haproxy" / "api_keys.map").read_text()
    missing = _secure(keys_file, "-e", "gateway_tls_certificate_file=/nonexistent/gateway.pem")
    assert missing.returncode != 0
    assert "gateway_tls_certificate_file /nonexistent/gateway.pem is not a readable PEM certificate" in missing.output
    short = _vars_file(tmp_path, "short.json", {"gateway_api_keys": {**keys, "intruder": "tooShort-7Qx"}})
    weak = _secure(short)
    assert weak.returncode != 0
    assert "gateway_api_keys.intruder: the key must be a string of 16 or more characters" in weak.output
    assert "tooShort-7Qx" not in weak.output
    none = _secure(keys_file, "-e", '{"gateway_api_keys": {}}')
    assert none.returncode != 0 and "gateway_api_keys is empty" in none.output
    unreachable = f"http://127.0.0.1:{closed_port()}"
    away = _secure(keys_file, "-e", f"xl_vault_url={unreachable}")
    assert away.returncode != 0
    assert unreachable in away.output and "unreachable" in away.output, away.output[-2000:]
    assert (config.read_text(), (RUN_DIR / "haproxy" / "api_keys.map").read_text()) == before
    still = requests.get(f"{URL}/nowhere", verify=str(CERT), timeout=10)
    assert still.status_code == 401, "the running gateway kept its settings"


def _latest_key(bao: OpenBaoDevServer, client: str) -> str:
    store = hvac.Client(url=bao.url, token=bao.root_token, timeout=5)
    return store.secrets.kv.v2.read_secret_version(path=KEYS_PATH, mount_point="secret",
                                                   raise_on_deleted_version=True)["data"]["data"][client]


def test_rotating_a_key_drops_no_request_of_a_client_that_switches(first_run: PlaybookRun, keys: dict[str, str],
                                                                   keys_file: Path, bao: OpenBaoDevServer) -> None:
    old_key, rotated = keys["robot-kitchen"], ["-e", '{"gateway_rotate_clients": ["robot-kitchen"]}']
    version_before = hvac.Client(url=bao.url, token=bao.root_token).secrets.kv.v2.read_secret_metadata(
        path=KEYS_PATH, mount_point="secret")["data"]["current_version"]
    planned = playbook("rotate_secrets.yml", "-e", f"@{ENV_SECURE}", "-e", f"@{keys_file}", *rotated, "--check")
    assert planned.returncode == 0, planned.output[-3000:]
    assert _latest_key(bao, "robot-kitchen") == old_key, "check mode wrote a new version"

    # The client fetches its key from the store before every request, as a client told to switch would; it stays
    # under the secure gateway's rate limit (10 requests in any 10 s).
    statuses: list[tuple[str, int]] = []
    stop = threading.Event()

    def switching_client() -> None:
        while not stop.is_set():
            key = _latest_key(bao, "robot-kitchen")
            answer = requests.get(f"{URL}/nowhere", headers={"Authorization": f"Bearer {key}"},
                                  verify=str(CERT), timeout=10)
            statuses.append((key, answer.status_code))
            stop.wait(1.5)

    thread = threading.Thread(target=switching_client)
    thread.start()
    try:
        run = playbook("rotate_secrets.yml", "-e", f"@{ENV_SECURE}", "-e", f"@{keys_file}", *rotated,
                       "-e", "gateway_rotate_grace_s=8")
        time.sleep(2)
    finally:
        stop.set()
        thread.join()
    assert run.returncode == 0, run.output[-4000:]
    new_key = _latest_key(bao, "robot-kitchen")
    assert new_key != old_key and _latest_key(bao, "dashboard") == keys["dashboard"], "only the named client rotated"
    assert f"version {version_before} -> {version_before + 1}" in run.output
    # 404: past the key check (no such path). Every request of the switching client got there, with either key.
    assert [status for _, status in statuses] == [404] * len(statuses), statuses
    assert {key for key, _ in statuses} == {old_key, new_key}, "the client switched during the run"

    def status_with(key: str) -> int:
        return requests.get(f"{URL}/nowhere", headers={"Authorization": f"Bearer {key}"}, verify=str(CERT),
                            timeout=10).status_code

    assert status_with(old_key) == 401, "the old key is refused after the grace period"
    assert status_with(new_key) == 404 and status_with(keys["dashboard"]) == 404
    key_map = RUN_DIR / "haproxy" / "api_keys.map"
    assert stat.S_IMODE(key_map.stat().st_mode) == 0o600
    text = key_map.read_text()
    assert hashlib.sha256(new_key.encode()).hexdigest() in text
    assert hashlib.sha256(old_key.encode()).hexdigest() not in text
    for secret in (old_key, new_key, keys["dashboard"], bao.root_token):
        assert secret not in run.output and secret not in planned.output and secret not in text
    # The role, run again, reads the new version and finds the gateway as the rotation left it.
    again = _secure(keys_file)
    assert again.returncode == 0 and again.changed == 0, again.output[-3000:]
