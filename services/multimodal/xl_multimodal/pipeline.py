"""The voice interaction: ASR -> LLM -> TTS over HTTP, each stage with its own timeout and a named failure.

Every failure of a downstream stage becomes a StageError that names the stage and why, and maps to one HTTP
status for the caller: 503 when the stage is unreachable, busy or too slow (try again later), 502 when it
answered with an error or with something that is not an answer, and the stage's own 4xx when it refused the
caller's input (the caller's audio was not audio, for instance).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


class StageError(Exception):
    def __init__(self, stage: str, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.stage = stage
        self.status = status
        self.param = param


@dataclass
class Trace:
    """Seconds per stage and which instance served each one, in the order they ran."""

    timings: dict[str, float] = field(default_factory=dict)
    served_by: dict[str, str] = field(default_factory=dict)


def _error_message(response: httpx.Response) -> str:
    try:
        body: Any = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


class Stages:
    """HTTP clients of the three downstream services (normally all through the gateway)."""

    def __init__(self, urls: dict[str, str], timeouts: dict[str, float], connect_timeout_s: float,
                 client: httpx.AsyncClient | None = None, api_key: str = ""):
        self.urls = urls
        self.timeouts = timeouts
        self.connect_timeout_s = connect_timeout_s
        # One pooled client for the process: connections to the gateway are reused across requests.
        self.client = client or httpx.AsyncClient(limits=httpx.Limits(max_connections=64, max_keepalive_connections=16))
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    async def _post(self, stage: str, trace: Trace, **kwargs: Any) -> httpx.Response:
        limit = self.timeouts[stage]
        timeout = httpx.Timeout(limit, connect=min(self.connect_timeout_s, limit))
        started = time.perf_counter()
        try:
            response = await self.client.post(self.urls[stage], timeout=timeout, headers=self.headers, **kwargs)
        except httpx.TimeoutException as exc:
            raise StageError(stage, 503, f"stage '{stage}' did not answer within {limit:g} s "
                                         f"({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise StageError(stage, 503, f"stage '{stage}' is unreachable at {self.urls[stage]}: "
                                         f"{type(exc).__name__}: {exc}") from exc
        finally:
            trace.timings[stage] = round(time.perf_counter() - started, 4)
        trace.served_by[stage] = response.headers.get("X-Served-By", "")
        if response.status_code in (401, 403):
            # Not the caller's doing: the gateway did not accept this service's own key.
            raise StageError(stage, 502, f"stage '{stage}' refused this service's credentials: HTTP "
                                         f"{response.status_code} (is XL_GATEWAY_API_KEY set to a key the gateway "
                                         f"accepts?)")
        if response.status_code in (502, 503, 504):
            raise StageError(stage, 503, f"stage '{stage}' is unavailable: HTTP {response.status_code}: "
                                         f"{_error_message(response)}")
        if response.status_code >= 500:
            raise StageError(stage, 502, f"stage '{stage}' failed: HTTP {response.status_code}: "
                                         f"{_error_message(response)}")
        return response

    @staticmethod
    def _json(stage: str, response: httpx.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except (ValueError, json.JSONDecodeError) as exc:
            raise StageError(stage, 502, f"stage '{stage}' answered with a body that is not JSON") from exc
        if not isinstance(body, dict):
            raise StageError(stage, 502, f"stage '{stage}' answered with JSON that is not an object")
        return body

    async def transcribe(self, audio: bytes, filename: str, language: str | None, trace: Trace) -> str:
        data = {"response_format": "json", **({"language": language} if language else {})}
        response = await self._post("asr", trace, files={"file": (filename, audio, "application/octet-stream")},
                                    data=data)
        if 400 <= response.status_code < 500:
            # The speech recognition refused the caller's audio: the caller's mistake, said as such.
            raise StageError("asr", response.status_code, f"audio refused by speech recognition: "
                                                          f"{_error_message(response)}", param="audio")
        text = self._json("asr", response).get("text")
        if not isinstance(text, str):
            raise StageError("asr", 502, "stage 'asr' answered without a 'text' string")
        return text.strip()

    async def chat(self, messages: list[dict[str, str]], max_tokens: int, temperature: float, trace: Trace) -> str:
        response = await self._post("llm", trace, json={"messages": messages, "max_tokens": max_tokens,
                                                        "temperature": temperature})
        if 400 <= response.status_code < 500:
            raise StageError("llm", 502, f"stage 'llm' refused the prompt: HTTP {response.status_code}: "
                                         f"{_error_message(response)}")
        body = self._json("llm", response)
        try:
            reply = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise StageError("llm", 502, "stage 'llm' answered without choices[0].message.content") from exc
        if not isinstance(reply, str) or not reply.strip():
            raise StageError("llm", 502, "stage 'llm' answered with an empty reply")
        return reply.strip()

    async def speak(self, text: str, voice: str, trace: Trace) -> bytes:
        response = await self._post("tts", trace, json={"input": text, "voice": voice, "response_format": "wav"})
        if 400 <= response.status_code < 500:
            raise StageError("tts", 502, f"stage 'tts' refused the reply: HTTP {response.status_code}: "
                                         f"{_error_message(response)}")
        if not response.content.startswith(b"RIFF"):
            raise StageError("tts", 502, "stage 'tts' answered with a body that is not WAV audio")
        return response.content

    async def close(self) -> None:
        await self.client.aclose()
