"""Speech synthesis end to end: the TTS service deployed blue-green through the same engine, gated by the live
speech recognition reading its voice back, under load through the real gateway, and rolled back.

Needs speech recognition live (the read-back goes through the gateway), so it deploys ASR first. Speech synthesis
may be live already (an earlier module leaves 1.0.0 of every service live), so the first scenario deploys the next
version, which is never live at the start; ends with that version live.
"""

from __future__ import annotations

import io
import json
import time
import wave

import pytest
import requests

from tests.integration.conftest import (
    ERRORS_5,
    GARBLED,
    GATEWAY,
    GOOD,
    NEXT,
    RUN_DIR,
    SLOW,
    docker_names,
    playbook,
    services_overrides,
)
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

SPEECH = f"{GATEWAY}/v1/audio/speech"
REQUEST = {"input": "The front door is locked and the alarm is set.", "response_format": "wav"}


def _deploy(version: str, *extra: str):
    return playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={version}", "-e", "services=tts", *extra)


def _speak() -> tuple[str, float]:
    response = requests.post(SPEECH, json=REQUEST, timeout=60)
    assert response.status_code == 200, response.text[:300]
    with wave.open(io.BytesIO(response.content)) as clip:
        seconds = clip.getnframes() / clip.getframerate()
    return response.headers.get("X-Served-By", ""), seconds


def _live() -> dict:
    """What the gateway serves now, as the instance it names (history's last event may be an aborted deploy)."""
    _service, version, colour = _speak()[0].split("/")
    return {"version": version, "colour": colour}


def _last_event(service: str) -> dict:
    lines = (RUN_DIR / "state" / "history.jsonl").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["service"] == service][-1]


@pytest.fixture(scope="module", autouse=True)
def speech_recognition_is_live() -> None:
    run = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "services=asr")
    assert run.returncode == 0, run.output[-4000:]


def test_a_tts_deploy_is_gated_by_the_read_back_and_speaks_through_the_gateway() -> None:
    run = _deploy(NEXT)
    assert run.returncode == 0, run.output[-4000:]
    served, seconds = _speak()
    assert served.startswith(f"tts/{NEXT}/")
    assert 1.0 < seconds < 10.0
    gate = next(g for g in _last_event("tts")["gates"] if g["type"] == "speech")
    assert gate["passed"] and gate["measured"] <= 0.25 and gate["audio_seconds"] > 0.5, gate


def test_tts_blue_green_under_load_loses_no_request_and_rollback_returns() -> None:
    live_before = _live()["colour"]
    with LoadGenerator(SPEECH, json_body=REQUEST, concurrency=2) as load:
        time.sleep(2)
        run = _deploy(GOOD)
        finished = time.monotonic()
        load.wait_for_answers_after(finished)
    assert run.returncode == 0, run.output[-4000:]
    assert load.outcomes and load.failures == [], load.failures[:5]
    after = {o.served_by for o in load.outcomes if o.started > finished}
    assert after == {f"tts/{GOOD}/{'green' if live_before == 'blue' else 'blue'}"}
    back = playbook("rollback.yml", "-e", "services=tts")
    assert back.returncode == 0, back.output[-4000:]
    assert _speak()[0] == f"tts/{NEXT}/{live_before}"


def test_a_voice_that_says_the_wrong_words_is_stopped_by_the_read_back_and_traffic_stays() -> None:
    live = _live()
    run = _deploy(GARBLED)
    assert run.returncode != 0
    assert "gate 'synthetic-speech' failed for service tts" in run.output, run.output[-4000:]
    assert "read back with word error rate" in run.output
    assert _speak()[0] == f"tts/{live['version']}/{live['colour']}"
    idle = "green" if live["colour"] == "blue" else "blue"
    assert f"xlt-tts-{idle}" not in docker_names()
    assert _last_event("tts")["result"] == "aborted"


def _canary(version: str, steps: list[dict], concurrency: int = 4) -> tuple:
    """A canary deploy of speech synthesis with these steps, under load; (run, load, end of the run)."""
    overrides = services_overrides(tts={"canary": {"steps": steps, "analysis": {"window": "30s", "count": 2,
                                                                                "interval": 5}}})
    with LoadGenerator(SPEECH, json_body=REQUEST, concurrency=concurrency) as load:
        time.sleep(2)
        run = playbook("deploy.yml", "-e", "strategy=canary", "-e", f"version={version}", "-e", "services=tts",
                       "-e", json.dumps(overrides))
        finished = time.monotonic()
        load.wait_for_answers_after(finished)
    return run, load, finished


def test_a_canary_failing_5_percent_of_requests_aborts_at_its_first_analysis_within_its_share() -> None:
    # The default first step: 5 % of the traffic. The faulty voice fails exactly one request in twenty after its
    # gate; the first analysis must catch it, and what users lost must stay within the canary's 5 %.
    live = _live()
    run, load, finished = _canary(ERRORS_5, [{"setWeight": 5}, {"pause": {"duration": 20}}, {"analysis": {}},
                                             {"setWeight": 20}, {"pause": {"duration": 5}}, {"analysis": {}},
                                             {"setWeight": 100}])
    assert run.returncode != 0
    assert "aborted at step 'step 3" in run.output and "error-ratio" in run.output, run.output[-4000:]
    assert f"Traffic stays on {live['colour']} ({live['version']})" in run.output
    assert load.failures, "the faulty canary must have failed some requests"
    assert {o.served_by for o in load.failures} == {f"tts/{ERRORS_5}/{'green' if live['colour'] == 'blue' else 'blue'}"}
    assert len(load.failures) <= 0.05 * len(load.outcomes) + 1, (len(load.failures), len(load.outcomes))
    after = {o.served_by for o in load.outcomes if o.started > finished}
    assert after == {f"tts/{live['version']}/{live['colour']}"}
    assert _last_event("tts")["result"] == "aborted"


def test_a_canary_half_a_second_slower_aborts_on_its_p95_latency_and_loses_nothing() -> None:
    # Every answer of the slow voice is right, only 500 ms late: no error ratio can see it, the p95 budget
    # (the catalogue's: a quarter second over the live voice's p95) must.
    live = _live()
    run, load, finished = _canary(SLOW, [{"setWeight": 25}, {"pause": {"duration": 20}}, {"analysis": {}},
                                         {"setWeight": 100}], concurrency=2)
    assert run.returncode != 0
    assert "aborted at step 'step 3" in run.output and "p95-latency" in run.output, run.output[-4000:]
    assert "result <= baseline + 0.25" in run.output
    assert f"Traffic stays on {live['colour']} ({live['version']})" in run.output
    assert load.outcomes and load.failures == [], load.failures[:5]
    slow = [o.seconds for o in load.outcomes if o.served_by.startswith(f"tts/{SLOW}/")]
    assert slow, "the slow canary never took traffic"
    after = {o.served_by for o in load.outcomes if o.started > finished}
    assert after == {f"tts/{live['version']}/{live['colour']}"}
    event = _last_event("tts")
    assert event["result"] == "aborted"
    failed = [m for step in event["steps"] if "analysis" in step for m in step["analysis"]["measurements"]
              if m["outcome"] == "FAILED"]
    assert failed and all(m["metric"] == "p95-latency" for m in failed), failed
    assert all(m["canary_value"] > m["baseline_value"] + 0.25 for m in failed), failed
