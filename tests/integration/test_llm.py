"""The language model end to end: deployed blue-green by the same engine, gated by a chat answer, serving
OpenAI-style chat completions (plain and streamed) through the real gateway under load, and rolled back."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.integration.conftest import GATEWAY, GOOD, NEXT, RUN_DIR, playbook
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

CHAT = f"{GATEWAY}/v1/chat/completions"
QUESTION = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 8}


def _deploy(version: str):
    return playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={version}", "-e", "services=llm")


def _llm_events() -> list[dict]:
    lines = (RUN_DIR / "state" / "history.jsonl").read_text().splitlines()
    return [event for event in map(json.loads, lines) if event["service"] == "llm"]


def test_llm_goes_live_behind_its_chat_gate_and_answers_plain_and_streamed() -> None:
    run = _deploy(GOOD)
    assert run.returncode == 0, run.output[-4000:]
    gate = next(g for g in _llm_events()[-1]["gates"] if g["type"] == "chat")
    assert gate["passed"] and gate["reply"].strip(), gate
    answer = requests.post(CHAT, json=QUESTION, timeout=60)
    assert answer.status_code == 200 and answer.headers["X-Served-By"].startswith(f"llm/{GOOD}/")
    assert answer.json()["choices"][0]["message"]["content"].strip()
    with requests.post(CHAT, json={**QUESTION, "stream": True}, timeout=60, stream=True) as streamed:
        lines = [line for line in streamed.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]" and len(lines) > 2
    models = requests.get(f"{GATEWAY}/v1/models", timeout=10).json()
    assert models["data"] and models["data"][0]["id"]


def test_llm_blue_green_under_load_loses_nothing_and_rolls_back() -> None:
    live = _llm_events()[-1]["to"]["colour"]
    with LoadGenerator(CHAT, json_body=QUESTION, concurrency=2) as load:
        time.sleep(2)
        run = _deploy(NEXT)
        finished = time.monotonic()
        load.wait_for_answers_after(finished)
    assert run.returncode == 0, run.output[-4000:]
    assert load.outcomes and load.failures == [], load.failures[:5]
    assert {o.served_by for o in load.outcomes if o.started > finished} == {
        f"llm/{NEXT}/{'green' if live == 'blue' else 'blue'}"}
    back = playbook("rollback.yml", "-e", "services=llm")
    assert back.returncode == 0, back.output[-4000:]
    assert requests.post(CHAT, json=QUESTION, timeout=60).headers["X-Served-By"] == f"llm/{GOOD}/{live}"
