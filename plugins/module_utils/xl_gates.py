# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deploy gates: ordered checks a new instance must pass before it may take traffic.

Gates are data (a list of dicts from configuration); this module executes them against one
instance and reports each with its measured value and threshold. Standard library only, because
the checks run on the host that runs the instance.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import io
import json
import re
import time
import urllib.error
import urllib.request
import uuid
import wave
from collections.abc import Callable
from typing import Any

GATE_TYPES = ("liveness", "readiness", "transcription", "speech", "chat", "interaction", "version")


class GateSpecError(ValueError):
    """A gate definition is malformed."""


def normalise_words(text: str) -> list[str]:
    """Lower-case words without punctuation, the usual normalisation before scoring speech recognition."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Levenshtein distance over words divided by the reference length (1.0 when the reference is empty
    and the hypothesis is not)."""
    ref, hyp = normalise_words(reference), normalise_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, hyp_word in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1] / len(ref)


def corpus_word_error_rate(pairs: list[tuple[str, str]]) -> float:
    """Word error rate over a set of (reference, hypothesis) pairs: all word edits over all reference words, so
    long utterances weigh more than short ones (the usual way to report a test set)."""
    edits = words = 0.0
    for reference, hypothesis in pairs:
        count = len(normalise_words(reference))
        edits += word_error_rate(reference, hypothesis) * max(count, 1)
        words += max(count, 1)
    return edits / words if words else 0.0


