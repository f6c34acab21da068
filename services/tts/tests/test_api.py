"""The TTS service over HTTP with the real Piper voice: audio, formats, speed, bad input, probes, metrics, faults,
and a round trip through the ASR service's Whisper model."""

from __future__ import annotations

import io
import shutil
import signal
import statistics
import threading
import time
import wave

import pytest
import requests
from xl_gates import corpus_word_error_rate, word_error_rate

from tests.support import models
from tests.support.audio import golden_texts

SENTENCE = "Please turn on the kitchen lights and set the alarm for seven."
PARAGRAPH = ("Good morning. The weather today is sunny with a light breeze from the west. "
             "Remember to water the plants in the garden before noon, and take the bins out tonight.")


def _wav(response: requests.Response) -> tuple[tuple[int, int, int], bytes]:
    """(channels, sample width, rate) and the frames of a WAV response."""
    with wave.open(io.BytesIO(response.content)) as clip:
        return (clip.getnchannels(), clip.getsampwidth(), clip.getframerate()), clip.readframes(clip.getnframes())


def _seconds(response: requests.Response) -> float:
    (_, width, rate), frames = _wav(response)
    return len(frames) / width / rate


def test_sentence_is_spoken_as_wav_of_plausible_length(tts_server) -> None:
    response = tts_server.speak(json={"input": SENTENCE})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    audio_format, frames = _wav(response)
    assert audio_format == (1, 2, 22050)
    seconds = len(frames) / 2 / 22050
    assert 0.5 <= seconds <= 15
    assert float(response.headers["X-Audio-Seconds"]) == pytest.approx(seconds, abs=0.002)
    assert response.headers["X-Served-By"] == "tts/9.9.9-test/green"

    longer = tts_server.speak(json={"input": PARAGRAPH, "voice": "joe", "model": "tts-1"})
    assert longer.status_code == 200, longer.text
    assert _seconds(longer) > 1.5 * seconds


