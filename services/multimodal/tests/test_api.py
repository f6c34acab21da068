"""The multimodal service over HTTP, in front of the real ASR, LLM and TTS services: voice -> voice, voice and
picture -> voice, per-stage timings and metrics, every bad input, and each downstream failure named by stage."""

from __future__ import annotations

import base64
import http.server
import io
import json
import re
import signal
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from xl_gates import word_error_rate
from xl_multimodal.ocr import render_text

from tests.support import models
from tests.support.servers import free_port
from tests.support.service_process import ServiceProcess

QUESTION = "Can you turn on the kitchen lights please?"


def _interact(server: ServiceProcess, audio: bytes | None, image: bytes | None = None, timeout: float = 120,
              **fields: str) -> requests.Response:
    files = {}
    if audio is not None:
        files["audio"] = ("question.wav", audio, "audio/wav")
    if image is not None:
        files["image"] = ("picture.png", image, "image/png")
    return requests.post(f"{server.url}/v1/interact", files=files, data=fields, timeout=timeout)


def _reply_audio(response: requests.Response) -> bytes:
    body = response.json()
    assert body["audio"]["format"] == "wav"
    return base64.b64decode(body["audio"]["base64"])


@pytest.fixture(scope="module")
def question(speak) -> bytes:
    return speak(QUESTION)


def test_voice_to_voice_round_trip(mm_server, question, transcribe) -> None:
    response = _interact(mm_server, question)
    assert response.status_code == 200, response.text
    body = response.json()
    assert word_error_rate(QUESTION, body["transcript"]) <= 0.2, body["transcript"]
    assert body["reply"].strip() and body["image_text"] is None
    audio = _reply_audio(response)
    with wave.open(io.BytesIO(audio)) as clip:
        seconds = clip.getnframes() / clip.getframerate()
    assert seconds > 0.5
    heard = transcribe(audio)
    assert heard.strip(), "the reply audio must contain speech"
    assert word_error_rate(body["reply"], heard) <= 0.35, (body["reply"], heard)
    timings = body["timings"]
    assert set(timings) == {"asr", "llm", "tts", "total"}
    assert all(value > 0 for value in timings.values())
    assert timings["total"] >= timings["asr"] + timings["llm"] + timings["tts"] - 0.01
    assert body["served_by"] == {"asr": "asr/9.9.9-test/green", "llm": "llm/9.9.9-test/green",
                                 "tts": "tts/9.9.9-test/green"}
    assert response.headers["X-Served-By"] == "multimodal/9.9.9-test/green"


def test_text_in_a_picture_is_read_beside_the_question(mm_server, speak) -> None:
    picture = render_text("MILK\nEGGS\nBREAD", size=(400, 260))
    response = _interact(mm_server, speak("What does this shopping list say?"), image=picture)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image_text"].split() == ["MILK", "EGGS", "BREAD"]
    assert set(body["timings"]) == {"asr", "ocr", "llm", "tts", "total"}


def test_stage_timings_are_in_the_metrics(mm_server, question) -> None:
    assert _interact(mm_server, question).status_code == 200
    text = requests.get(f"{mm_server.url}/metrics", timeout=10).text
    for stage in ("asr", "llm", "tts"):
        assert f'xl_stage_seconds_count{{service="multimodal",stage="{stage}"}}' in text
    assert 'xl_http_requests_total{endpoint="/v1/interact",service="multimodal",status="200"}' in text
    # Error series exist at 0 before any error, so the first one is visible to rate().
    assert 'xl_http_requests_total{endpoint="/v1/interact",service="multimodal",status="500"} 0.0' in text
    assert 'xl_ready{service="multimodal"} 1.0' in text


