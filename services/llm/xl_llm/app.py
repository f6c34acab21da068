"""HTTP API: OpenAI-compatible chat completions plus the probes and metrics the deploy gates rely on."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from .engine import Delta, Engine, PromptTooLong, Sampling
from .settings import Settings

log = logging.getLogger("xl_llm.http")

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
KNOWN_ROUTES = ("/v1/chat/completions", "/v1/models", "/healthz", "/readyz", "/metrics", "/version")


def api_error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "param": param}})


class InvalidRequest(Exception):
    """A request the service refuses, with the field to blame."""

    def __init__(self, message: str, param: str, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict[str, str]]
    sampling: Sampling
    stream: bool


def _message_text(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of content parts as long as every part is text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidRequest(f"{where}[{index}] must be a text part ({{'type': 'text', 'text': ...}}); "
                                     "this model reads text only", where)
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"{where} must be a string, got {type(content).__name__}", where)


def _parse_messages(payload: dict[str, Any]) -> list[dict[str, str]]:
    if "messages" not in payload:
        raise InvalidRequest("missing required field 'messages'", "messages")
    messages = payload["messages"]
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects", "messages")
    parsed = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{where} must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"{where}.role must be one of {', '.join(ROLES)}, got {role!r}", f"{where}.role")
        if "content" not in message:
            raise InvalidRequest(f"{where} has no 'content'", f"{where}.content")
        text = _message_text(message["content"], f"{where}.content")
        if "\x00" in text:
            raise InvalidRequest(f"{where}.content must not contain NUL characters", f"{where}.content")
        parsed.append({"role": role, "content": text})
    return parsed


def _number(payload: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = payload.get(name)
    if value is None:
        return default
    # bool is an int in Python, and json.loads accepts NaN and Infinity: none of them is a setting.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise InvalidRequest(f"{name} must be a number from {low} to {high}, got {value!r}", name)
    return float(value)


def _integer(payload: dict[str, Any], name: str, low: int, high: int) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be an integer from {low} to {high}, got {value!r}", name)
    return value


def _stop_sequences(payload: dict[str, Any]) -> list[str]:
    stop = payload.get("stop")
    if stop is None:
        return []
    sequences = [stop] if isinstance(stop, str) else stop
    if not isinstance(sequences, list) or len(sequences) > MAX_STOP_SEQUENCES \
            or not all(isinstance(item, str) and item for item in sequences):
        raise InvalidRequest(f"stop must be a non-empty string or a list of up to {MAX_STOP_SEQUENCES} of them, "
                             f"got {stop!r}", "stop")
    return sequences


def parse_chat_request(body: bytes, settings: Settings) -> ChatRequest:
    """Validate an OpenAI ``/v1/chat/completions`` body; fields this service has no use for are ignored."""
    try:
        payload: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}", "messages") from exc
    if not isinstance(payload, dict):
        raise InvalidRequest("body must be a JSON object with a 'messages' field", "messages")
    messages = _parse_messages(payload)

    if "model" in payload and not isinstance(payload["model"], str):
        raise InvalidRequest(f"model must be a string, got {type(payload['model']).__name__}", "model")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidRequest(f"stream must be true or false, got {stream!r}", "stream")
    choices = payload.get("n")
    if choices is not None and (isinstance(choices, bool) or choices != 1):
        raise InvalidRequest(f"n must be 1: this service returns one choice, got {choices!r}", "n")

    # max_completion_tokens is the newer OpenAI name for the same limit.
    limit_field = "max_tokens" if payload.get("max_tokens") is not None else "max_completion_tokens"
    max_tokens = _integer(payload, limit_field, 1, settings.max_tokens_limit) or settings.max_tokens
    return ChatRequest(
        messages=messages,
        stream=stream,
        sampling=Sampling(
            max_tokens=max_tokens,
            temperature=_number(payload, "temperature", settings.temperature, 0.0, 2.0),
            top_p=_number(payload, "top_p", settings.top_p, 0.0, 1.0),
            stop=_stop_sequences(payload),
            seed=_integer(payload, "seed", 0, 2**31 - 1),
        ),
    )


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
            "xl_http_request_duration_seconds", "HTTP request latency (to the first byte for streamed answers).",
            ["service", "endpoint"],
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
        # Only the LLM has tokens; throughput in tokens per second is rate() of this over rate() of inference.
        self.tokens = Counter("xl_llm_tokens", "Tokens read (prompt) and generated (completion).",
                              ["service", "kind"], registry=self.registry)


class Generation:
    """One streamed answer: the model slot it holds and the generator it reads, released exactly once."""

    def __init__(self, deltas: Generator[Delta, None, None], slots: asyncio.Semaphore):
        self._deltas = deltas
        self._slots = slots
        self._closed = False

    async def next(self) -> Delta | None:
        # The default keeps StopIteration from crossing the thread boundary, where asyncio cannot carry it.
        return await run_in_threadpool(next, self._deltas, None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shielded: this also runs while the request is being cancelled (client gone, shutdown deadline), and
        # the model lock must be released all the same or every later request would wait for it.
        with anyio.CancelScope(shield=True):
            try:
                await run_in_threadpool(self._deltas.close)
            finally:
                self._slots.release()


class EventStream(StreamingResponse):
    """Server-sent events that release their generation however the response ends."""

    def __init__(self, events: AsyncIterator[bytes], generation: Generation, headers: dict[str, str]):
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generation.close()


def _sse(payload: dict[str, Any] | str) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def create_app(settings: Settings, engine: Engine | None = None, load_in_background: bool = True) -> FastAPI:
    engine = engine or Engine(settings)
    metrics = Metrics(settings)
    # One slot: the engine serialises generations anyway (see Engine), and waiting here instead of in a
    # worker thread lets a queued request give up after queue_timeout_s and keeps the threadpool free.
    generation_slots = asyncio.Semaphore(1)
    served_by = f"{settings.service}/{settings.version}/{settings.colour}"
    crash_timer: dict[str, asyncio.TimerHandle] = {}
    completions_seen = {"count": 0}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=engine.load, name="model-load", daemon=True).start()
        else:
            await run_in_threadpool(engine.load)
        yield
        log.info("shutting down: in-flight requests have finished")

    app = FastAPI(title="XleRobot LLM", version=settings.version, docs_url=None, redoc_url=None, lifespan=lifespan)
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
    async def version() -> dict[str, str | None]:
        return {"service": settings.service, "version": settings.version, "colour": settings.colour,
                "release": settings.release, "model": settings.model_name, "runtime": engine.runtime}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        metrics.ready.labels(settings.service).set(1 if engine.ready else 0)
        if engine.load_seconds is not None:
            metrics.model_load.labels(settings.service).set(engine.load_seconds)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": engine.created,
                                            "owned_by": "xlerobot"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        if not engine.ready:
            return api_error(503, "model is not ready", kind="service_unavailable")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_body_bytes:
            return api_error(413, f"body of {declared} bytes exceeds the limit of {settings.max_body_bytes} bytes",
                             param="messages")
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "application/json":
            return api_error(400, f"expected an application/json body, got {content_type or 'no content type'!r}",
                             param="messages")
        body = await _read_body(request, settings.max_body_bytes)
        if body is None:
            return api_error(413, f"body exceeds the limit of {settings.max_body_bytes} bytes", param="messages")
        try:
            wanted = parse_chat_request(body, settings)
        except InvalidRequest as exc:
            return api_error(exc.status, str(exc), param=exc.param)

        faults = settings.faults
        if faults.crash_after_s and "crash" not in crash_timer:
            crash_timer["crash"] = asyncio.get_running_loop().call_later(faults.crash_after_s, os._exit, 3)
        completions_seen["count"] += 1
        if faults.fails(completions_seen["count"]):
            return api_error(500, "fault injected: error_rate", kind="server_error")
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)

        try:
            await asyncio.wait_for(generation_slots.acquire(), timeout=settings.queue_timeout_s)
        except TimeoutError:
            return api_error(503, f"the model stayed busy with other requests for {settings.queue_timeout_s:.0f} s",
                             kind="service_unavailable")
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if wanted.stream:
            return await _stream(wanted, completion_id)
        try:
            result = await run_in_threadpool(engine.complete, wanted.messages, wanted.sampling)
        except PromptTooLong as exc:
            return api_error(400, str(exc), param="messages", kind="context_length_exceeded")
        finally:
            generation_slots.release()
        metrics.inference.labels(settings.service).observe(result.inference_s)
        metrics.tokens.labels(settings.service, "prompt").inc(result.prompt_tokens)
        metrics.tokens.labels(settings.service, "completion").inc(result.completion_tokens)
        log.info("completion", extra={"completion_tokens": result.completion_tokens,
                                      "prompt_tokens": result.prompt_tokens, "seconds": round(result.inference_s, 3),
                                      "finish_reason": result.finish_reason})
        return JSONResponse({
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": settings.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                         "logprobs": None, "finish_reason": result.finish_reason}],
            "usage": {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                      "total_tokens": result.prompt_tokens + result.completion_tokens},
        })

    async def _stream(wanted: ChatRequest, completion_id: str) -> Response:
        """Answer as server-sent events; the slot acquired by the caller is released when the stream ends."""
        started = time.perf_counter()
        generation = Generation(engine.stream(wanted.messages, wanted.sampling), generation_slots)
        try:
            # The first piece is read before any byte is sent, so a prompt that does not fit is still a 400.
            first = await generation.next()
        except PromptTooLong as exc:
            await generation.close()
            return api_error(400, str(exc), param="messages", kind="context_length_exceeded")
        except BaseException:
            await generation.close()
            raise
        created = int(time.time())

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> bytes:
            return _sse({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                         "model": settings.model_name,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})

        async def events() -> AsyncIterator[bytes]:
            yield chunk({"role": "assistant", "content": ""})
            pieces = 0
            piece = first
            while piece is not None:
                if piece.text:
                    pieces += 1
                    yield chunk({"content": piece.text})
                if piece.finish_reason:
                    yield chunk({}, piece.finish_reason)
                piece = await generation.next()
            yield _sse("[DONE]")
            elapsed = time.perf_counter() - started
            metrics.inference.labels(settings.service).observe(elapsed)
            # llama.cpp streams one piece per generated token (a split multi-byte character waits for the next).
            metrics.tokens.labels(settings.service, "completion").inc(pieces)
            log.info("completion streamed", extra={"completion_pieces": pieces, "seconds": round(elapsed, 3)})

        return EventStream(events(), generation, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
