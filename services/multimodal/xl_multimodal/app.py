"""HTTP API: POST /v1/interact (voice, optionally an image, in; transcript, reply and reply voice out), plus
the probes and metrics every service has."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from xl_service.http import FaultDrill, Metrics, acquire_slot, api_error, engine_lifespan, install_probes

from .ocr import Engine, ImageError, Reading, decode_image
from .pipeline import StageError, Stages, Trace
from .settings import Settings

log = logging.getLogger("xl_multimodal.http")

ROUTE = "/v1/interact"
FORM_FIELDS = ("audio", "image", "language", "voice")
# What a garbled version says instead of its reply: only reading the reply audio back notices.
GARBLED_REPLY = "Bananas are yellow and the moon is made of cheese."
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)


class StageMetrics:
    def __init__(self, metrics: Metrics):
        self.seconds = Histogram("xl_stage_seconds", "Seconds per pipeline stage of one interaction.",
                                 ["service", "stage"], buckets=STAGE_BUCKETS, registry=metrics.registry)
        self.failures = Counter("xl_stage_failures", "Interactions failed by a stage, by the status returned.",
                                ["service", "stage", "status"], registry=metrics.registry)


async def _read_upload(upload: UploadFile, limit: int) -> bytes | None:
    data = await upload.read(limit + 1)
    return None if len(data) > limit else data


def _prompt(settings: Settings, transcript: str, reading: Reading | None) -> list[dict[str, str]]:
    user = transcript
    if reading and reading.text:
        seen = reading.text[:settings.max_image_text_chars]
        user = f"{transcript}\n\nText in the picture I am showing you: \"{seen}\""
    return [{"role": "system", "content": settings.system_prompt}, {"role": "user", "content": user}]


def create_app(settings: Settings, engine: Engine | None = None, load_in_background: bool = True,
               stages: Stages | None = None) -> FastAPI:
    engine = engine or Engine(settings)
    stages = stages or Stages(settings.stage_urls, {"asr": settings.asr_timeout_s, "llm": settings.llm_timeout_s,
                                                    "tts": settings.tts_timeout_s}, settings.connect_timeout_s,
                              api_key=settings.gateway_api_key)
    identity = settings.identity
    metrics = Metrics(identity)
    stage_metrics = StageMetrics(metrics)
    slots = asyncio.Semaphore(settings.max_concurrency)
    drill = FaultDrill(settings.faults)
    load = engine_lifespan(engine, load_in_background, log)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with load(app):
            yield
        await stages.close()

    app = FastAPI(title="XleRobot multimodal", version=identity.version, docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    app.state.engine = engine
    app.state.settings = settings
    install_probes(app, identity=identity, metrics=metrics, engine=engine, faults=settings.faults, routes=(ROUTE,),
                   log=log, details=lambda: {"model": engine.model_name, "stages": stages.urls})

    def failed(stage: str, status: int, message: str, param: str | None = None) -> JSONResponse:
        stage_metrics.failures.labels(identity.service, stage, str(status)).inc()
        kind = "invalid_request_error" if status < 500 else (
            "upstream_unavailable" if status == 503 else "upstream_error")
        log.warning("stage failed", extra={"stage": stage, "status": status, "reason": message})
        return api_error(status, message, param=param, kind=kind, stage=stage)

    @app.post(ROUTE, response_model=None)
    async def interact(request: Request) -> Response:
        if not engine.ready:
            return api_error(503, "OCR model is not ready", kind="service_unavailable")
        limit = settings.max_audio_bytes + settings.max_image_bytes + 64 * 1024
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return api_error(413, f"body of {declared} bytes exceeds the limit of {limit} bytes", param="audio")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return api_error(400, "expected a multipart/form-data body with an 'audio' file field", param="audio")
        try:
            form = await request.form(max_files=2, max_fields=8)
        except Exception as exc:  # noqa: BLE001 - malformed multipart bodies raise several unrelated exceptions
            return api_error(400, f"malformed multipart body: {exc}", param="audio")
        unexpected = sorted(key for key in form if key not in FORM_FIELDS)
        if unexpected:
            return api_error(400, f"unknown field(s) {', '.join(unexpected)}; this endpoint takes "
                                  f"{', '.join(FORM_FIELDS)}", param=unexpected[0])
        audio_part = form.get("audio")
        if not isinstance(audio_part, UploadFile):
            return api_error(400, "missing required file field 'audio'", param="audio")
        audio = await _read_upload(audio_part, settings.max_audio_bytes)
        if audio is None:
            return api_error(413, f"audio exceeds the limit of {settings.max_audio_bytes} bytes", param="audio")
        if not audio:
            return api_error(400, "audio is empty", param="audio")
        pixels: np.ndarray | None = None
        image_part = form.get("image")
        if image_part is not None:
            if not isinstance(image_part, UploadFile):
                return api_error(400, "image must be a file field", param="image")
            image = await _read_upload(image_part, settings.max_image_bytes)
            if image is None:
                return api_error(413, f"image exceeds the limit of {settings.max_image_bytes} bytes", param="image")
            try:
                pixels = await run_in_threadpool(decode_image, image, settings.max_image_pixels)
            except ImageError as exc:
                return api_error(400, str(exc), param="image")
        language = form.get("language")
        if language is not None and (not isinstance(language, str) or not language.isalpha() or len(language) > 3):
            return api_error(400, f"language must be an ISO-639-1 code such as 'en', got {language!r}",
                             param="language")
        voice = form.get("voice") or settings.voice
        if not isinstance(voice, str) or not voice.replace("-", "").replace("_", "").isalnum():
            return api_error(400, f"voice must be a voice name, got {voice!r}", param="voice")

        refused = await drill.before_inference()
        if refused is not None:
            return refused
        busy = await acquire_slot(slots, settings.queue_timeout_s, settings.max_concurrency, "interaction")
        if busy is not None:
            return busy
        try:
            return await _run(audio, audio_part.filename or "audio.wav", pixels, language, voice)
        finally:
            slots.release()

    async def _read_image(pixels: np.ndarray | None, trace: Trace) -> Reading | None:
        if pixels is None:
            return None
        reading = await run_in_threadpool(engine.read, pixels)
        trace.timings["ocr"] = round(reading.seconds, 4)
        return reading

    async def _run(audio: bytes, filename: str, pixels: np.ndarray | None, language: str | None,
                   voice: str) -> Response:
        started = time.perf_counter()
        trace = Trace()
        try:
            # Listening and reading the picture do not depend on each other: run them side by side.
            transcript, reading = await asyncio.gather(stages.transcribe(audio, filename, language, trace),
                                                       _read_image(pixels, trace))
            if not transcript:
                return failed("asr", 422, "no speech was recognised in the audio", param="audio")
            reply = await stages.chat(_prompt(settings, transcript, reading), settings.max_tokens,
                                      settings.temperature, trace)
            spoken = GARBLED_REPLY if settings.faults.garble else reply
            speech = await stages.speak(spoken, voice, trace)
        except StageError as exc:
            return failed(exc.stage, exc.status, str(exc), param=exc.param)
        total = time.perf_counter() - started
        for stage, seconds in trace.timings.items():
            stage_metrics.seconds.labels(identity.service, stage).observe(seconds)
        metrics.inference.labels(identity.service).observe(total)
        body: dict[str, Any] = {
            "transcript": transcript,
            "image_text": reading.text if reading else None,
            "reply": reply,
            "audio": {"format": "wav", "base64": base64.b64encode(speech).decode("ascii")},
            "timings": {**trace.timings, "total": round(total, 4)},
            "served_by": trace.served_by,
        }
        return JSONResponse(body)

    return app