@pytest.mark.parametrize("files, fields, status, param, words", [
    ({}, {}, 400, "audio", "expected a multipart"),
    ({"image": ("p.png", b"x", "image/png")}, {}, 400, "audio", "missing required file field 'audio'"),
    ({"audio": ("a.wav", b"", "audio/wav")}, {}, 400, "audio", "audio is empty"),
    ({"audio": ("a.wav", b"not audio at all", "audio/wav")}, {}, 400, "audio", "refused by speech recognition"),
    ({"audio": ("a.wav", b"\0" * 2_000_001, "audio/wav")}, {}, 413, "audio", "exceeds the limit"),
    ({"audio": ("a.wav", b"RIFF", "audio/wav"), "image": ("p.png", b"not an image", "image/png")}, {}, 400,
     "image", "could not be decoded"),
    ({"audio": ("a.wav", b"RIFF", "audio/wav")}, {"mood": "happy"}, 400, "mood", "unknown field"),
    ({"audio": ("a.wav", b"RIFF", "audio/wav")}, {"language": "english!"}, 400, "language", "ISO-639-1"),
    ({"audio": ("a.wav", b"RIFF", "audio/wav")}, {"voice": "../etc"}, 400, "voice", "voice name"),
])
def test_bad_input_is_a_4xx_naming_the_field_and_the_service_stays_ready(mm_server, files, fields, status, param,
                                                                         words) -> None:
    if files:
        response = requests.post(f"{mm_server.url}/v1/interact", files=files, data=fields, timeout=60)
    else:
        response = requests.post(f"{mm_server.url}/v1/interact", data=b"{}", timeout=60,
                                 headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert requests.get(f"{mm_server.url}/readyz", timeout=5).status_code == 200


def test_an_oversized_picture_is_refused_before_decoding(mm_server, question) -> None:
    big = render_text("too big", size=(1200, 1000))
    response = _interact(mm_server, question, image=big)
    assert response.status_code == 400, response.text
    assert "1200x1000 pixels, the limit is 1000000" in response.json()["error"]["message"]


def test_silence_is_a_422_naming_the_audio(mm_server) -> None:
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(16000)
        clip.writeframes(b"\0\0" * 16000)
    response = _interact(mm_server, out.getvalue())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["stage"] == "asr"


class _Failing(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"error": {"message": "model crashed", "type": "server_error"}}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def failing_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/chat/completions"
    server.shutdown()


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1/chat/completions"


def test_each_downstream_failure_is_named_by_stage_and_never_hangs(start_server, stage_env, question,
                                                                   silent_server, failing_url) -> None:
    stages = stage_env
    cases = [
        ("llm", {"MM_LLM_URL": _closed_port_url()}, 503, "unreachable"),
        ("llm", {"MM_LLM_URL": failing_url}, 502, "model crashed"),
        ("llm", {"MM_LLM_URL": f"{silent_server.url}/v1/chat/completions", "MM_LLM_TIMEOUT_S": "2"}, 503,
         "did not answer within 2 s"),
        ("tts", {"MM_TTS_URL": f"{silent_server.url}/v1/audio/speech", "MM_TTS_TIMEOUT_S": "2"}, 503,
         "did not answer within 2 s"),
        ("asr", {"MM_ASR_URL": _closed_port_url().replace("chat/completions", "audio/transcriptions")}, 503,
         "unreachable"),
    ]
    servers = [(stage, start_server(**{**stages, **env}), status, words) for stage, env, status, words in cases]
    for stage, server, status, words in servers:
        server.wait_ready()
        started = time.monotonic()
        response = _interact(server, question, timeout=30)
        assert time.monotonic() - started < 20, f"{stage}: the failure took too long to surface"
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["stage"] == stage and words in error["message"], error
        metrics = requests.get(f"{server.url}/metrics", timeout=5).text
        assert f'xl_stage_failures_total{{service="multimodal",stage="{stage}",status="{status}"}} 1.0' in metrics
        assert requests.get(f"{server.url}/readyz", timeout=5).status_code == 200


class _KeyedChat(http.server.BaseHTTPRequestHandler):
    """An LLM stage that, like an authenticating gateway, answers only the right bearer token."""

    key = "stage-key-" + "0123456789abcdef"
    seen: list[str] = []

    def log_message(self, *args: object) -> None:
        return

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        presented = self.headers.get("Authorization", "")
        _KeyedChat.seen.append(presented)
        if presented != f"Bearer {self.key}":
            body, status = b'{"error":{"message":"a valid API key is required","type":"unauthorized"}}', 401
        else:
            body, status = json.dumps({"choices": [{"message": {"role": "assistant",
                                                                "content": "The radio is off."}}]}).encode(), 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_the_gateway_api_key_goes_with_every_stage_call_and_never_into_the_log(start_server, stage_env,
                                                                               question) -> None:
    chat = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeyedChat)
    threading.Thread(target=chat.serve_forever, daemon=True).start()
    try:
        llm = f"http://127.0.0.1:{chat.server_address[1]}/v1/chat/completions"
        keyed = start_server(**{**stage_env, "MM_LLM_URL": llm, "XL_GATEWAY_API_KEY": _KeyedChat.key})
        keyless = start_server(**{**stage_env, "MM_LLM_URL": llm})
        keyed.wait_ready()
        keyless.wait_ready()
        answered = _interact(keyed, question, timeout=60)
        assert answered.status_code == 200, answered.text
        assert answered.json()["reply"] == "The radio is off."
        refused = _interact(keyless, question, timeout=60)
        assert refused.status_code == 502 and refused.json()["error"]["stage"] == "llm", refused.text
        assert "401" in refused.json()["error"]["message"]
        assert _KeyedChat.seen == [f"Bearer {_KeyedChat.key}", ""]
        assert _KeyedChat.key not in keyed.log_text()
    finally:
        chat.shutdown()


