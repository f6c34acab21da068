"""The release engine's one pass over several services, end to end under load: a three-service blue-green whose
second service fails its gate (with both abort scopes, each service's record and report its own), a rollback of
four services that switches every warm colour back in one batch with no gate run again, and playbooks/abort.yml
stopping a canary in its pause.

Starts by putting 1.0.0 of every service live, and ends with 1.0.0 of every service live again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import xl_haproxy

from tests.integration.conftest import (
    ENV_FILE,
    GATEWAY,
    GOOD,
    NEXT,
    REPO,
    RUN_DIR,
    TTS_GARBLED,
    docker_names,
    playbook,
    services_overrides,
)
from tests.support import e2e_images
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

GATE_TEXT = "Turn off the radio in the living room"
THREE = ["asr", "tts", "llm"]
FOUR = ["asr", "tts", "llm", "multimodal"]
SOCKET = str(RUN_DIR / "haproxy" / "admin.sock")


def _deploy(version: str, services: list[str], *extra: str):
    return playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={version}", "-e",
                    f"services={','.join(services)}", *extra)


def _history(count: int) -> list[dict]:
    lines = (RUN_DIR / "state" / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[-count:]]


def _served(service: str) -> dict[str, str]:
    """Version and colour that HAProxy sends a service's traffic to now, from its weights."""
    servers = xl_haproxy.backend_state(SOCKET, f"be_{service}")
    live = [name for name, server in servers.items() if server["weight"] > 0]
    assert len(live) == 1, f"{service}: traffic on {live}"
    colour = live[0].split("_")[1]
    info = subprocess.run(["docker", "inspect", "-f", '{{index .Config.Labels "io.xlerobot.version"}}',
                           f"xlt-{service}-{colour}"], capture_output=True, text=True, check=True)
    return {"colour": colour, "version": info.stdout.strip()}


@contextmanager
def _load(clip: Path, services: list[str]) -> Iterator[list[LoadGenerator]]:
    """A paced client per service through the gateway (a second of think time after each answer)."""
    bodies = {
        "asr": {"url": "/v1/audio/transcriptions", "audio": clip},
        "tts": {"url": "/v1/audio/speech", "json_body": {"input": "The kitchen lights are on."}},
        "llm": {"url": "/v1/chat/completions", "json_body": {"messages": [{"role": "user", "content": "Say hello."}],
                                                              "max_tokens": 8}},
        "multimodal": {"url": "/v1/interact", "audio": clip, "audio_field": "audio"},
    }
    clients = []
    for service in services:
        spec = dict(bodies[service])
        clients.append(LoadGenerator(f"{GATEWAY}{spec.pop('url')}", concurrency=1, pause_s=1.0, **spec).start())
    try:
        time.sleep(2)
        yield clients
    finally:
        time.sleep(2)
        for client in clients:
            client.stop()


def _failures(clients: list[LoadGenerator]) -> list:
    return [failure for client in clients for failure in client.failures]


@pytest.fixture(scope="module", autouse=True)
def every_service_live_on_good() -> Iterator[None]:
    run = _deploy(GOOD, FOUR)
    assert run.returncode == 0, run.output[-4000:]
    assert {service: _served(service)["version"] for service in FOUR} == dict.fromkeys(FOUR, GOOD)
    yield
    run = _deploy(GOOD, FOUR)
    assert run.returncode == 0, run.output[-4000:]


def test_a_second_service_failing_its_gate_returns_the_whole_run(golden_clips: dict[str, Path]) -> None:
    before = {service: _served(service) for service in THREE}
    with _load(golden_clips[GATE_TEXT], THREE) as clients:
        run = _deploy(TTS_GARBLED, THREE)
    assert run.returncode != 0
    assert "gate 'synthetic-speech' failed for service tts" in run.output, run.output[-4000:]
    assert "the run was aborted because tts failed" in run.output
    assert _failures(clients) == [], _failures(clients)[:5]
    assert {service: _served(service) for service in THREE} == before, "traffic stayed where it was"
    idle = {f"xlt-{s}-{'green' if before[s]['colour'] == 'blue' else 'blue'}" for s in THREE}
    assert not idle & docker_names(), "the run removed every new instance it started"
    events = _history(3)
    assert [(e["service"], e["result"]) for e in events] == [(s, "aborted") for s in THREE]
    assert len({e["release"] for e in events}) == 1
    by_service = {e["service"]: e for e in events}
    assert by_service["tts"]["step"] == "gates" and "synthetic-speech" in by_service["tts"]["reason"]
    assert by_service["asr"]["reason"].startswith("the run was aborted because tts failed")
    # Each service's record and report are its own: its gates, its timeline, its plot.
    assert [g["name"] for g in by_service["asr"]["gates"]] == ["liveness", "readiness", "synthetic-transcription"]
    assert [g["name"] for g in by_service["tts"]["gates"]] == ["liveness", "readiness", "synthetic-speech"]
    assert [g["name"] for g in by_service["llm"]["gates"]] == ["liveness", "readiness", "synthetic-chat"]
    for service in THREE:
        report = json.loads((RUN_DIR / "reports" / f"{events[0]['release']}-{service}.json").read_text())
        assert report["service"] == service and report["gates"] == by_service[service]["gates"]
        assert (RUN_DIR / "reports" / f"{events[0]['release']}-{service}.png").read_bytes().startswith(b"\x89PNG")
        assert "| gate | type | passed |" in (RUN_DIR / "reports" / f"{events[0]['release']}-{service}.md").read_text()


