"""HTTP API: OpenAI-compatible speech synthesis plus the probes and metrics the deploy gates rely on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from .engine import Engine, Speech, SpeechError
from .settings import Settings

log = logging.getLogger("xl_tts.http")

RESPONSE_FORMATS = ("wav", "pcm")
CONTENT_TYPES = {"wav": "audio/wav", "pcm": "audio/pcm"}
MIN_SPEED, MAX_SPEED = 0.25, 4.0
KNOWN_ROUTES = ("/v1/audio/speech", "/healthz", "/readyz", "/metrics", "/version")


def api_error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param}})


class InvalidRequest(Exception):
    """A request the service refuses, with the field to blame."""

    def __init__(self, message: str, param: str, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


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


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it grows past ``limit`` (a missing or false Content-Length cannot get around it)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class Metrics:
    """One registry per app, so tests can build several apps in one process. Names and labels match ASR's."""

    def __init__(self, settings: Settings):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "xl_http_requests", "HTTP requests by endpoint and status.", ["service", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xl_http_request_duration_seconds", "HTTP request latency.", ["service", "endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.inference = Histogram(
            "xl_inference_seconds", "Model inference time per request.", ["service"],
            buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.in_flight = Gauge("xl_http_in_flight_requests", "Requests being served.", ["service"],
                               registry=self.registry)
        self.model_load = Gauge("xl_model_load_seconds", "Seconds the model took to load and warm up.", ["service"],
                                registry=self.registry)
        self.ready = Gauge("xl_ready", "1 once the model is loaded and warmed up.", ["service"], registry=self.registry)
        info = Gauge("xl_build_info", "Identity of this instance.", ["service", "version", "colour", "release"],
                     registry=self.registry)
        info.labels(settings.service, settings.version, settings.colour, settings.release).set(1)


def _audio_response(speech: Speech, response_format: str) -> Response:
    body = speech.wav() if response_format == "wav" else speech.pcm
    return Response(content=body, media_type=CONTENT_TYPES[response_format], headers={
        "X-Audio-Seconds": f"{speech.seconds:.3f}",
        "X-Sample-Rate": str(speech.sample_rate),  # pcm has no header, so the rate travels here
    })


def create_app(settings: Settings, engine: Engine | None = None, load_in_background: bool = True) -> FastAPI:
    engine = engine or Engine(settings)
    metrics = Metrics(settings)
    synthesis_slots = asyncio.Semaphore(settings.max_concurrency)
    served_by = f"{settings.service}/{settings.version}/{settings.colour}"
    crash_timer: dict[str, asyncio.TimerHandle] = {}
    syntheses_seen = {"count": 0}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=engine.load, name="voice-load", daemon=True).start()
        else:
            await run_in_threadpool(engine.load)
        yield
        log.info("shutting down: in-flight requests have finished")

    app = FastAPI(title="XleRobot TTS", version=settings.version, docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.engine = engine
    app.state.settings = settings

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        endpoint = request.url.path if request.url.path in KNOWN_ROUTES else "other"
        started = time.perf_counter()
        metrics.in_flight.labels(settings.service).inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.labels(settings.service).dec()
            metrics.requests.labels(settings.service, endpoint, str(status)).inc()
            metrics.latency.labels(settings.service, endpoint).observe(elapsed)
            if endpoint not in ("/healthz", "/readyz", "/metrics"):
                log.info("request", extra={"method": request.method, "path": request.url.path, "status": status,
                                           "seconds": round(elapsed, 4)})
        response.headers["X-Served-By"] = served_by
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "service": settings.service}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if engine.ready:
            body: dict[str, Any] = {"status": "ready", "model": engine.model_name, "engine": engine.engine_name}
            if engine.fallback_reason:
                body["fallback_reason"] = engine.fallback_reason
            return JSONResponse(body)
        reason = engine.load_error or (
            "fault injected: never_ready" if settings.faults.never_ready else "voice loading")
        return JSONResponse(status_code=503, content={"status": "not ready", "reason": reason})

    @app.get("/version")
    async def version() -> dict[str, str | None]:
        return {"service": settings.service, "version": settings.version, "colour": settings.colour,
                "release": settings.release, "model": engine.model_name, "engine": engine.engine_name}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        metrics.ready.labels(settings.service).set(1 if engine.ready else 0)
        if engine.load_seconds is not None:
            metrics.model_load.labels(settings.service).set(engine.load_seconds)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/audio/speech", response_model=None)
    async def speech(request: Request) -> Response:
        if not engine.ready:
            return api_error(503, "voice is not ready", kind="service_unavailable")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return api_error(413, f"body of {declared} bytes exceeds the limit of {settings.max_body_bytes} bytes",
                             param="input")
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return api_error(400, f"expected an application/json body, got {content_type or 'no content type'!r}",
                             param="input")
        body = await _read_body(request, settings.max_body_bytes)
        if body is None:
            return api_error(413, f"body exceeds the limit of {settings.max_body_bytes} bytes", param="input")
        try:
            wanted = parse_speech_request(body, settings)
        except InvalidRequest as exc:
            return api_error(exc.status, str(exc), param=exc.param)

        faults = settings.faults
        if faults.crash_after_s and "crash" not in crash_timer:
            crash_timer["crash"] = asyncio.get_running_loop().call_later(faults.crash_after_s, os._exit, 3)
        syntheses_seen["count"] += 1
        if faults.fails(syntheses_seen["count"]):
            return api_error(500, "fault injected: error_rate", kind="server_error")
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)

        try:
            await asyncio.wait_for(synthesis_slots.acquire(), timeout=settings.queue_timeout_s)
        except TimeoutError:
            return api_error(503, f"all {settings.max_concurrency} synthesis slots stayed busy for "
                                  f"{settings.queue_timeout_s:.0f} s", kind="service_unavailable")
        try:
            result = await run_in_threadpool(engine.synthesize, wanted.text, wanted.speed)
        except SpeechError as exc:
            return api_error(400, str(exc), param="input")
        finally:
            synthesis_slots.release()
        metrics.inference.labels(settings.service).observe(result.inference_s)
        return _audio_response(result, wanted.response_format)

    return app