def test_garble_fault_speaks_other_words_than_the_reply(start_server, stage_env, question, transcribe) -> None:
    server = start_server(**stage_env, XL_FAULT="garble")
    server.wait_ready()
    response = _interact(server, question)
    assert response.status_code == 200, response.text
    heard = transcribe(_reply_audio(response))
    assert word_error_rate(response.json()["reply"], heard) > 0.5, heard


def test_never_ready_fault_and_missing_models_keep_it_unready(start_server) -> None:
    never = start_server(XL_FAULT="never_ready")
    missing = start_server(MM_OCR_MODEL_DIR="/nonexistent")
    for server, reason in ((never, "never_ready"), (missing, "OCR model files missing")):
        server.wait_alive()
        deadline = time.monotonic() + 60
        while True:
            answer = requests.get(f"{server.url}/readyz", timeout=5)
            if reason in answer.text or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answer.status_code == 503 and reason in answer.json()["reason"], answer.text
        assert _interact(server, b"RIFF").status_code == 503


def test_sigterm_during_an_interaction_lets_it_finish(start_server, stage_env, question) -> None:
    server = start_server(**stage_env, XL_FAULT="latency_ms=1500")
    server.wait_ready()
    result: dict[str, requests.Response] = {}
    worker = threading.Thread(target=lambda: result.setdefault("r", _interact(server, question)))
    worker.start()
    time.sleep(0.7)
    server.process.send_signal(signal.SIGTERM)
    worker.join(timeout=120)
    assert result["r"].status_code == 200, result["r"].text
    # uvicorn re-raises SIGTERM once the in-flight work is done, so the exit is "terminated", not killed.
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)


def test_model_assembly_refuses_a_hash_mismatch(tmp_path) -> None:
    from xl_service.assemble import ModelAssemblyError, assemble

    service_dir = Path(__file__).resolve().parents[1]
    models.pp_ocrv4()  # the wheels are on disk after this
    manifest = json.loads((service_dir / "model.json").read_text())
    manifest["sha256"]["ch_PP-OCRv4_rec_infer.onnx"] = "0" * 64
    with pytest.raises(ModelAssemblyError, match=re.escape("sha256 mismatch for ch_PP-OCRv4_rec_infer.onnx")):
        assemble(manifest, models.CACHE / "model-wheels", tmp_path / "ocr")
    del manifest["sha256"]["ch_PP-OCRv4_det_infer.onnx"]
    with pytest.raises(ModelAssemblyError, match=re.escape("without a sha256: ['ch_PP-OCRv4_det_infer.onnx']")):
        assemble(manifest, models.CACHE / "model-wheels", tmp_path / "ocr")