def test_with_abort_scope_service_only_the_failed_service_returns(golden_clips: dict[str, Path]) -> None:
    with _load(golden_clips[GATE_TEXT], THREE) as clients:
        run = _deploy(TTS_GARBLED, THREE, "-e", "abort_scope=service")
    assert run.returncode != 0
    assert "bluegreen deploy of tts 1.1.0-tts-garbled aborted at step 'gates'" in run.output, run.output[-4000:]
    assert f"deploy of asr {TTS_GARBLED} aborted" not in run.output and f"deploy of llm {TTS_GARBLED} aborted" \
        not in run.output
    assert _failures(clients) == [], _failures(clients)[:5]
    assert {service: _served(service)["version"] for service in THREE} == {
        "asr": TTS_GARBLED, "tts": GOOD, "llm": TTS_GARBLED}
    events = {e["service"]: e for e in _history(3)}
    assert {s: e["result"] for s, e in events.items()} == {"asr": "success", "tts": "aborted", "llm": "success"}
    # tts's timeline holds only its abort's traffic (where it already was), none of the others' switch.
    assert [step["spec"] for step in events["tts"]["steps"]] == [{"abort": True}]
    assert events["asr"]["steps"][0]["weights"] and events["tts"]["release"] == events["asr"]["release"]
    back = playbook("rollback.yml", "-e", "services=asr,llm")
    assert back.returncode == 0, back.output[-4000:]
    assert {service: _served(service)["version"] for service in THREE} == dict.fromkeys(THREE, GOOD)


def test_a_rollback_of_four_services_switches_every_warm_colour_back_with_no_gate(
        golden_clips: dict[str, Path]) -> None:
    run = _deploy(NEXT, FOUR)
    assert run.returncode == 0, run.output[-4000:]
    assert {service: _served(service)["version"] for service in FOUR} == dict.fromkeys(FOUR, NEXT)
    with _load(golden_clips[GATE_TEXT], FOUR) as clients:
        # The test environment names asr alone by default (env-test.yml): name all four.
        rollback = playbook("rollback.yml", "-e", f"services={','.join(FOUR)}")
    assert rollback.returncode == 0, rollback.output[-4000:]
    assert _failures(clients) == [], _failures(clients)[:5]
    assert all(client.outcomes for client in clients)
    assert {service: _served(service)["version"] for service in FOUR} == dict.fromkeys(FOUR, GOOD), \
        rollback.output[-6000:]
    events = _history(4)
    assert sorted(e["service"] for e in events) == sorted(FOUR)
    assert all(e["action"] == "rollback" and e["result"] == "success" and e["gates"] == [] for e in events)
    assert all(check["name"] == "warm-version" and check["passed"] for e in events for check in e["checks"])
    assert "Gates | The new instances" not in rollback.output, "no gate runs again on a warm colour"
    assert len({e["release"] for e in events}) == 1, [e["release"] for e in events]
    assert len({e["at"] for e in events}) == 1, ("one record, one write", rollback.output[-6000:])


def test_abort_stops_a_canary_in_its_pause_and_returns_its_traffic(golden_clips: dict[str, Path]) -> None:
    steps = [{"setWeight": 30}, {"pause": {"duration": 300}}, {"analysis": {}}, {"setWeight": 100}]
    overrides = services_overrides(asr={"canary": {"steps": steps}})
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "playbooks/deploy.yml", "-e", f"@{ENV_FILE}",
               "-e", "strategy=canary", "-e", f"version={NEXT}", "-e", json.dumps(overrides)]
    live = _served("asr")
    new_colour = "green" if live["colour"] == "blue" else "blue"
    with _load(golden_clips[GATE_TEXT], ["asr"]) as clients:
        canary = subprocess.Popen(command, cwd=REPO, env=e2e_images.ansible_env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            weights = {name: s["weight"] for name, s in xl_haproxy.backend_state(SOCKET, "be_asr").items()}
            if weights.get(f"asr_{new_colour}") == 30:
                break
            assert canary.poll() is None, canary.communicate()[0][-4000:]
            time.sleep(0.2)
        else:
            pytest.fail("the canary never took 30 % of the traffic")
        aborted = playbook("abort.yml", "-e", "reason=drill")
        weights = {name: s["weight"] for name, s in xl_haproxy.backend_state(SOCKET, "be_asr").items()}
        output, _ = canary.communicate(timeout=300)
    assert aborted.returncode == 0, aborted.output[-3000:]
    assert weights == {f"asr_{live['colour']}": 100, f"asr_{new_colour}": 0}, "traffic back once abort.yml ends"
    assert canary.returncode != 0
    assert "aborted by" in output and "drill" in output, output[-4000:]
    assert f"Traffic stays on {live['colour']} ({live['version']})" in output
    assert f"xlt-asr-{new_colour}" not in docker_names(), "the run removed its new instance"
    assert _failures(clients) == [], _failures(clients)[:5]
    event = _history(1)[0]
    assert event["result"] == "aborted" and "aborted by" in event["reason"] and "drill" in event["reason"]
    assert event["steps"][-1]["weights"] == {f"asr_{live['colour']}": 100, f"asr_{new_colour}": 0}
    assert not (RUN_DIR / "state" / "deploy.lock").exists() and not (RUN_DIR / "state" / "deploy.abort").exists()
