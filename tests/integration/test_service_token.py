"""Rotation of the services' own token (the key of the gateway client xlerobot-internal, release_gateway_api_key):
a new version in OpenBao, the live release moved onto instances holding it while both keys are accepted, then the
old key refused, with no request lost by a client of the gateway and no secret printed. A gateway with API keys
and its own speech recognition instances (env-token.yml) beside the test environment."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
import requests

from tests.integration.conftest import GOOD, REPO, PlaybookRun, playbook
from tests.support.loadgen import LoadGenerator
from tests.support.openbao import OpenBaoDevServer

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

ENV_TOKEN = Path(__file__).with_name("env-token.yml")
GATEWAY = "http://127.0.0.1:18480"
KEYS_PATH = "xlerobot/gateway-api-keys"
TOKEN_CLIENT = "xlerobot-internal"  # noqa: S105 - a client name, not a secret


def _run(name: str, vars_file: Path, *extra: str) -> PlaybookRun:
    return playbook(name, "-e", f"@{ENV_TOKEN}", "-e", f"@{vars_file}", *extra)


def _store(bao: OpenBaoDevServer) -> hvac.Client:
    return hvac.Client(url=bao.url, token=bao.root_token, timeout=5)


def _latest(bao: OpenBaoDevServer) -> tuple[int, dict[str, str]]:
    read = _store(bao).secrets.kv.v2.read_secret_version(path=KEYS_PATH, mount_point="secret",
                                                          raise_on_deleted_version=True)["data"]
    return read["metadata"]["version"], read["data"]


def _token_of(container: str) -> str:
    env = json.loads(subprocess.run(["docker", "inspect", "-f", "{{json .Config.Env}}", container], check=True,
                                    capture_output=True, text=True).stdout)
    return next((entry.split("=", 1)[1] for entry in env if entry.startswith("XL_GATEWAY_API_KEY=")), "")


def _served_by(key: str) -> str:
    answer = requests.post(f"{GATEWAY}/v1/audio/transcriptions", files={"file": ("a.wav", b"", "audio/wav")},
                           headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return answer.headers.get("X-Served-By", "")


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {TOKEN_CLIENT: secrets.token_urlsafe(24), "robot-kitchen": secrets.token_urlsafe(24)}


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Iterator[OpenBaoDevServer]:
    server = OpenBaoDevServer(tmp_path_factory.mktemp("bao")).start()
    _store(server).secrets.kv.v2.create_or_update_secret(path=KEYS_PATH, secret=keys, mount_point="secret")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def store_vars(tmp_path_factory: pytest.TempPathFactory, bao: OpenBaoDevServer) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("token") / "store.json"
    path.write_text(json.dumps({"gateway_api_keys_secret": f"vault:secret/{KEYS_PATH}",
                                "xl_vault_url": bao.url, "xl_vault_token": bao.root_token}))
    path.chmod(0o600)
    gateway = _run("gateway.yml", path)
    assert gateway.returncode == 0, gateway.output[-4000:]
    deploy = _run("deploy.yml", path, "-e", "strategy=bluegreen", "-e", f"version={GOOD}")
    assert deploy.returncode == 0, deploy.output[-4000:]
    yield path
    _run("teardown.yml", path)


def test_a_token_not_read_from_the_key_secret_stops_the_rotation(store_vars: Path, bao: OpenBaoDevServer,
                                                                 tmp_path: Path) -> None:
    version, before = _latest(bao)
    literal = tmp_path / "literal.json"
    literal.write_text(json.dumps({"release_gateway_api_key": secrets.token_urlsafe(24)}))
    literal.chmod(0o600)
    refused = _run("rotate_secrets.yml", store_vars, "-e", f"@{literal}",
                   "-e", json.dumps({"gateway_rotate_clients": [TOKEN_CLIENT]}))
    assert refused.returncode != 0
    said = " ".join(refused.output.split())
    assert f"release_gateway_api_key is not the key of client {TOKEN_CLIENT}" in said, refused.output[-3000:]
    assert "Nothing was changed" in said
    assert _latest(bao) == (version, before), "no new version was written"


def test_rotating_the_service_token_moves_the_live_release_onto_it(store_vars: Path, bao: OpenBaoDevServer,
                                                                   keys: dict[str, str],
                                                                   golden_clips: dict[str, Path]) -> None:
    old_token, client_key = keys[TOKEN_CLIENT], keys["robot-kitchen"]
    colour = _served_by(client_key).split("/")[-1]
    assert colour in ("blue", "green")
    assert _token_of(f"xlk-asr-{colour}") == old_token, "the deploy gave the instance the token from the store"
    version_before, _ = _latest(bao)

    load = LoadGenerator(f"{GATEWAY}/v1/audio/transcriptions", golden_clips["Turn off the radio in the living room"],
                         concurrency=2, headers={"Authorization": f"Bearer {client_key}"}).start()
    try:
        run = _run("rotate_secrets.yml", store_vars, "-e", json.dumps({"gateway_rotate_clients": [TOKEN_CLIENT]}),
                   "-e", "gateway_rotate_grace_s=5")
        # The switch is among the run's last steps: the new colour's answers come after it.
        load.wait_for_answers_after(time.monotonic())
    finally:
        load.stop()
    assert run.returncode == 0, run.output[-4000:]
    version, latest = _latest(bao)
    new_token = latest[TOKEN_CLIENT]
    assert version == version_before + 1 and new_token != old_token and latest["robot-kitchen"] == client_key

    # The live instances held the old token, so the live release moved onto new ones holding the new token.
    said = " ".join(run.output.split())
    assert "holds other secrets" in said, run.output[-3000:]
    other = _served_by(client_key).split("/")[-1]
    assert other != colour and _token_of(f"xlk-asr-{other}") == new_token
    assert load.outcomes and load.failures == [], load.failures[:5]
    assert {o.served_by.split("/")[-1] for o in load.outcomes} == {colour, other}, "served throughout, by both"

    # Afterwards the old token is refused at the gateway, the new one and the other client's key pass.
    def status_with(key: str) -> int:
        return requests.get(f"{GATEWAY}/nowhere", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code

    assert status_with(old_token) == 401
    assert status_with(new_token) == 404 and status_with(client_key) == 404
    for secret in (old_token, new_token, client_key, bao.root_token):
        assert secret not in run.output

    # The next deploy reads the same token from the store: the live release is current, nothing to do.
    again = _run("deploy.yml", store_vars, "-e", "strategy=bluegreen", "-e", f"version={GOOD}")
    assert again.returncode == 0 and "is already live" in again.output, again.output[-3000:]
    report_dir = REPO / ".run" / "token" / "reports"
    for report in report_dir.glob("*"):
        text = report.read_text(errors="replace")
        assert old_token not in text and new_token not in text, report
