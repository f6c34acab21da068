"""HTTP API: OpenAI-compatible transcription plus the probes and metrics the deploy gates rely on."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from .engine import AudioError, Engine, decode
from .settings import Settings

log = logging.getLogger("xl_asr.http")

RESPONSE_FORMATS = ("json", "text", "verbose_json")
LANGUAGE_PATTERN = re.compile(r"^[a-z]{2,3}$")
KNOWN_ROUTES = ("/v1/audio/transcriptions", "/healthz", "/readyz", "/metrics", "/version")


def api_error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param}})


class Metrics:
    """One registry per app, so tests can build several apps in one process."""

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


def create_app(settings: Settings, engine: Engine | None = None, load_in_background: bool = True) -> FastAPI:
    engine = engine or Engine(settings)
    metrics = Metrics(settings)
    inference_slots = asyncio.Semaphore(settings.max_concurrency)
    served_by = f"{settings.service}/{settings.version}/{settings.colour}"
    crash_timer: dict[str, asyncio.TimerHandle] = {}
    transcriptions_seen = {"count": 0}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=engine.load, name="model-load", daemon=True).start()
        else:
            await run_in_threadpool(engine.load)
        yield
        log.info("shutting down: in-flight requests have finished")

    app = FastAPI(title="XleRobot ASR", version=settings.version, docs_url=None, redoc_url=None, lifespan=lifespan)
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
            return JSONResponse({"status": "ready", "model": settings.model_name})
        reason = engine.load_error or (
            "fault injected: never_ready" if settings.faults.never_ready else "model loading")
        return JSONResponse(status_code=503, content={"status": "not ready", "reason": reason})

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"service": settings.service, "version": settings.version, "colour": settings.colour,
                "release": settings.release, "model": settings.model_name}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        metrics.ready.labels(settings.service).set(1 if engine.ready else 0)
        if engine.load_seconds is not None:
            metrics.model_load.labels(settings.service).set(engine.load_seconds)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/audio/transcriptions", response_model=None)
    async def transcriptions(request: Request) -> Response:
        if not engine.ready:
            return api_error(503, "model is not ready", kind="service_unavailable")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
            return api_error(413, f"upload of {declared} bytes exceeds the limit of {settings.max_upload_bytes} bytes",
                             param="file")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return api_error(400, "expected a multipart/form-data body with a 'file' field", param="file")
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several unrelated exceptions
            return api_error(400, f"malformed multipart body: {exc}", param="file")

        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            unexpected = sorted(key for key in form if key not in ("model", "language", "response_format",
                                                                            "vad_filter", "prompt", "temperature"))
            hint = f" (got fields: {', '.join(unexpected)})" if unexpected else ""
            return api_error(400, f"missing multipart file field 'file'{hint}", param="file")
        data = await upload.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            return api_error(413, f"upload exceeds the limit of {settings.max_upload_bytes} bytes", param="file")
        if not data:
            return api_error(400, "uploaded file 'file' is empty", param="file")

        response_format = str(form.get("response_format") or "json")
        if response_format not in RESPONSE_FORMATS:
            return api_error(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                                  f"got {response_format!r}", param="response_format")
        language = form.get("language")
        if language is not None and (not isinstance(language, str) or not LANGUAGE_PATTERN.match(language)):
            return api_error(400, f"language must be an ISO-639-1 code such as 'en', got {language!r}",
                             param="language")
        vad_raw = str(form.get("vad_filter") or "false").lower()
        if vad_raw not in ("true", "false", "1", "0"):
            return api_error(400, f"vad_filter must be true or false, got {vad_raw!r}", param="vad_filter")

        try:
            audio = await run_in_threadpool(decode, data)
        except AudioError as exc:
            return api_error(400, str(exc), param="file")
        duration = audio.size / 16000
        if duration > settings.max_audio_seconds:
            return api_error(413, f"audio is {duration:.1f} s long, the limit is {settings.max_audio_seconds:.0f} s",
                             param="file")

        faults = settings.faults
        if faults.crash_after_s and "crash" not in crash_timer:
            crash_timer["crash"] = asyncio.get_running_loop().call_later(faults.crash_after_s, os._exit, 3)
        transcriptions_seen["count"] += 1
        if faults.fails(transcriptions_seen["count"]):
            return api_error(500, "fault injected: error_rate", kind="server_error")
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)

        try:
            await asyncio.wait_for(inference_slots.acquire(), timeout=settings.queue_timeout_s)
        except TimeoutError:
            return api_error(503, f"all {settings.max_concurrency} inference slots stayed busy for "
                                  f"{settings.queue_timeout_s:.0f} s", kind="service_unavailable")
        try:
            result = await run_in_threadpool(engine.transcribe, audio, language, vad_raw in ("true", "1"))
        finally:
            inference_slots.release()
        metrics.inference.labels(settings.service).observe(result.inference_s)

        if response_format == "text":
            return PlainTextResponse(result.text + "\n")
        if response_format == "verbose_json":
            return JSONResponse({"task": "transcribe", "language": result.language, "duration": result.duration_s,
                                 "text": result.text, "segments": result.segments})
        return JSONResponse({"text": result.text})

    return app
