"""xl_gates: word error rate, gate validation, and gate runs against a real HTTP server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xl_gates as gates

from tests.support.servers import FakeInstance, free_port


@pytest.mark.parametrize("reference, hypothesis, expected", [
    ("Turn off the radio", "turn off the radio.", 0.0),
    ("turn off the radio", "turn of the radio", 0.25),
    ("turn off the radio", "turn off radio", 0.25),
    ("turn off the radio", "please turn off the radio now", 0.5),
    ("", "", 0.0),
    ("", "noise", 1.0),
    ("one two", "", 1.0),
])
def test_word_error_rate(reference: str, hypothesis: str, expected: float) -> None:
    assert gates.word_error_rate(reference, hypothesis) == pytest.approx(expected)


def test_corpus_word_error_rate_weighs_by_reference_length() -> None:
    pairs = [("turn off the radio", "turn off the radio"), ("open the door", "open a door"),
             ("stop", "")]
    assert gates.corpus_word_error_rate(pairs) == pytest.approx(2 / 8)
    assert gates.corpus_word_error_rate([]) == 0.0


@pytest.mark.parametrize("spec, message", [
    ([{"type": "smoke"}], r"gates\[0\].type must be one of"),
    ([{"type": "liveness"}, {"type": "transcription", "text": "hi"}], r"gates\[1\] \(transcription\) needs 'audio'"),
    ([{"type": "transcription", "audio": "/x.wav"}], "needs 'expected_text'"),
    ([{"type": "transcription", "audio": "/x.wav", "text": "hi", "max_wer": 2}], "max_wer must be a number 0..1"),
    ([{"type": "speech", "readback_url": "http://127.0.0.1:1/t"}], r"gates\[0\] \(speech\) needs 'text'"),
    ([{"type": "speech", "text": "hello"}], "needs 'readback_url'"),
    ([{"type": "chat"}], r"gates\[0\] \(chat\) needs 'prompt'"),
    ([{"type": "chat", "prompt": "hi", "max_tokens": 0}], r"max_tokens must be an integer 1..512"),
    ([{"type": "speech", "text": "hi", "readback_url": "http://x/t", "max_wer": -1}], "max_wer must be a number"),
])
def test_bad_gate_specs_are_named(spec: list[dict[str, object]], message: str) -> None:
    with pytest.raises(gates.GateSpecError, match=message):
        gates.validate_gates(spec)


def _clip(tmp_path: Path) -> str:
    path = tmp_path / "clip.wav"
    path.write_bytes(b"RIFF....WAVEfmt ")
    return str(path)


def test_all_gates_pass_against_a_healthy_instance(tmp_path: Path) -> None:
    with FakeInstance() as instance:
        results = gates.run_gates(instance.url, [
            {"type": "liveness", "timeout": 5},
            {"type": "readiness", "timeout": 5},
            {"name": "synthetic", "type": "transcription", "audio": _clip(tmp_path),
             "text": "Turn off the radio in the living room", "max_wer": 0.2},
        ])
    assert [r["name"] for r in results] == ["liveness", "readiness", "synthetic"]
    assert all(r["passed"] for r in results)
    assert results[2]["measured"] == 0.0 and results[2]["threshold"] == 0.2
    assert gates.failure_message("asr", {}, results) is None


def test_readiness_that_never_turns_true_fails_and_stops_the_sequence(tmp_path: Path) -> None:
    with FakeInstance() as instance:
        instance.ready = False
        results = gates.run_gates(instance.url, [
            {"type": "liveness", "timeout": 5},
            {"type": "readiness", "timeout": 1, "interval": 0.2},
            {"type": "transcription", "audio": _clip(tmp_path), "text": "never sent"},
        ])
    assert [r["passed"] for r in results] == [True, False]
    assert "503" in results[1]["why"]
    message = gates.failure_message("asr", {"colour": "green", "version": "1.1.0"}, results)
    assert message is not None
    assert message.startswith("gate 'readiness' failed for service asr (colour green, version 1.1.0)")


def test_wrong_transcript_fails_with_measured_wer(tmp_path: Path) -> None:
    with FakeInstance() as instance:
        instance.transcript = "moor gnivil eht ni oidar eht ffo nrut"
        results = gates.run_gates(instance.url, [
            {"type": "transcription", "audio": _clip(tmp_path), "text": "Turn off the radio in the living room"},
        ])
    assert results[0]["passed"] is False
    assert results[0]["measured"] == 1.0
    assert "word error rate 1.00 > 0.20" in results[0]["why"]


def test_transcription_error_status_is_reported(tmp_path: Path) -> None:
    with FakeInstance() as instance:
        instance.transcription_status = 500
        results = gates.run_gates(instance.url, [
            {"type": "transcription", "audio": _clip(tmp_path), "text": "anything"},
        ])
    assert results[0]["passed"] is False
    assert "failed with 500" in results[0]["why"]


def test_nothing_listening_is_no_answer() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    results = gates.run_gates(url, [{"type": "liveness", "timeout": 0.5, "interval": 0.1}])
    assert results[0]["passed"] is False
    assert "no answer" in results[0]["why"]


def test_multipart_body_carries_fields_and_file() -> None:
    body, content_type = gates.multipart_body({"response_format": "json"}, "file", "a.wav", b"\x00\x01")
    boundary = content_type.split("boundary=")[1]
    assert body.startswith(f"--{boundary}\r\n".encode())
    assert b'name="response_format"\r\n\r\njson' in body
    assert b'name="file"; filename="a.wav"' in body and b"\x00\x01" in body
    assert body.endswith(f"--{boundary}--\r\n".encode())


SPOKEN = "The kitchen lights are now on"


def test_speech_gate_speaks_checks_the_length_and_reads_it_back() -> None:
    with FakeInstance() as tts, FakeInstance() as asr:
        asr.transcript = "the kitchen lights are now on."
        results = gates.run_gates(tts.url, [{"name": "say", "type": "speech", "text": SPOKEN,
                                             "readback_url": f"{asr.url}/v1/audio/transcriptions"}])
    assert tts.spoken == [{"input": SPOKEN, "response_format": "wav"}]
    assert results[0]["passed"] is True, results
    assert results[0]["measured"] == 0.0 and results[0]["audio_seconds"] == 2.0


def test_the_read_back_presents_the_gateway_key_and_no_result_holds_it() -> None:
    key = "internal-" + "k" * 24
    with FakeInstance() as tts, FakeInstance() as asr:
        asr.transcript = "the kitchen lights are now on."
        gate = {"name": "say", "type": "speech", "text": SPOKEN, "readback_url": f"{asr.url}/v1/audio/transcriptions"}
        keyed = gates.run_gates(tts.url, [gate], readback_api_key=key)
        keyless = gates.run_gates(tts.url, [gate])
    assert keyed[0]["passed"] and keyless[0]["passed"]
    assert asr.authorizations == [f"Bearer {key}", ""]
    assert key not in json.dumps(keyed)


def test_speech_gate_fails_on_a_wrong_read_back_with_both_texts() -> None:
    with FakeInstance() as tts, FakeInstance() as asr:
        asr.transcript = "the garage door is open"
        results = gates.run_gates(tts.url, [{"type": "speech", "text": SPOKEN,
                                             "readback_url": f"{asr.url}/v1/audio/transcriptions"}])
    assert results[0]["passed"] is False
    assert results[0]["measured"] > 0.2
    assert "heard 'the garage door is open'" in results[0]["why"]


@pytest.mark.parametrize("seconds, expected", [(0.2, "outside the plausible 0.9-7.0 s"),
                                               (30.0, "30.00 s of audio for 6 words")])
def test_speech_gate_rejects_implausible_lengths_before_the_read_back(seconds: float, expected: str) -> None:
    with FakeInstance() as tts, FakeInstance() as asr:
        tts.speech_seconds = seconds
        results = gates.run_gates(tts.url, [{"type": "speech", "text": SPOKEN,
                                             "readback_url": f"{asr.url}/v1/audio/transcriptions"}])
    assert results[0]["passed"] is False
    assert expected in results[0]["why"]


def test_speech_gate_names_an_answer_that_is_not_audio_and_a_dead_read_back() -> None:
    with FakeInstance() as tts:
        tts.speech_body = b"<html>oops</html>"
        not_audio = gates.run_gates(tts.url, [{"type": "speech", "text": SPOKEN,
                                               "readback_url": f"http://127.0.0.1:{free_port()}/t"}])
        tts.speech_body = None
        no_reader = gates.run_gates(tts.url, [{"type": "speech", "text": SPOKEN, "timeout": 2,
                                               "readback_url": f"http://127.0.0.1:{free_port()}/t"}])
    assert not_audio[0]["measured"] == "not WAV" and "not a WAV file" in not_audio[0]["why"]
    assert no_reader[0]["measured"] == "no read-back" and "failed with no answer" in no_reader[0]["why"]


def test_chat_gate_asks_once_and_wants_a_non_empty_reply() -> None:
    with FakeInstance() as llm:
        passed = gates.run_gates(llm.url, [{"name": "answer", "type": "chat", "prompt": "Capital of France?"}])
        llm.chat_answer = {"choices": [{"message": {"role": "assistant", "content": "  "}}]}
        empty = gates.run_gates(llm.url, [{"type": "chat", "prompt": "Capital of France?"}])
        llm.chat_answer = {"text": "Paris"}
        shapeless = gates.run_gates(llm.url, [{"type": "chat", "prompt": "Capital of France?"}])
        llm.chat_status = 503
        down = gates.run_gates(llm.url, [{"type": "chat", "prompt": "Capital of France?"}])
    assert llm.asked[0] == {"messages": [{"role": "user", "content": "Capital of France?"}], "max_tokens": 16,
                            "temperature": 0}
    assert passed[0]["passed"] and passed[0]["measured"] == "1 word" and passed[0]["reply"] == "Paris."
    assert not empty[0]["passed"] and "the reply to 'Capital of France?' is empty" in empty[0]["why"]
    assert not shapeless[0]["passed"] and "is not a chat completion" in shapeless[0]["why"]
    assert not down[0]["passed"] and "chat request failed with 503" in down[0]["why"]


QUESTION = "Can you turn on the kitchen lights please"


def _interaction_gate(tmp_path, readback_url: str, **extra: object) -> dict:
    clip = tmp_path / "question.wav"
    clip.write_bytes(b"RIFF-question")
    return {"name": "voice", "type": "interaction", "text": QUESTION, "audio": str(clip),
            "readback_url": readback_url, **extra}


def test_interaction_gate_hears_the_question_and_reads_the_spoken_reply_back(tmp_path) -> None:
    with FakeInstance() as multimodal, FakeInstance() as asr:
        asr.transcript = "the kitchen lights are on"
        results = gates.run_gates(multimodal.url, [_interaction_gate(tmp_path, f"{asr.url}/v1/audio/transcriptions")])
    assert multimodal.interactions == 1
    assert results[0]["passed"] is True, results
    assert results[0]["measured"] == 0.0 and results[0]["threshold"] == 0.5
    assert results[0]["reply"] == "The kitchen lights are on." and results[0]["stage_seconds"]["total"] == 1.1


def test_interaction_gate_names_each_way_to_fail(tmp_path) -> None:
    with FakeInstance() as multimodal, FakeInstance() as asr:
        gate = _interaction_gate(tmp_path, f"{asr.url}/v1/audio/transcriptions")
        asr.transcript = "bananas are yellow and the moon is cheese"
        garbled = gates.run_gates(multimodal.url, [gate])
        asr.transcript = "the kitchen lights are on"
        multimodal.interaction_answer = {**multimodal.interaction_answer, "transcript": "what time is it"}
        misheard = gates.run_gates(multimodal.url, [gate])
        multimodal.interaction_answer = {**multimodal.interaction_answer, "transcript": QUESTION, "reply": " "}
        silent = gates.run_gates(multimodal.url, [gate])
        multimodal.interaction_status = 503
        down = gates.run_gates(multimodal.url, [gate])
    assert not garbled[0]["passed"] and "read back with word error rate 1.60 > 0.50" in garbled[0]["why"]
    assert "said 'bananas are yellow" in garbled[0]["why"]
    assert not misheard[0]["passed"] and "heard 'what time is it'" in misheard[0]["why"]
    assert not silent[0]["passed"] and silent[0]["why"] == "the reply text is empty"
    assert not down[0]["passed"] and "interaction request failed with 503" in down[0]["why"]


@pytest.mark.parametrize("missing", ["audio", "text", "readback_url"])
def test_interaction_gate_needs_its_clip_text_and_read_back(tmp_path, missing: str) -> None:
    gate = _interaction_gate(tmp_path, "http://127.0.0.1:9/t")
    del gate[missing]
    with pytest.raises(gates.GateSpecError, match=f"needs '{missing}'"):
        gates.validate_gates([gate])