def http_request_bytes(url: str, timeout: float, data: bytes | None = None,
                       headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Return (status, body); status 0 means no HTTP answer at all (refused, reset, timed out)."""
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return 0, f"{type(exc).__name__}: {reason}".encode()


def http_request(url: str, timeout: float, data: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Like http_request_bytes, with the body decoded as text."""
    status, body = http_request_bytes(url, timeout, data, headers)
    return status, body.decode(errors="replace")


def wav_seconds(audio: bytes) -> float:
    """Duration of a WAV file; raises ValueError when the bytes are not one."""
    try:
        with wave.open(io.BytesIO(audio)) as clip:
            rate = clip.getframerate()
            return clip.getnframes() / rate if rate else 0.0
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a WAV file: {exc}") from exc


def multipart_body(fields: dict[str, str], file_field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def validate_gates(gates: list[dict[str, Any]]) -> None:
    for index, gate in enumerate(gates):
        kind = gate.get("type")
        if kind not in GATE_TYPES:
            raise GateSpecError(f"gates[{index}].type must be one of {', '.join(GATE_TYPES)}, got {kind!r}")
        if kind == "transcription":
            if not gate.get("audio"):
                raise GateSpecError(f"gates[{index}] ({kind}) needs 'audio'")
            if not (gate.get("expected_text") or gate.get("text")):
                raise GateSpecError(f"gates[{index}] ({kind}) needs 'expected_text' (or 'text')")
        if kind == "speech":
            if not gate.get("text"):
                raise GateSpecError(f"gates[{index}] ({kind}) needs 'text' to speak")
            if not gate.get("readback_url"):
                raise GateSpecError(f"gates[{index}] ({kind}) needs 'readback_url', a transcription endpoint "
                                    "that reads the speech back")
        if kind == "interaction":
            for key, why in (("audio", "the spoken question (a WAV file)"), ("text", "the question's words"),
                             ("readback_url", "a transcription endpoint that reads the reply back")):
                if not gate.get(key):
                    raise GateSpecError(f"gates[{index}] ({kind}) needs '{key}', {why}")
        if kind == "chat":
            if not gate.get("prompt"):
                raise GateSpecError(f"gates[{index}] ({kind}) needs 'prompt'")
            max_tokens = gate.get("max_tokens", 16)
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= 512:
                raise GateSpecError(f"gates[{index}].max_tokens must be an integer 1..512, got {max_tokens!r}")
        if kind == "version" and not gate.get("version"):
            raise GateSpecError(f"gates[{index}] ({kind}) needs 'version', the version /version must answer")
        if kind in ("transcription", "speech", "interaction"):
            max_wer = gate.get("max_wer", 0.2)
            if not isinstance(max_wer, (int, float)) or not 0 <= max_wer <= 1:
                raise GateSpecError(f"gates[{index}].max_wer must be a number 0..1, got {max_wer!r}")


def _poll_ok(url: str, timeout: float, interval: float, clock: Callable[[], float],
             sleep: Callable[[float], None]) -> dict[str, Any]:
    started = clock()
    attempts, status, body = 0, 0, ""
    while True:
        attempts += 1
        status, body = http_request(url, timeout=min(5.0, max(timeout, 0.5)))
        if status == 200:
            return {"passed": True, "measured": f"HTTP 200 after {clock() - started:.1f} s", "attempts": attempts,
                    "seconds": round(clock() - started, 3)}
        if clock() - started >= timeout:
            return {"passed": False, "attempts": attempts, "seconds": round(clock() - started, 3),
                    "measured": f"HTTP {status or 'no answer'}",
                    "why": f"{url} did not answer 200 within {timeout:.0f} s (last: {status or 'no answer'} "
                           f"{body.strip()[:160]})"}
        sleep(interval)


def _transcription(base_url: str, gate: dict[str, Any]) -> dict[str, Any]:
    with open(gate["audio"], "rb") as handle:
        audio = handle.read()
    body, content_type = multipart_body({"response_format": "json"}, "file", "gate.wav", audio)
    started = time.monotonic()
    status, answer = http_request(f"{base_url}{gate.get('path', '/v1/audio/transcriptions')}",
                                  timeout=float(gate.get("timeout", 60)), data=body,
                                  headers={"Content-Type": content_type})
    seconds = round(time.monotonic() - started, 3)
    max_wer = float(gate.get("max_wer", 0.2))
    if status != 200:
        return {"passed": False, "seconds": seconds, "measured": f"HTTP {status or 'no answer'}",
                "why": f"transcription request failed with {status or 'no answer'}: {answer.strip()[:160]}"}
    try:
        text = json.loads(answer)["text"]
    except (ValueError, KeyError, TypeError):
        return {"passed": False, "seconds": seconds, "measured": "unparseable answer",
                "why": f"answer is not {{'text': ...}} JSON: {answer.strip()[:160]}"}
    expected = gate.get("expected_text") or gate["text"]
    wer = word_error_rate(expected, text)
    result = {"passed": wer <= max_wer, "seconds": seconds, "measured": round(wer, 3), "threshold": max_wer,
              "transcript": text}
    if not result["passed"]:
        result["why"] = (f"word error rate {wer:.2f} > {max_wer:.2f} (expected {expected!r}, "
                         f"got {text!r})")
    return result


def plausible_speech_seconds(text: str) -> tuple[float, float]:
    """Bounds for the length of `text` spoken at a normal pace: 0.15 to 1 s a word, plus a second of pauses."""
    words = max(len(normalise_words(text)), 1)
    return round(0.15 * words, 2), round(1.0 * words + 1.0, 2)


def _readback(url: str, audio: bytes, timeout: float, headers: dict[str, str] | None = None,
              ) -> tuple[str | None, str]:
    """Transcribe audio with a speech-recognition endpoint (through the gateway, `headers` carrying its API key):
    (text, "") or (None, why)."""
    body, content_type = multipart_body({"response_format": "json"}, "file", "speech.wav", audio)
    status, answer = http_request(url, timeout=timeout, data=body, headers={**(headers or {}),
                                                                            "Content-Type": content_type})
    if status != 200:
        return None, f"the read-back at {url} failed with {status or 'no answer'}: {answer.strip()[:160]}"
    try:
        return str(json.loads(answer)["text"]), ""
    except (ValueError, KeyError, TypeError):
        return None, f"the read-back at {url} did not answer {{'text': ...}} JSON: {answer.strip()[:160]}"


def _speech(base_url: str, gate: dict[str, Any], readback_headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Speak the gate's text, check the audio is WAV of a plausible length, and have speech recognition read
    it back within the word error rate threshold."""
    text = gate["text"]
    timeout = float(gate.get("timeout", 60))
    started = time.monotonic()
    request = json.dumps({"input": text, "response_format": "wav"}).encode()
    status, audio = http_request_bytes(f"{base_url}{gate.get('path', '/v1/audio/speech')}", timeout=timeout,
                                       data=request, headers={"Content-Type": "application/json"})
    if status != 200:
        return {"passed": False, "seconds": round(time.monotonic() - started, 3),
                "measured": f"HTTP {status or 'no answer'}",
                "why": f"speech request failed with {status or 'no answer'}: "
                       f"{audio.decode(errors='replace').strip()[:160]}"}
    shortest, longest = plausible_speech_seconds(text)
    shortest, longest = float(gate.get("min_seconds", shortest)), float(gate.get("max_seconds", longest))
    try:
        seconds = wav_seconds(audio)
    except ValueError as exc:
        return {"passed": False, "seconds": round(time.monotonic() - started, 3), "measured": "not WAV",
                "why": f"the answer to a speech request is {exc}"}
    if not shortest <= seconds <= longest:
        return {"passed": False, "seconds": round(time.monotonic() - started, 3),
                "measured": f"{seconds:.2f} s of audio", "threshold": f"{shortest}-{longest} s",
                "why": f"{seconds:.2f} s of audio for {len(normalise_words(text))} words is outside the "
                       f"plausible {shortest}-{longest} s"}
    heard, why = _readback(gate["readback_url"], audio, timeout, readback_headers)
    elapsed = round(time.monotonic() - started, 3)
    if heard is None:
        return {"passed": False, "seconds": elapsed, "measured": "no read-back", "why": why,
                "audio_seconds": round(seconds, 2)}
    max_wer = float(gate.get("max_wer", 0.2))
    wer = word_error_rate(text, heard)
    result = {"passed": wer <= max_wer, "seconds": elapsed, "measured": round(wer, 3), "threshold": max_wer,
              "audio_seconds": round(seconds, 2), "transcript": heard}
    if not result["passed"]:
        result["why"] = f"read back with word error rate {wer:.2f} > {max_wer:.2f} (spoke {text!r}, heard {heard!r})"
    return result


def _chat(base_url: str, gate: dict[str, Any]) -> dict[str, Any]:
    """Ask the new instance one question; it must answer in the chat-completion shape with a non-empty reply.

    A small model's answer is judged only for shape and presence, not for being right."""
    request = json.dumps({"messages": [{"role": "user", "content": gate["prompt"]}],
                          "max_tokens": int(gate.get("max_tokens", 16)), "temperature": 0}).encode()
    started = time.monotonic()
    status, answer = http_request(f"{base_url}{gate.get('path', '/v1/chat/completions')}",
                                  timeout=float(gate.get("timeout", 60)), data=request,
                                  headers={"Content-Type": "application/json"})
    seconds = round(time.monotonic() - started, 3)
    if status != 200:
        return {"passed": False, "seconds": seconds, "measured": f"HTTP {status or 'no answer'}",
                "why": f"chat request failed with {status or 'no answer'}: {answer.strip()[:160]}"}
    try:
        reply = json.loads(answer)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return {"passed": False, "seconds": seconds, "measured": "unparseable answer",
                "why": f"answer is not a chat completion: {answer.strip()[:160]}"}
    if not isinstance(reply, str) or not reply.strip():
        return {"passed": False, "seconds": seconds, "measured": "empty reply", "threshold": "non-empty",
                "why": f"the reply to {gate['prompt']!r} is empty"}
    words = len(reply.split())
    return {"passed": True, "seconds": seconds, "measured": f"{words} word{'' if words == 1 else 's'}",
            "threshold": "non-empty",
            "reply": reply[:200]}


def _interaction(base_url: str, gate: dict[str, Any], readback_headers: dict[str, str] | None = None,
                 ) -> dict[str, Any]:
    """Voice in, voice out: send the spoken question, then check that the instance heard it (transcript within
    the threshold), answered (a non-empty reply), and spoke that answer (its audio read back by the live speech
    recognition within the threshold)."""
    with open(gate["audio"], "rb") as handle:
        question = handle.read()
    body, content_type = multipart_body({}, "audio", "question.wav", question)
    timeout = float(gate.get("timeout", 120))
    max_wer = float(gate.get("max_wer", 0.5))
    started = time.monotonic()
    status, answer = http_request(f"{base_url}{gate.get('path', '/v1/interact')}", timeout=timeout, data=body,
                                  headers={"Content-Type": content_type})
    seconds = round(time.monotonic() - started, 3)
    if status != 200:
        return {"passed": False, "seconds": seconds, "measured": f"HTTP {status or 'no answer'}",
                "why": f"interaction request failed with {status or 'no answer'}: {answer.strip()[:200]}"}
    try:
        result = json.loads(answer)
        transcript, reply = str(result["transcript"]), str(result["reply"])
        audio = base64.b64decode(result["audio"]["base64"], validate=True)
        timings = result.get("timings", {})
    except (ValueError, KeyError, TypeError, binascii.Error):
        return {"passed": False, "seconds": seconds, "measured": "unparseable answer",
                "why": f"answer is not an interaction result: {answer.strip()[:160]}"}
    heard_wer = word_error_rate(gate["text"], transcript)
    if heard_wer > max_wer:
        return {"passed": False, "seconds": seconds, "measured": round(heard_wer, 3), "threshold": max_wer,
                "why": f"the question was heard with word error rate {heard_wer:.2f} > {max_wer:.2f} "
                       f"(asked {gate['text']!r}, heard {transcript!r})"}
    if not reply.strip():
        return {"passed": False, "seconds": seconds, "measured": "empty reply", "threshold": "non-empty",
                "why": "the reply text is empty"}
    try:
        audio_seconds = wav_seconds(audio)
    except ValueError as exc:
        return {"passed": False, "seconds": seconds, "measured": "not WAV", "why": f"the reply audio is {exc}"}
    readback, why = _readback(gate["readback_url"], audio, timeout, readback_headers)
    elapsed = round(time.monotonic() - started, 3)
    if readback is None:
        return {"passed": False, "seconds": elapsed, "measured": "no read-back", "why": why}
    wer = word_error_rate(reply, readback)
    outcome = {"passed": wer <= max_wer, "seconds": elapsed, "measured": round(wer, 3), "threshold": max_wer,
               "transcript": transcript, "reply": reply[:200], "audio_seconds": round(audio_seconds, 2),
               "stage_seconds": timings}
    if not outcome["passed"]:
        outcome["why"] = (f"the reply audio was read back with word error rate {wer:.2f} > {max_wer:.2f} "
                          f"(replied {reply[:120]!r}, said {readback[:120]!r})")
    return outcome


def _version(base_url: str, gate: dict[str, Any]) -> dict[str, Any]:
    """The instance answers /version with the expected version and, when `digest` is given, runs the image of that
    digest: an instance that served production before is known again by what it says it is."""
    started = time.monotonic()
    status, answer = http_request(f"{base_url}{gate.get('path', '/version')}", timeout=float(gate.get("timeout", 5)))
    seconds = round(time.monotonic() - started, 3)
    expected = f"{gate['version']}" + (f" @ {gate['digest']}" if gate.get("digest") else "")
    if status != 200:
        return {"passed": False, "seconds": seconds, "measured": f"HTTP {status or 'no answer'}", "threshold": expected,
                "why": f"/version answered {status or 'nothing'}: {answer.strip()[:160]}"}
    try:
        about = json.loads(answer)
        version, image = str(about.get("version", "")), str(about.get("image", ""))
    except (ValueError, AttributeError):
        return {"passed": False, "seconds": seconds, "measured": "unparseable answer", "threshold": expected,
                "why": f"/version is not JSON: {answer.strip()[:160]}"}
    measured = version + (f" @ {image.rsplit('@', 1)[-1]}" if image else "")
    if version != str(gate["version"]):
        return {"passed": False, "seconds": seconds, "measured": measured, "threshold": expected,
                "why": f"the instance answers version {version!r}, the record says {gate['version']!r}"}
    if gate.get("digest") and not image.endswith("@" + str(gate["digest"])):
        return {"passed": False, "seconds": seconds, "measured": measured, "threshold": expected,
                "why": f"the instance runs image {image or 'it does not name'}, the record says {gate['digest']}"}
    return {"passed": True, "seconds": seconds, "measured": measured, "threshold": expected}


class GatesStopped(Exception):
    """The run was asked to stop (playbooks/abort.yml) while gates were running."""


def run_gates(base_url: str, gates: list[dict[str, Any]], clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep, readback_api_key: str | None = None,
              ) -> list[dict[str, Any]]:
    """Run gates in order and stop at the first that fails; every result carries its name and type. The read-back
    of speech and interaction gates goes through the gateway: with its authentication on, `readback_api_key`
    is presented as a bearer token (and never put in a result)."""
    readback_headers = {"Authorization": f"Bearer {readback_api_key}"} if readback_api_key else None
    validate_gates(gates)
    results = []
    for gate in gates:
        kind = gate["type"]
        name = gate.get("name", kind)
        if kind in ("liveness", "readiness"):
            path = gate.get("path", "/healthz" if kind == "liveness" else "/readyz")
            outcome = _poll_ok(f"{base_url}{path}", float(gate.get("timeout", 60)),
                               float(gate.get("interval", 0.5)), clock, sleep)
        elif kind == "speech":
            outcome = _speech(base_url, gate, readback_headers)
        elif kind == "chat":
            outcome = _chat(base_url, gate)
        elif kind == "interaction":
            outcome = _interaction(base_url, gate, readback_headers)
        elif kind == "version":
            outcome = _version(base_url, gate)
        else:
            outcome = _transcription(base_url, gate)
        results.append({"name": name, "type": kind, **outcome})
        if not outcome["passed"]:
            break
    return results


def run_targets(targets: list[dict[str, Any]], concurrency: int = 4, readback_api_key: str | None = None,
                stop: Callable[[], str | None] | None = None, sleep: Callable[[float], None] = time.sleep,
                ) -> list[dict[str, Any]]:
    """Gate several instances side by side, at most `concurrency` at once: each target ({service, host, url, gates,
    context}) runs its gates in order, as run_gates does. Results come back in the order of `targets`, each with
    `passed`, `results` and, on a failure, `msg` naming the gate, service and why. `stop` is asked between
    polls; when it answers a reason, every unfinished target ends with that reason."""
    for target in targets:
        validate_gates(target["gates"])

    def polling_sleep(seconds: float) -> None:
        if stop is not None and (reason := stop()):
            raise GatesStopped(reason)
        sleep(seconds)

    def one(target: dict[str, Any]) -> dict[str, Any]:
        identity = {key: target.get(key) for key in ("service", "host", "colour")}
        try:
            if stop is not None and (reason := stop()):
                raise GatesStopped(reason)
            results = run_gates(target["url"].rstrip("/"), target["gates"], sleep=polling_sleep,
                                readback_api_key=readback_api_key)
        except GatesStopped as exc:
            return {**identity, "passed": False, "results": [], "msg": str(exc), "stopped": True,
                    "finished_at": time.time()}
        except OSError as exc:
            return {**identity, "passed": False, "results": [],
                    "msg": f"service {target['service']}: cannot run gates: {exc}"}
        message = failure_message(str(target["service"]), target.get("context") or {}, results)
        # When the verdict was known: what the time to return traffic after a failed gate is measured from.
        return {**identity, "passed": message is None, "results": results, "finished_at": time.time(),
                **({"msg": message} if message else {})}

    if not targets:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(targets)))) as pool:
        return list(pool.map(one, targets))


def failure_message(service: str, context: dict[str, Any], results: list[dict[str, Any]]) -> str | None:
    failed = next((result for result in results if not result["passed"]), None)
    if failed is None:
        return None
    where = ", ".join(f"{key} {value}" for key, value in context.items() if value)
    return f"gate '{failed['name']}' failed for service {service} ({where}): {failed['why']}"
