"""Blue-green end to end: real engine, registry, HAProxy and ASR model, with load running through deploys.

The scenario runs in order, each step starting from the state the previous one left:
deploy A -> A to B under load -> B again (no change) -> rollback to A under load -> faulty versions under load
-> bad requests.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import (
    GARBLED,
    GOOD,
    NEVER_READY,
    NEXT,
    RUN_DIR,
    TRANSCRIBE,
    docker_names,
    playbook,
    served_by,
)
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

GATE_TEXT = "Turn off the radio in the living room"


def _deploy(version: str, *extra: str):
    return playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={version}", *extra)


def _history() -> list[dict]:
    path = RUN_DIR / "state" / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _under_load(clip: Path, action):
    """Run `action` while two clients send transcriptions through the gateway; return (result, load, t_end)."""
    load = LoadGenerator(TRANSCRIBE, clip, concurrency=2).start()
    time.sleep(3)
    result = action()
    finished = time.monotonic()
    load.wait_for_answers_after(finished)
    load.stop()
    return result, load, finished


def test_first_deploy_goes_live_on_blue(golden_clips: dict[str, Path]) -> None:
    run = _deploy(GOOD)
    assert run.returncode == 0, run.output[-4000:]
    assert set(served_by(3)) == {f"asr/{GOOD}/blue"}
    assert "xlt-asr-blue" in docker_names()


def _leaks(secret: str) -> list[str]:
    """Where `secret` shows up in what a deploy leaves: the run's state, reports, runtime files, gateway files and
    logs, and the instances' own logs. (The instances' environment holds it by design: it is how it reaches them.)"""
    # Prometheus' and Alertmanager's databases hold metric samples only (no label carries a request's content).
    found = [str(path) for path in RUN_DIR.rglob("*") if path.is_file()
             and not any(part.endswith("-data") for part in path.relative_to(RUN_DIR).parts)
             and secret.encode() in path.read_bytes()]
    for name in sorted(docker_names()):
        logs = subprocess.run(["docker", "logs", name], capture_output=True, check=False)
        if secret.encode() in logs.stdout + logs.stderr:
            found.append(f"docker logs {name}")
    return found


@pytest.fixture(scope="module")
def service_token(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A service token (the key the gates and instances present to the gateway), given the way an inventory's
    vault would: as extra vars in a 0600 file."""
    key = secrets.token_urlsafe(24)
    secret_vars = tmp_path_factory.mktemp("secrets") / "secret.json"
    secret_vars.write_text(json.dumps({"release_gateway_api_key": key}))
    secret_vars.chmod(0o600)
    return key, secret_vars


def test_bluegreen_to_next_version_under_load_loses_nothing(golden_clips: dict[str, Path],
                                                            service_token: tuple[str, Path]) -> None:
    # The whole deploy runs at -vvv with a secret in play: none of what it prints or leaves may contain it.
    key, secret_vars = service_token
    run, load, finished = _under_load(golden_clips[GATE_TEXT],
                                      lambda: _deploy(NEXT, "-vvv", "-e", f"@{secret_vars}"))
    assert run.returncode == 0, run.output[-4000:]
    assert "ESTABLISH LOCAL CONNECTION" in run.output, "ran at -vvv"
    assert key not in run.output and _leaks(key) == []
    assert load.outcomes, "the load generator sent nothing"
    assert load.failures == [], load.failures[:5]
    served = {o.served_by for o in load.outcomes}
    assert f"asr/{GOOD}/blue" in served and f"asr/{NEXT}/green" in served
    after = [o.served_by for o in load.outcomes if o.started > finished]
    assert after and set(after) == {f"asr/{NEXT}/green"}
    assert set(served_by(3)) == {f"asr/{NEXT}/green"}
    assert {"xlt-asr-blue", "xlt-asr-green"} <= docker_names(), "the old colour must stay warm for rollback"
    event = _history()[-1]
    assert event["result"] == "success" and event["from"]["version"] == GOOD and event["to"]["version"] == NEXT
    assert [g["name"] for g in event["gates"]] == ["liveness", "readiness", "synthetic-transcription"]
    report = json.loads((RUN_DIR / "reports" / f"{event['release']}-asr.json").read_text())
    assert report["result"] == "success" and report["to"]["version"] == NEXT
    assert report["steps"][0]["weights"] == {"asr_blue": 0, "asr_green": 100}
    colours = {series["metric"].get("colour") for series in report["observed"]["requests"]}
    assert {"blue", "green"} <= colours, "Prometheus saw both colours serve during the deploy"
    markdown = (RUN_DIR / "reports" / f"{event['release']}-asr.md").read_text()
    assert "| synthetic-transcription | transcription | yes |" in markdown
    plot = RUN_DIR / "reports" / f"{event['release']}-asr.png"
    assert plot.read_bytes().startswith(b"\x89PNG") and f"]({plot.name})" in markdown


def test_deploying_the_live_version_again_changes_nothing(service_token: tuple[str, Path]) -> None:
    run = _deploy(NEXT, "-e", f"@{service_token[1]}")
    assert run.returncode == 0, run.output[-4000:]
    assert run.changed == 0, run.output[-3000:]
    assert "is already live on green" in run.output


def test_rollback_under_load_returns_to_the_previous_version(golden_clips: dict[str, Path]) -> None:
    run, load, finished = _under_load(golden_clips[GATE_TEXT], lambda: playbook("rollback.yml"))
    assert run.returncode == 0, run.output[-4000:]
    assert load.failures == [], load.failures[:5]
    after = [o.served_by for o in load.outcomes if o.started > finished]
    assert after and set(after) == {f"asr/{GOOD}/blue"}
    event = _history()[-1]
    assert event["action"] == "rollback" and event["result"] == "success"
    assert event["reused_warm_instance"] is True


