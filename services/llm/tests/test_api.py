"""The LLM service over HTTP with the real SmolLM2 model: completions, streaming, bad input, probes, metrics,
faults and graceful shutdown. Answers stay a few tokens long: the machine has two cores."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from typing import Any

import pytest
import requests
from xl_llm.engine import GARBLED_ANSWER

from tests.support import models

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
LONG_ANSWER = [{"role": "user", "content": "Write a long story about a robot who learns to cook."}]


def _events(response: requests.Response) -> list[str]:
    """The data fields of a server-sent event stream, in order."""
    return [line[len("data: "):] for line in response.text.split("\n") if line.startswith("data: ")]


def test_completion_answers_with_text_and_usage(llm_server) -> None:
    response = llm_server.chat(json={"messages": QUESTION, "max_tokens": 16, "temperature": 0, "model": "gpt-4o"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Served-By"] == "llm/9.9.9-test/green"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "smollm2-135m-instruct"  # the served model, whatever the client asked for
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"].strip()
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] > 5
    assert 1 <= usage["completion_tokens"] <= 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_max_tokens_bounds_the_answer(llm_server) -> None:
    response = llm_server.chat(json={"messages": LONG_ANSWER, "max_tokens": 5, "temperature": 0})
    body = response.json()
    assert body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["finish_reason"] == "length"


def test_system_prompt_text_parts_and_history_are_accepted(llm_server) -> None:
    response = llm_server.chat(json={"messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": [{"type": "text", "text": "Name a colour."}]},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "Another one?"},
    ], "max_tokens": 8, "stop": ["\n\n"], "seed": 7})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"].strip()


def test_streaming_sends_chunks_then_done(llm_server) -> None:
    response = llm_server.chat(json={"messages": QUESTION, "max_tokens": 16, "temperature": 0, "stream": True})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["X-Served-By"] == "llm/9.9.9-test/green"
    events = _events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert all(chunk["model"] == "smollm2-135m-instruct" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks)
    assert text.strip()
    finishes = [chunk["choices"][0]["finish_reason"] for chunk in chunks if chunk["choices"][0]["finish_reason"]]
    assert finishes in (["stop"], ["length"])

    # Greedy decoding is deterministic: the stream says what the one-shot answer says.
    whole = llm_server.chat(json={"messages": QUESTION, "max_tokens": 16, "temperature": 0}).json()
    assert whole["choices"][0]["message"]["content"] == text


def test_models_lists_the_served_model(llm_server) -> None:
    response = requests.get(f"{llm_server.url}/v1/models", timeout=5)
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [model["id"] for model in body["data"]] == ["smollm2-135m-instruct"]
    assert body["data"][0]["object"] == "model"


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("case, request_kwargs, status, param, words", [
    ("missing messages", {"json": {"model": "x"}}, 400, "messages", "missing required field 'messages'"),
    ("empty messages", {"json": {"messages": []}}, 400, "messages", "non-empty list"),
    ("messages not a list", {"json": {"messages": "hello"}}, 400, "messages", "non-empty list"),
    ("message not an object", {"json": {"messages": ["hello"]}}, 400, "messages[0]", "must be an object"),
    ("unknown role", {"json": {"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}},
     400, "messages[1].role", "must be one of system, user, assistant, got 'robot'"),
    ("missing role", {"json": {"messages": [{"content": "hi"}]}}, 400, "messages[0].role", "got None"),
    ("missing content", {"json": {"messages": [{"role": "user"}]}}, 400, "messages[0].content", "no 'content'"),
    ("content not text", {"json": {"messages": [{"role": "user", "content": 42}]}}, 400, "messages[0].content",
     "must be a string, got int"),
    ("image part", {"json": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}},
     400, "messages[0].content", "text only"),
    ("NUL in content", {"json": {"messages": [{"role": "user", "content": "a\x00b"}]}}, 400, "messages[0].content",
     "NUL"),
    ("max_tokens zero", {"json": {"messages": QUESTION, "max_tokens": 0}}, 400, "max_tokens", "from 1 to 256"),
    ("max_tokens over the limit", {"json": {"messages": QUESTION, "max_tokens": 257}}, 400, "max_tokens",
     "from 1 to 256, got 257"),
    ("max_tokens as text", {"json": {"messages": QUESTION, "max_tokens": "10"}}, 400, "max_tokens", "'10'"),
    ("max_tokens fractional", {"json": {"messages": QUESTION, "max_tokens": 2.5}}, 400, "max_tokens", "2.5"),
    ("max_completion_tokens too big", {"json": {"messages": QUESTION, "max_completion_tokens": 9999}}, 400,
     "max_completion_tokens", "from 1 to 256"),
    ("temperature too high", {"json": {"messages": QUESTION, "temperature": 2.5}}, 400, "temperature",
     "from 0.0 to 2.0"),
    ("temperature negative", {"json": {"messages": QUESTION, "temperature": -0.1}}, 400, "temperature", "-0.1"),
    ("temperature as bool", {"json": {"messages": QUESTION, "temperature": True}}, 400, "temperature", "True"),
    ("temperature NaN", {"data": b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
                         "headers": JSON}, 400, "temperature", "nan"),
    ("top_p above one", {"json": {"messages": QUESTION, "top_p": 1.5}}, 400, "top_p", "from 0.0 to 1.0"),
    ("stream not a bool", {"json": {"messages": QUESTION, "stream": "yes"}}, 400, "stream", "true or false"),
    ("model not text", {"json": {"messages": QUESTION, "model": 5}}, 400, "model", "must be a string"),
    ("several choices", {"json": {"messages": QUESTION, "n": 2}}, 400, "n", "n must be 1"),
    ("stop too many", {"json": {"messages": QUESTION, "stop": ["a", "b", "c", "d", "e"]}}, 400, "stop",
     "up to 4"),
    ("seed negative", {"json": {"messages": QUESTION, "seed": -1}}, 400, "seed", "from 0"),
    ("not JSON", {"data": b"messages=hello", "headers": JSON}, 400, "messages", "not valid JSON"),
    ("JSON array", {"json": [QUESTION]}, 400, "messages", "JSON object"),
    ("form body", {"data": {"messages": "hello"}}, 400, "messages", "application/json"),
    ("oversized body", {"json": {"messages": QUESTION, "padding": "x" * 20000}}, 413, "messages",
     "exceeds the limit"),
    ("oversized chunked body", {"data": iter([b'{"messages": [], "padding": "', b"x" * 20000, b'"}']),
                                "headers": JSON}, 413, "messages", "exceeds the limit"),
    ("prompt longer than the context", {"json": {"messages": [{"role": "user", "content": "robot " * 600}]}}, 400,
     "messages", "the context window holds 512 (LLM_CONTEXT)"),
    ("streamed prompt longer than the context", {"json": {"messages": [{"role": "user", "content": "robot " * 600}],
                                                          "stream": True}}, 400, "messages", "LLM_CONTEXT"),
])
def test_bad_input_is_a_named_4xx_and_the_service_stays_ready(llm_server, case, request_kwargs, status, param,
                                                                words) -> None:
    response = llm_server.chat(**request_kwargs)
    assert response.status_code == status, f"{case}: {response.text[:300]}"
    error = response.json()["error"]
    assert error["param"] == param, case
    assert words in error["message"], f"{case}: {error['message']}"
    assert response.headers["X-Served-By"] == "llm/9.9.9-test/green"
    assert requests.get(f"{llm_server.url}/readyz", timeout=5).status_code == 200


def test_service_still_answers_after_bad_input(llm_server) -> None:
    llm_server.chat(json={"messages": [{"role": "user", "content": "robot " * 600}]})
    llm_server.chat(data=b"{broken", headers=JSON)
    response = llm_server.chat(json={"messages": QUESTION, "max_tokens": 4})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].strip()


def test_concurrent_requests_take_turns_on_the_one_model(llm_server) -> None:
    results: list[requests.Response] = []
    workers = [threading.Thread(target=lambda: results.append(
        llm_server.chat(json={"messages": QUESTION, "max_tokens": 8, "temperature": 0}))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [response.status_code for response in results] == [200, 200, 200]
    # One context, serialised: concurrent greedy answers are the same answer.
    assert len({response.json()["choices"][0]["message"]["content"] for response in results}) == 1


def _open_stream(port: int, max_tokens: int) -> socket.socket:
    """A streamed request whose answer has started, on a raw socket the test closes when it likes."""
    body = json.dumps({"messages": LONG_ANSWER, "max_tokens": max_tokens, "stream": True}).encode()
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                       + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    assert b"200 OK" in connection.recv(4096)
    return connection


def test_a_client_leaving_mid_stream_frees_the_model(llm_server) -> None:
    _open_stream(llm_server.port, max_tokens=256).close()
    started = time.monotonic()
    response = llm_server.chat(json={"messages": QUESTION, "max_tokens": 4}, timeout=60)
    assert response.status_code == 200
    # The 256 tokens the abandoned stream asked for take over 6 s here; its generation stops when the client goes.
    assert time.monotonic() - started < 5


def test_a_request_queued_past_the_timeout_is_a_503(start_server) -> None:
    server = start_server(LLM_QUEUE_TIMEOUT_S="0.5")
    server.wait_ready()
    with _open_stream(server.port, max_tokens=256):
        started = time.monotonic()
        response = server.chat(json={"messages": QUESTION, "max_tokens": 4})
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "service_unavailable"
        assert time.monotonic() - started < 5
    assert server.chat(json={"messages": QUESTION, "max_tokens": 4}).status_code == 200


def test_probes_and_identity(llm_server) -> None:
    assert requests.get(f"{llm_server.url}/healthz", timeout=5).json()["status"] == "alive"
    ready = requests.get(f"{llm_server.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": "smollm2-135m-instruct"}
    version = requests.get(f"{llm_server.url}/version", timeout=5)
    assert version.json() == {"service": "llm", "version": "9.9.9-test", "colour": "green", "release": "r-test",
                              "image": "registry.test/xlerobot/svc@sha256:" + "0" * 64,
                              "model": "smollm2-135m-instruct", "runtime": "llama-cpp-python 0.3.36"}
    assert version.headers["X-Served-By"] == "llm/9.9.9-test/green"


def test_metrics_count_requests_by_status(llm_server) -> None:
    llm_server.chat(json={"messages": []})
    llm_server.chat(json={"messages": QUESTION, "max_tokens": 4})
    body = requests.get(f"{llm_server.url}/metrics", timeout=5).text
    assert 'xl_http_requests_total{endpoint="/v1/chat/completions",service="llm",status="200"}' in body
    assert 'xl_http_requests_total{endpoint="/v1/chat/completions",service="llm",status="400"}' in body
    assert 'xl_http_request_duration_seconds_bucket{endpoint="/v1/chat/completions"' in body
    assert 'xl_inference_seconds_count{service="llm"}' in body
    assert 'xl_http_in_flight_requests{service="llm"}' in body
    assert 'xl_ready{service="llm"} 1.0' in body
    load = [line for line in body.splitlines() if line.startswith("xl_model_load_seconds{")]
    assert load and float(load[0].split()[-1]) > 0
    assert 'xl_build_info{colour="green",release="r-test",service="llm",version="9.9.9-test"} 1.0' in body
    generated = [line for line in body.splitlines() if line.startswith('xl_llm_tokens_total{kind="completion"')]
    assert generated and float(generated[0].split()[-1]) >= 4


def test_garble_fault_answers_a_fixed_sentence(start_server) -> None:
    server = start_server(XL_FAULT="garble")
    server.wait_ready()
    response = server.chat(json={"messages": QUESTION})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == GARBLED_ANSWER
    streamed = server.chat(json={"messages": QUESTION, "stream": True})
    chunks = [json.loads(event) for event in _events(streamed)[:-1]]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in chunks) == GARBLED_ANSWER


def test_never_ready_fault_keeps_readiness_false(start_server) -> None:
    server = start_server(XL_FAULT="never_ready")
    server.wait_alive()
    time.sleep(6)  # well past the model load and warm-up
    ready = requests.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert "never_ready" in ready.json()["reason"]
    assert server.chat(json={"messages": QUESTION}).status_code == 503
    assert 'xl_ready{service="llm"} 0.0' in requests.get(f"{server.url}/metrics", timeout=5).text


def test_errors_after_fault_serves_the_first_requests_then_fails(start_server) -> None:
    server = start_server(XL_FAULT="error_rate=1,errors_after=2")
    server.wait_ready()
    responses = [server.chat(json={"messages": QUESTION, "max_tokens": 2}) for _ in range(4)]
    assert [response.status_code for response in responses] == [200, 200, 500, 500]
    assert responses[-1].json()["error"]["type"] == "server_error"


def test_missing_model_is_reported_on_readyz(start_server, tmp_path) -> None:
    server = start_server(LLM_MODEL_PATH=str(tmp_path / "absent.gguf"))
    server.wait_alive()
    deadline = time.monotonic() + 30
    ready: dict[str, Any] = {}
    while time.monotonic() < deadline:
        ready = requests.get(f"{server.url}/readyz", timeout=5).json()
        if ready["reason"] != "model loading":
            break
        time.sleep(0.25)
    assert "absent.gguf" in ready["reason"]


@pytest.mark.parametrize("env, message", [
    ({"LLM_THREADS": "many"}, "LLM_THREADS='many' is not an integer"),
    ({"LLM_CONTEXT": "32"}, "LLM_CONTEXT=32 is below the minimum 64"),
    ({"LLM_MAX_TOKENS": "300"}, "LLM_MAX_TOKENS=300 is above LLM_MAX_TOKENS_LIMIT=256"),
    ({"LLM_MAX_TOKENS_LIMIT": "600"}, "LLM_MAX_TOKENS_LIMIT=600 leaves no room for a prompt in LLM_CONTEXT=512"),
    ({"LLM_TEMPERATURE": "3"}, "LLM_TEMPERATURE=3.0 must be from 0.0 to 2.0"),
    ({"LLM_GPU_LAYERS": "-2"}, "LLM_GPU_LAYERS=-2 is below the minimum -1"),
    ({"XL_FAULT": "error_rate=lots"}, "XL_FAULT: error_rate='lots' is not a number"),
])
def test_invalid_setting_stops_the_service_with_its_name(start_server, env, message) -> None:
    server = start_server(**env)
    assert server.process.wait(timeout=30) == 2
    assert message in server.log_text()


def test_sigterm_lets_the_generation_in_flight_finish(start_server) -> None:
    server = start_server()
    server.wait_ready()
    results: dict[str, object] = {}

    def call() -> None:
        try:
            results["response"] = server.chat(json={"messages": LONG_ANSWER, "max_tokens": 120, "temperature": 0})
        except requests.RequestException as exc:
            results["error"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.5)  # generation of 120 tokens takes well over a second here
    server.process.terminate()
    worker.join(timeout=120)
    assert "error" not in results, results.get("error")
    response = results["response"]
    assert isinstance(response, requests.Response)
    assert response.status_code == 200
    body = response.json()
    assert body["usage"]["completion_tokens"] > 40, body
    # uvicorn re-raises SIGTERM once the in-flight work is done, so the exit is "terminated", not killed.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)


def test_model_assembly_refuses_a_hash_mismatch(model_path, tmp_path) -> None:  # model_path: wheels on disk
    result = models.assemble_altered("llm", tmp_path, **{"SmolLM2-135M-Instruct.Q4_1.gguf": "0" * 64})
    assert result.returncode == 1
    assert "sha256 mismatch for SmolLM2-135M-Instruct.Q4_1.gguf" in result.stderr
