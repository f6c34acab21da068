"""HTTP API: OpenAI-compatible speech synthesis plus the probes and metrics the deploy gates rely on."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from xl_service.http import (
    FaultDrill,
    InvalidRequest,
    Metrics,
    acquire_slot,
    api_error,
    engine_lifespan,
    install_probes,
    read_json_body,
)

from .engine import Engine, Speech, SpeechError
from .settings import Settings

log = logging.getLogger("xl_tts.http")

RESPONSE_FORMATS = ("wav", "pcm")
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}
MIN_SPEED, MAX_SPEED = 0.25, 4.0
ROUTE = "/v1/audio/speech"


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str
    response_format: str
    speed: float


def parse_speech_request(body: bytes, settings: Settings) -> SpeechRequest:
    """Validate an OpenAI ``/v1/audio/speech`` body; ``model`` and fields this service has no use for are ignored."""
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", "input") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("body must be a JSON object with an 'input' field", "input")

    if "input" not in payload:
        raise InvalidRequest("missing required field 'input'", "input")
    text = payload["input"]
    if not isinstance(text, str):
        raise InvalidRequest(f"input must be a string, got {type(text).__name__}", "input")
    if not text.strip():
        raise InvalidRequest("input must not be empty", "input")
    if len(text) > settings.max_input_chars:
        raise InvalidRequest(f"input is {len(text)} characters long, the limit is {settings.max_input_chars}", "input")
    if "\x00" in text:
        raise InvalidRequest("input must not contain NUL characters", "input")

    voice = payload.get("voice", settings.voice)
    if not isinstance(voice, str) or voice not in settings.voices:
        raise InvalidRequest(f"unknown voice {voice!r}; available: {', '.join(settings.voices)}", "voice")

    response_format = payload.get("response_format", "wav")
    if response_format not in RESPONSE_FORMATS:
        raise InvalidRequest(f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                             f"got {response_format!r}", "response_format")

    speed = payload.get("speed", 1.0)
    # bool is an int in Python, and json.loads accepts NaN and Infinity: neither is a speed.
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not MIN_SPEED <= speed <= MAX_SPEED:
        raise InvalidRequest(f"speed must be a number from {MIN_SPEED} to {MAX_SPEED}, got {speed!r}", "speed")
    return SpeechRequest(text=text, voice=voice, response_format=response_format, speed=float(speed))


def _audio_response(speech: Speech, response_format: str) -> Response:
    body = speech.wav() if response_format == "wav" else speech.pcm
    return Response(content=body, media_type=CONTENT_TYPES[response_format], headers={
        "X-Audio-Seconds": f"{speech.seconds:.3f}",
        "X-Sample-Rate": str(speech.sample_rate),  # pcm has no header, so the rate travels here
    })


def create_app(settings: Settings, engine: Engine | None = None, load_in_background: bool = True) -> FastAPI:
    engine = engine or Engine(settings)
    identity = settings.identity
    metrics = Metrics(identity)
    synthesis_slots = asyncio.Semaphore(settings.max_concurrency)
    drill = FaultDrill(settings.faults)

    def readiness() -> dict[str, Any]:
        body: dict[str, Any] = {"model": engine.model_name, "engine": engine.engine_name}
        if engine.fallback_reason:
            body["fallback_reason"] = engine.fallback_reason
        return body

    app = FastAPI(title="XleRobot TTS", version=identity.version, docs_url=None, redoc_url=None,
                  lifespan=engine_lifespan(engine, load_in_background, log))
    app.state.engine = engine
    app.state.settings = settings
    install_probes(app, identity=identity, metrics=metrics, engine=engine, faults=settings.faults, routes=(ROUTE,),
                   log=log, details=readiness, loading="voice loading",
                   version_details=lambda: {"model": engine.model_name, "engine": engine.engine_name})

    @app.post(ROUTE, response_model=None)
    async def speech(request: Request) -> Response:
        if not engine.ready:
            return api_error(503, "voice is not ready", kind="service_unavailable")
        body = await read_json_body(request, settings.max_body_bytes, "input")
        if isinstance(body, JSONResponse):
            return body
        try:
            wanted = parse_speech_request(body, settings)
        except InvalidRequest as exc:
            return api_error(exc.status, str(exc), param=exc.param)

        refused = await drill.before_inference()
        if refused is not None:
            return refused
        busy = await acquire_slot(synthesis_slots, settings.queue_timeout_s, settings.max_concurrency, "synthesis")
        if busy is not None:
            return busy
        try:
            result = await run_in_threadpool(engine.synthesize, wanted.text, wanted.speed)
        except SpeechError as exc:
            return api_error(400, str(exc), param="input")
        finally:
            synthesis_slots.release()
        metrics.inference.labels(identity.service).observe(result.inference_s)
        return _audio_response(result, wanted.response_format)

    return app
