"""The multimodal service end to end: deployed blue-green on the host network behind its voice-to-voice gate,
answering a spoken question through the real gateway by calling the live ASR, LLM and TTS through that same
gateway; a version that says something else than its reply is stopped by the gate with traffic unmoved."""

from __future__ import annotations

import base64
import json

import pytest
import requests
from xl_gates import word_error_rate

from tests.integration.conftest import GARBLED, GATEWAY, GOOD, RUN_DIR, docker_names, playbook

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

INTERACT = f"{GATEWAY}/v1/interact"
QUESTION = "Can you turn on the kitchen lights please?"


def _deploy(version: str, services: str = "multimodal"):
    return playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={version}", "-e", f"services={services}")


def _events() -> list[dict]:
    lines = (RUN_DIR / "state" / "history.jsonl").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["service"] == "multimodal"]


def _spoken(text: str) -> bytes:
    """The question in Piper's voice, from the live speech synthesis behind the gateway."""
    response = requests.post(f"{GATEWAY}/v1/audio/speech", json={"input": text}, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


def test_multimodal_goes_live_and_answers_a_spoken_question_through_the_gateway() -> None:
    run = _deploy(GOOD, "asr,tts,llm,multimodal")
    assert run.returncode == 0, run.output[-4000:]
    gate = next(g for g in _events()[-1]["gates"] if g["type"] == "interaction")
    assert gate["passed"] and gate["reply"].strip() and gate["measured"] <= 0.5, gate
    assert set(gate["stage_seconds"]) >= {"asr", "llm", "tts", "total"}

    response = requests.post(INTERACT, files={"audio": ("q.wav", _spoken(QUESTION), "audio/wav")}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["X-Served-By"].startswith(f"multimodal/{GOOD}/")
    body = response.json()
    assert word_error_rate(QUESTION, body["transcript"]) <= 0.2, body["transcript"]
    # Every stage was served by a live instance reached through the gateway, not by a fixed address.
    assert {stage: by.split("/")[0] for stage, by in body["served_by"].items()} == {
        "asr": "asr", "llm": "llm", "tts": "tts"}
    heard = requests.post(f"{GATEWAY}/v1/audio/transcriptions", timeout=60, files={
        "file": ("reply.wav", base64.b64decode(body["audio"]["base64"]), "audio/wav")}).json()["text"]
    assert word_error_rate(body["reply"], heard) <= 0.5, (body["reply"], heard)


def test_a_version_that_says_something_else_fails_its_gate_and_traffic_stays() -> None:
    live = _events()[-1]["to"]
    run = _deploy(GARBLED)
    assert run.returncode != 0
    assert "gate 'synthetic-interaction' failed for service multimodal" in run.output
    assert "read back with word error rate" in run.output
    assert f"Traffic stays on {live['colour']} ({GOOD})" in run.output
    idle = "green" if live["colour"] == "blue" else "blue"
    assert f"xlt-multimodal-{idle}" not in docker_names()
    response = requests.post(INTERACT, files={"audio": ("q.wav", _spoken(QUESTION), "audio/wav")}, timeout=120)
    assert response.status_code == 200 and response.headers["X-Served-By"] == f"multimodal/{GOOD}/{live['colour']}"