@pytest.mark.parametrize("version, gate, why", [
    (NEVER_READY, "readiness", "did not answer 200"),
    (GARBLED, "synthetic-transcription", "word error rate"),
])
def test_a_failing_gate_aborts_and_traffic_never_moves(golden_clips: dict[str, Path], version: str, gate: str,
                                                      why: str) -> None:
    run, load, _ = _under_load(golden_clips[GATE_TEXT], lambda: _deploy(version))
    assert run.returncode != 0
    assert f"gate '{gate}' failed for service asr" in run.output
    assert why in run.output
    assert f"Traffic stays on blue ({GOOD})" in run.output
    assert load.failures == [], load.failures[:5]
    assert {o.served_by for o in load.outcomes} == {f"asr/{GOOD}/blue"}
    assert "xlt-asr-green" not in docker_names(), "the broken instance must be removed"
    event = _history()[-1]
    assert event["result"] == "aborted" and event["step"] == "gates" and event["version"] == version


def test_a_missing_image_stops_before_anything_changes() -> None:
    before = (RUN_DIR / "state" / "state.json").read_text()
    run = _deploy("0.0.404")
    assert run.returncode != 0
    assert "xlerobot/asr:0.0.404" in run.output and "is not in the registry" in run.output
    assert (RUN_DIR / "state" / "state.json").read_text() == before
    assert set(served_by(2)) == {f"asr/{GOOD}/blue"}


def test_an_invalid_configuration_stops_before_anything_changes() -> None:
    before = (RUN_DIR / "state" / "state.json").read_text()
    bad = {"xlerobot_services_overrides": {"asr": {"memory": "lots", "stop_timeout": 9000,
                                                   "ports": {"blue": 18101, "green": 18102}}}}
    run = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={NEXT}", "-e", json.dumps(bad))
    assert run.returncode != 0
    assert "has 2 violation(s)" in run.output, run.output[-3000:]
    assert "services.asr.memory: must match" in run.output and "value 'lots'" in run.output
    assert "services.asr.stop_timeout: must be <= 600" in run.output and "from overrides" in run.output
    assert (RUN_DIR / "state" / "state.json").read_text() == before
    assert set(served_by(2)) == {f"asr/{GOOD}/blue"}


@pytest.mark.parametrize("extra, message", [
    (["-e", "strategy=banana", "-e", "version=1.0.0"], "strategy \"banana\" is not available"),
    (["-e", "strategy=bluegreen"], "no version given"),
    (["-e", "strategy=bluegreen", "-e", "version=latest"], "is not a pinned image tag"),
    (["-e", "strategy=bluegreen", "-e", "version=1.0.0", "-e", "services=asr,nope"], "unknown service(s) ['nope']"),
])
def test_bad_requests_are_refused_with_a_clear_message(extra: list[str], message: str) -> None:
    run = playbook("deploy.yml", *extra)
    assert run.returncode != 0
    assert message in run.output, run.output[-3000:]
    assert set(served_by(1)) == {f"asr/{GOOD}/blue"}


@pytest.mark.parametrize("placement, messages", [
    # provision.yml never placed asr on a GPU here: the run stops before anything changes.
    (None, ["gpu_service_memory_mib gives asr on localhost (6000 MiB) a GPU memory need, but no GPU is placed",
            "run playbooks/provision.yml"]),
    # Placed, and the engine hands the GPU to the new instance, whose start is refused on a host without NVIDIA's
    # container toolkit before the container is touched.
    ({"assignments": {"asr": "GPU-e2e-0000"}, "needs": {"asr": 6000}},
     ["speech_service asr/green on localhost: asks for GPUs GPU-e2e-0000",
      "no NVIDIA container toolkit (nvidia-container-runtime-hook not found)"]),
])
def test_a_gpu_need_reaches_the_instance_or_stops_the_deploy(tmp_path: Path, placement: dict | None,
                                                             messages: list[str]) -> None:
    placement_path = tmp_path / "gpu-placement.json"
    if placement is not None:
        placement_path.write_text(json.dumps(placement))
    gpu = {"gpu_service_memory_mib": {"asr": 6000}, "gpu_placement_path": str(placement_path)}
    run = _deploy(NEXT, "-e", json.dumps(gpu))
    assert run.returncode != 0
    for message in messages:
        assert message in run.output, run.output[-3000:]
    assert "xlt-asr-blue" in docker_names()
    assert set(served_by(2)) == {f"asr/{GOOD}/blue"}


def test_check_mode_prints_the_plan_and_changes_nothing() -> None:
    state_before = (RUN_DIR / "state" / "state.json").read_text()
    history_before = (RUN_DIR / "state" / "history.jsonl").read_text()
    containers_before = docker_names()
    run = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={NEXT}", "--check", "--diff")
    assert run.returncode == 0, run.output[-4000:]
    assert "+        asr_green: 100" in run.output and "-        asr_blue: 100" in run.output, run.output[-4000:]
    assert "asr 1.1.0: would start green instances on localhost" in run.output
    assert (RUN_DIR / "state" / "state.json").read_text() == state_before
    assert (RUN_DIR / "state" / "history.jsonl").read_text() == history_before
    assert docker_names() == containers_before
    assert set(served_by(2)) == {f"asr/{GOOD}/blue"}
