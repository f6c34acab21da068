"""Rolling deploys on a four-host fleet (inventories/local-fleet: four logical hosts on the one engine, each on
its own loopback address) behind its own real HAProxy: batches of 25 %, drain before replace, gates per host,
max_fail_percentage, and the abort that puts every updated host back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import xl_haproxy

from tests.integration.conftest import GARBLED, GOOD, NEXT, REPO, docker_names, playbook, services_overrides
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

RUN_DIR = REPO / ".run" / "fleet-test"
SOCKET = str(RUN_DIR / "haproxy" / "admin.sock")
TRANSCRIBE = "http://127.0.0.1:18180/v1/audio/transcriptions"
NODES = ["node1", "node2", "node3", "node4"]
GATE_TEXT = "Turn off the radio in the living room"
UNREACHABLE = REPO / "tests" / "integration" / "fleet-unreachable.yml"


def _rolling(version: str, *extra: str):
    return playbook("deploy.yml", "-e", "strategy=rolling", "-e", f"version={version}", *extra, fleet=True)


def _history() -> list[dict]:
    return [json.loads(line) for line in (RUN_DIR / "state" / "history.jsonl").read_text().splitlines()]


def _versions() -> dict[str, str]:
    """Version each node's blue instance runs, from its container labels."""
    versions = {}
    for node in NODES:
        info = subprocess.run(
            ["docker", "inspect", "-f", "{{index .Config.Labels \"io.xlerobot.version\"}}", f"xlr-{node}-asr-blue"],
            capture_output=True, text=True, check=True)
        versions[node] = info.stdout.strip()
    return versions


class RotationWatch:
    """Polls HAProxy's admin socket and remembers the most blue servers the deploy ever had out of rotation at
    once (weight 0). Health checks that time out on a busy 2-core machine are HAProxy's doing, not the deploy's."""

    def __init__(self) -> None:
        self.most_out = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            servers = xl_haproxy.backend_state(SOCKET, "be_asr")
            blue = {name: srv for name, srv in servers.items() if name.startswith("asr_blue_")}
            out = sum(1 for srv in blue.values() if srv["weight"] == 0)
            self.most_out = max(self.most_out, out)
            self.samples += 1
            time.sleep(0.05)

    def __enter__(self) -> "RotationWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module", autouse=True)
def fleet() -> Iterator[None]:
    playbook("teardown.yml", fleet=True)  # whatever an interrupted earlier run left behind, lock included
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    run = playbook("gateway.yml", fleet=True)
    assert run.returncode == 0, run.output[-4000:]
    try:
        yield
    finally:
        playbook("teardown.yml", fleet=True)
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def test_first_rolling_release_starts_every_host(golden_clips: dict[str, Path]) -> None:
    run = _rolling(GOOD)
    assert run.returncode == 0, run.output[-4000:]
    assert {f"xlr-{node}-asr-blue" for node in NODES} <= docker_names("xlr-")
    answer = requests.post(TRANSCRIBE, files={"file": golden_clips[GATE_TEXT].open("rb")}, timeout=60)
    assert answer.status_code == 200 and answer.headers["X-Served-By"] == f"asr/{GOOD}/blue"
    weights = xl_haproxy.backend_state(SOCKET, "be_asr")
    assert sorted(name for name, srv in weights.items() if srv["weight"] > 0) == [f"asr_blue_{n}" for n in NODES]


def test_rolling_replaces_one_host_in_four_at_a_time_under_load(golden_clips: dict[str, Path]) -> None:
    with RotationWatch() as watch, LoadGenerator(TRANSCRIBE, golden_clips[GATE_TEXT], concurrency=2) as load:
        time.sleep(2)
        run = _rolling(NEXT)
        finished = time.monotonic()
        load.wait_for_answers_after(finished)
    assert run.returncode == 0, run.output[-4000:]
    assert load.outcomes and load.failures == [], load.failures[:5]
    assert watch.samples > 20 and watch.most_out == 1, f"{watch.most_out} hosts were out of rotation at once"
    assert {o.served_by for o in load.outcomes if o.started < finished} == {f"asr/{GOOD}/blue", f"asr/{NEXT}/blue"}
    assert {o.served_by for o in load.outcomes if o.started > finished} == {f"asr/{NEXT}/blue"}
    assert _versions() == dict.fromkeys(NODES, NEXT)
    event = _history()[-1]
    assert (event["strategy"], event["result"]) == ("rolling", "success")
    assert [step["spec"]["hosts"] for step in event["steps"]] == [[node] for node in NODES]
    assert sorted(event["updated_hosts"]) == NODES and event["hosts_left_on_previous"] == []
    assert len([g for g in event["gates"] if g["type"] == "transcription"]) == 4


def test_a_failing_host_beyond_max_fail_percentage_puts_every_updated_host_back(
        golden_clips: dict[str, Path]) -> None:
    # 25 % may fail (the service's own rolling settings, from configuration): node1 fails and goes back, node2
    # fails too (50 %) and the run aborts.
    budget = services_overrides(asr={"rolling": {"serial": 1, "max_fail_percentage": 25}})
    with LoadGenerator(TRANSCRIBE, golden_clips[GATE_TEXT], concurrency=2) as load:
        run = _rolling(GARBLED, "-e", json.dumps(budget))
        time.sleep(2)
    assert run.returncode != 0
    assert "rolling deploy of asr" in run.output and "aborted at step 'batch 2/4 (node2)'" in run.output, \
        run.output[-4000:]
    assert "2 of 4 host(s) failed (max_fail_percentage 25)" in run.output
    assert "node1, node2 are back on 1.1.0" in run.output
    assert load.outcomes and load.failures == [], load.failures[:5]
    assert _versions() == dict.fromkeys(NODES, NEXT)
    weights = xl_haproxy.backend_state(SOCKET, "be_asr")
    assert all(weights[f"asr_blue_{node}"]["weight"] > 0 for node in NODES)
    event = _history()[-1]
    assert event["result"] == "aborted" and [f["host"] for f in event["failed_hosts"]] == ["node1", "node2"]


def test_an_unreachable_host_counts_against_max_fail_percentage() -> None:
    # node5 joins the fleet but cannot be reached: with no failure allowed nothing is touched ...
    refused = _rolling(GOOD, "-i", str(UNREACHABLE))
    assert refused.returncode != 0
    assert "1 of 5 host(s) cannot be reached (max_fail_percentage 0): node5; no host was touched" in refused.output, \
        refused.output[-4000:]
    assert "No host was changed; traffic stays on blue (1.1.0)" in refused.output
    assert _versions() == dict.fromkeys(NODES, NEXT)
    # ... with one host in five allowed to fail, the four others roll and node5 is reported.
    run = _rolling(GOOD, "-i", str(UNREACHABLE), "-e", "rolling_max_fail_percentage=25")
    assert run.returncode == 0, run.output[-4000:]
    assert _versions() == dict.fromkeys(NODES, GOOD)
    event = _history()[-1]
    assert event["result"] == "success" and sorted(event["updated_hosts"]) == NODES
    assert [(f["host"], f["why"].split(":")[0]) for f in event["hosts_left_on_previous"]] == [("node5", "unreachable")]


def test_rollback_after_a_rolling_deploy_returns_the_previous_version() -> None:
    run = playbook("rollback.yml", fleet=True)
    assert run.returncode == 0, run.output[-4000:]
    served = {requests.post(TRANSCRIBE, files={"file": ("a.wav", b"", "audio/wav")}, timeout=30)
              .headers.get("X-Served-By") for _ in range(8)}
    assert served == {f"asr/{NEXT}/green"}
