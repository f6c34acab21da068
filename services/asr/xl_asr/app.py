"""HTTP API: OpenAI-compatible transcription plus the probes and metrics the deploy gates rely on."""

from __future__ import annotations

import asyncio
import logging
import re

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from xl_service.http import FaultDrill, Metrics, acquire_slot, api_error, engine_lifespan, install_probes

from .engine import AudioError, Engine, decode
from .settings import Settings

log = logging.getLogger("xl_asr.http")

ROUTE = "/v1/audio/transcriptions"
RESPONSE_FORMATS = ("json", "text", "verbose_json")
LANGUAGE_PATTERN = re.compile(r"^[a-z]{2,3}$")


def create_app(settings: Settings, engine: Engine | None = None, load_in_background: bool = True) -> FastAPI:
    engine = engine or Engine(settings)
    identity = settings.identity
    metrics = Metrics(identity)
    inference_slots = asyncio.Semaphore(settings.max_concurrency)
    drill = FaultDrill(settings.faults)

    app = FastAPI(title="XleRobot ASR", version=identity.version, docs_url=None, redoc_url=None,
                  lifespan=engine_lifespan(engine, load_in_background, log))
    app.state.engine = engine
    app.state.settings = settings
    install_probes(app, identity=identity, metrics=metrics, engine=engine, faults=settings.faults, routes=(ROUTE,),
                   log=log, details=lambda: {"model": settings.model_name})

    @app.post(ROUTE, response_model=None)
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

        refused = await drill.before_inference()
        if refused is not None:
            return refused
        busy = await acquire_slot(inference_slots, settings.queue_timeout_s, settings.max_concurrency, "inference")
        if busy is not None:
            return busy
        try:
            result = await run_in_threadpool(engine.transcribe, audio, language, vad_raw in ("true", "1"))
        finally:
            inference_slots.release()
        metrics.inference.labels(identity.service).observe(result.inference_s)

        if response_format == "text":
            return PlainTextResponse(result.text + "\n")
        if response_format == "verbose_json":
            return JSONResponse({"task": "transcribe", "language": result.language, "duration": result.duration_s,
                                 "text": result.text, "segments": result.segments})
        return JSONResponse({"text": result.text})

    return app