def test_pcm_is_raw_16_bit_mono_at_the_voice_rate(tts_server) -> None:
    response = tts_server.speak(json={"input": SENTENCE, "response_format": "pcm"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/pcm"
    assert not response.content.startswith(b"RIFF")
    assert len(response.content) % 2 == 0
    rate = int(response.headers["X-Sample-Rate"])
    assert rate == 22050
    assert float(response.headers["X-Audio-Seconds"]) == pytest.approx(len(response.content) / 2 / rate, abs=0.002)


def test_speed_changes_duration(tts_server) -> None:
    # Piper draws its phoneme durations with noise, so one clip of each speed can be off by a fifth: the median of
    # three is compared. Ignoring the speed gives ratios near 1, obeying it about 0.5 and 2.
    def median_seconds(**speed: float) -> float:
        return statistics.median(_seconds(tts_server.speak(json={"input": SENTENCE, **speed})) for _ in range(3))

    normal, fast, slow = median_seconds(), median_seconds(speed=2.0), median_seconds(speed=0.5)
    assert fast < 0.75 * normal < normal < slow / 1.4, (fast, normal, slow)


def test_voice_aliases_speak_with_the_one_voice(tts_server) -> None:
    for voice in ("joe", "alloy", "nova"):
        response = tts_server.speak(json={"input": "Hello there.", "voice": voice})
        assert response.status_code == 200, f"{voice}: {response.text}"


@pytest.mark.parametrize("case, request_kwargs, status, param, words", [
    ("missing input", {"json": {"voice": "joe"}}, 400, "input", "missing required field 'input'"),
    ("empty input", {"json": {"input": "   "}}, 400, "input", "must not be empty"),
    ("input not text", {"json": {"input": 42}}, 400, "input", "must be a string"),
    ("input too long", {"json": {"input": "word " * 100}}, 400, "input", "the limit is 300"),
    ("nothing speakable", {"json": {"input": "...."}}, 400, "input", "nothing that can be spoken"),
    ("NUL in input", {"json": {"input": "hello\x00world"}}, 400, "input", "NUL"),
    ("not JSON", {"data": b"input=hello", "headers": {"content-type": "application/json"}}, 400, "input",
     "not valid JSON"),
    ("JSON array", {"json": ["hello"]}, 400, "input", "JSON object"),
    ("form body", {"data": {"input": "hello"}}, 400, "input", "application/json"),
    ("oversized body", {"json": {"input": "hi", "padding": "x" * 5000}}, 413, "input", "exceeds the limit"),
    ("oversized chunked body", {"data": iter([b'{"input": "hi", "padding": "', b"x" * 5000, b'"}']),
                                "headers": {"content-type": "application/json"}}, 413, "input", "exceeds the limit"),
    ("unknown voice", {"json": {"input": "hello", "voice": "bogus"}}, 400, "voice", "unknown voice 'bogus'"),
    ("voice not text", {"json": {"input": "hello", "voice": 7}}, 400, "voice", "unknown voice 7"),
    ("mp3 format", {"json": {"input": "hello", "response_format": "mp3"}}, 400, "response_format",
     "must be one of wav, pcm"),
    ("speed too low", {"json": {"input": "hello", "speed": 0.1}}, 400, "speed", "from 0.25 to 4.0"),
    ("speed too high", {"json": {"input": "hello", "speed": 4.5}}, 400, "speed", "from 0.25 to 4.0"),
    ("speed as text", {"json": {"input": "hello", "speed": "fast"}}, 400, "speed", "'fast'"),
    ("speed as bool", {"json": {"input": "hello", "speed": True}}, 400, "speed", "True"),
    ("speed NaN", {"data": b'{"input": "hello", "speed": NaN}', "headers": {"content-type": "application/json"}},
     400, "speed", "nan"),
])
def test_bad_input_is_a_named_4xx_and_the_service_stays_ready(tts_server, case, request_kwargs, status, param,
                                                                words) -> None:
    response = tts_server.speak(**request_kwargs)
    assert response.status_code == status, f"{case}: {response.text[:300]}"
    error = response.json()["error"]
    assert error["param"] == param, case
    assert words in error["message"], case
    assert requests.get(f"{tts_server.url}/readyz", timeout=5).status_code == 200


def test_service_still_speaks_after_bad_input(tts_server) -> None:
    tts_server.speak(data=b"{broken", headers={"content-type": "application/json"})
    tts_server.speak(json={"input": "hello", "speed": 99})
    response = tts_server.speak(json={"input": "Still here."})
    assert response.status_code == 200
    assert _seconds(response) > 0.3


def test_probes_and_identity(tts_server) -> None:
    assert requests.get(f"{tts_server.url}/healthz", timeout=5).json()["status"] == "alive"
    ready = requests.get(f"{tts_server.url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": "piper-joe-medium", "engine": "piper"}
    version = requests.get(f"{tts_server.url}/version", timeout=5)
    assert version.json() == {"service": "tts", "version": "9.9.9-test", "colour": "green", "release": "r-test",
                              "image": "registry.test/xlerobot/svc@sha256:" + "0" * 64,
                              "model": "piper-joe-medium", "engine": "piper"}
    assert version.headers["X-Served-By"] == "tts/9.9.9-test/green"


def test_metrics_count_requests_by_status(tts_server) -> None:
    tts_server.speak(json={"input": ""})
    tts_server.speak(json={"input": "Count me."})
    body = requests.get(f"{tts_server.url}/metrics", timeout=5).text
    assert 'xl_http_requests_total{endpoint="/v1/audio/speech",service="tts",status="200"}' in body
    assert 'xl_http_requests_total{endpoint="/v1/audio/speech",service="tts",status="400"}' in body
    assert 'xl_http_request_duration_seconds_bucket{endpoint="/v1/audio/speech"' in body
    assert 'xl_inference_seconds_count{service="tts"}' in body
    assert 'xl_http_in_flight_requests{service="tts"}' in body
    assert 'xl_ready{service="tts"} 1.0' in body
    load = [line for line in body.splitlines() if line.startswith("xl_model_load_seconds{")]
    assert load and float(load[0].split()[-1]) > 0
    assert 'xl_build_info{colour="green",release="r-test",service="tts",version="9.9.9-test"} 1.0' in body


def test_round_trip_through_speech_recognition(tts_server, transcribe) -> None:
    heard = []
    for text in [SENTENCE, *golden_texts()]:
        response = tts_server.speak(json={"input": text})
        assert response.status_code == 200, response.text
        heard.append((text, transcribe(response.content)))
    assert corpus_word_error_rate(heard) <= 0.1, heard
    good = [text for text, transcript in heard if word_error_rate(text, transcript) <= 0.2]
    assert len(good) >= 0.85 * len(heard), heard


def test_garble_fault_speaks_another_sentence(start_server, transcribe) -> None:
    server = start_server(XL_FAULT="garble")
    server.wait_ready()
    response = server.speak(json={"input": SENTENCE})
    assert response.status_code == 200
    heard = transcribe(response.content)
    assert word_error_rate(SENTENCE, heard) > 0.5, heard


def test_never_ready_fault_keeps_readiness_false(start_server) -> None:
    server = start_server(XL_FAULT="never_ready")
    server.wait_alive()
    time.sleep(6)  # well past the voice load and warm-up
    ready = requests.get(f"{server.url}/readyz", timeout=5)
    assert ready.status_code == 503
    assert "never_ready" in ready.json()["reason"]
    assert server.speak(json={"input": "hello"}).status_code == 503


def test_errors_after_fault_serves_the_first_requests_then_fails(start_server) -> None:
    server = start_server(XL_FAULT="error_rate=1,errors_after=2")
    server.wait_ready()
    statuses = [server.speak(json={"input": "Hello."}).status_code for _ in range(4)]
    assert statuses == [200, 200, 500, 500]


def test_missing_voice_is_reported_on_readyz(start_server, tmp_path) -> None:
    server = start_server(TTS_VOICE_MODEL=str(tmp_path / "absent.onnx"))
    server.wait_alive()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready = requests.get(f"{server.url}/readyz", timeout=5).json()
        if ready["reason"] != "voice loading":
            break
        time.sleep(0.25)
    assert "absent.onnx" in ready["reason"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed on this host")
def test_espeak_fallback_serves_when_the_voice_cannot_load(start_server, tmp_path, transcribe) -> None:
    server = start_server(TTS_VOICE_MODEL=str(tmp_path / "absent.onnx"), TTS_FALLBACK_ENGINE="espeak-ng")
    server.wait_ready(timeout=60)
    ready = requests.get(f"{server.url}/readyz", timeout=5).json()
    assert ready["engine"] == "espeak-ng"
    assert "absent.onnx" in ready["fallback_reason"]
    response = server.speak(json={"input": "Open the front door"})
    assert response.status_code == 200
    assert word_error_rate("Open the front door", transcribe(response.content)) <= 0.2


@pytest.mark.parametrize("env, message", [
    ({"TTS_CPU_THREADS": "many"}, "TTS_CPU_THREADS='many' is not an integer"),
    ({"TTS_MAX_INPUT_CHARS": "50000"}, "TTS_MAX_BODY_BYTES=65536 cannot carry TTS_MAX_INPUT_CHARS=50000"),
    ({"TTS_FALLBACK_ENGINE": "festival"}, "TTS_FALLBACK_ENGINE='festival' is not a fallback engine"),
    ({"XL_FAULT": "error_rate=lots"}, "XL_FAULT: error_rate='lots' is not a number"),
])
def test_invalid_setting_stops_the_service_with_its_name(start_server, env, message) -> None:
    server = start_server(**env)
    assert server.process.wait(timeout=30) == 2
    assert message in server.log_text()


def test_sigterm_lets_the_request_in_flight_finish(start_server) -> None:
    # The injected latency holds the request in flight long enough for the signal to land mid-request.
    server = start_server(XL_FAULT="latency_ms=1500")
    server.wait_ready()
    results: dict[str, object] = {}

    def call() -> None:
        try:
            results["response"] = server.speak(json={"input": PARAGRAPH})
        except requests.RequestException as exc:
            results["error"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(0.5)
    server.process.terminate()
    worker.join(timeout=60)
    assert "error" not in results, results.get("error")
    response = results["response"]
    assert isinstance(response, requests.Response)
    assert response.status_code == 200
    assert _seconds(response) > 3
    # uvicorn re-raises SIGTERM once the in-flight work is done, so the exit is "terminated", not killed.
    assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)


def test_voice_assembly_refuses_a_hash_mismatch(voice_model, tmp_path) -> None:  # voice_model: wheels on disk
    result = models.assemble_altered("tts", tmp_path, **{"en_US-joe-medium.onnx.json": "0" * 64})
    assert result.returncode == 1
    assert "sha256 mismatch for en_US-joe-medium.onnx.json" in result.stderr
