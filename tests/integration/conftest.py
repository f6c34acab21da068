"""End-to-end fixtures: a real test environment (gateway on 127.0.0.1:18080) and helpers to run playbooks."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support import e2e_images

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = Path(__file__).with_name("env-test.yml")
FLEET_ENV_FILE = Path(__file__).with_name("env-fleet.yml")
FLEET_INVENTORY = REPO / "inventories" / "local-fleet" / "hosts.yml"
GATEWAY = "http://127.0.0.1:18080"
TRANSCRIBE = f"{GATEWAY}/v1/audio/transcriptions"
RUN_DIR = REPO / ".run" / "test"
GOOD, NEXT = e2e_images.GOOD, e2e_images.NEXT
NEVER_READY, GARBLED, ERRORS = e2e_images.NEVER_READY, e2e_images.GARBLED, e2e_images.ERRORS
CRASHES, ERRORS_5, SLOW = e2e_images.CRASHES, e2e_images.ERRORS_5, e2e_images.SLOW
TTS_GARBLED = e2e_images.TTS_GARBLED


@dataclass
class PlaybookRun:
    returncode: int
    output: str

    @property
    def changed(self) -> int:
        counts = re.findall(r"\bchanged=(\d+)", self.output)
        assert counts, f"no PLAY RECAP in output:\n{self.output[-3000:]}"
        return sum(int(count) for count in counts)


def playbook(name: str, *extra: str, test_env: bool = True, fleet: bool = False) -> PlaybookRun:
    """Run a playbook in the test environment (or, with `fleet`, the four-host fleet environment)."""
    args = [str(Path(sys.executable).parent / "ansible-playbook"), f"playbooks/{name}"]
    if test_env:
        args += ["-e", f"@{ENV_FILE}"]
    if fleet:
        args += ["-i", str(FLEET_INVENTORY), "-e", f"@{FLEET_ENV_FILE}"]
    completed = subprocess.run([*args, *extra], cwd=REPO, env=e2e_images.ansible_env(), capture_output=True,
                               text=True, timeout=1200)
    return PlaybookRun(completed.returncode, completed.stdout + completed.stderr)


def services_overrides(**extra: dict[str, Any]) -> dict[str, Any]:
    """The test environment's service overrides (env-test.yml) with `extra` merged in per service: an `-e` that
    sets xlerobot_services_overrides replaces the file's, and the gateway must keep every service's test ports."""
    overrides = yaml.safe_load(ENV_FILE.read_text())["xlerobot_services_overrides"]
    for service, settings in extra.items():
        overrides[service] = {**overrides.get(service, {}), **settings}
    return {"xlerobot_services_overrides": overrides}


def served_by(count: int = 3, clip: Path | None = None) -> list[str]:
    """X-Served-By of `count` requests sent through the gateway now."""
    answers = []
    for _ in range(count):
        if clip is None:
            response = requests.post(TRANSCRIBE, files={"file": ("a.wav", b"", "audio/wav")}, timeout=60)
        else:
            response = requests.post(TRANSCRIBE, files={"file": clip.open("rb")}, timeout=60)
        answers.append(response.headers.get("X-Served-By", f"HTTP {response.status_code}"))
    return answers


def docker_names(prefix: str = "xlt-") -> set[str]:
    """Containers of one test environment (by its prefix): other work on the same engine is not ours to judge."""
    out = subprocess.run(["docker", "ps", "-a", "--format", "{{.Names}}"], capture_output=True, text=True, check=True)
    return {name for name in out.stdout.split() if name.startswith(prefix)}


@pytest.fixture(scope="session")
def images() -> dict[str, list[tuple[str, str]]]:
    """Every version the scenarios deploy (tests/support/e2e_images.py): built here, unless `make test` built
    them earlier in the same run."""
    if os.environ.get(e2e_images.PREBUILT_ENV) != "1":
        e2e_images.build_all()
    return e2e_images.BUILDS


class Webhook:
    """Collects what Alertmanager posts, on 127.0.0.1."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="session")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture(scope="session")
def test_env(images: dict[str, list[tuple[str, str]]], webhook: Webhook) -> Iterator[None]:
    playbook("teardown.yml")  # whatever an interrupted earlier run left behind
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    run = playbook("gateway.yml")
    assert run.returncode == 0, run.output[-4000:]
    run = playbook("monitoring.yml", "-e", f"monitoring_webhook_url={webhook.url}")
    assert run.returncode == 0, run.output[-4000:]
    try:
        yield
    finally:
        playbook("teardown.yml")
        shutil.rmtree(RUN_DIR, ignore_errors=True)
