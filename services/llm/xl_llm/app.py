"""HTTP API: OpenAI-compatible chat completions plus the probes and metrics the deploy gates rely on."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Generator
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send
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

from .engine import Delta, Engine, PromptTooLong, Sampling
from .settings import Settings

log = logging.getLogger("xl_llm.http")

ROLES = ("system", "user", "assistant")
MAX_STOP_SEQUENCES = 4
ROUTES = ("/v1/chat/completions", "/v1/models")


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
    identity = settings.identity
    metrics = Metrics(identity)
    # Only the LLM has tokens; throughput in tokens per second is rate() of this over rate() of inference.
    tokens = Counter("xl_llm_tokens", "Tokens read (prompt) and generated (completion).", ["service", "kind"],
                     registry=metrics.registry)
    # One slot: the engine serialises generations anyway (see Engine), and waiting here instead of in a
    # worker thread lets a queued request give up after queue_timeout_s and keeps the threadpool free.
    generation_slots = asyncio.Semaphore(1)
    model_busy = f"the model stayed busy with other requests for {settings.queue_timeout_s:.0f} s"
    drill = FaultDrill(settings.faults)

    app = FastAPI(title="XleRobot LLM", version=identity.version, docs_url=None, redoc_url=None,
                  lifespan=engine_lifespan(engine, load_in_background, log))
    app.state.engine = engine
    app.state.settings = settings
    install_probes(app, identity=identity, metrics=metrics, engine=engine, faults=settings.faults, routes=ROUTES,
                   log=log, details=lambda: {"model": settings.model_name},
                   version_details=lambda: {"model": settings.model_name, "runtime": engine.runtime})

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": settings.model_name, "object": "model", "created": engine.created,
                                            "owned_by": "xlerobot"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        if not engine.ready:
            return api_error(503, "model is not ready", kind="service_unavailable")
        body = await read_json_body(request, settings.max_body_bytes, "messages")
        if isinstance(body, JSONResponse):
            return body
        try:
            wanted = parse_chat_request(body, settings)
        except InvalidRequest as exc:
            return api_error(exc.status, str(exc), param=exc.param)

        refused = await drill.before_inference()
        if refused is not None:
            return refused
        busy = await acquire_slot(generation_slots, settings.queue_timeout_s, 1, "generation", busy=model_busy)
        if busy is not None:
            return busy
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if wanted.stream:
            return await _stream(wanted, completion_id)
        try:
            result = await run_in_threadpool(engine.complete, wanted.messages, wanted.sampling)
        except PromptTooLong as exc:
            return api_error(400, str(exc), param="messages", kind="context_length_exceeded")
        finally:
            generation_slots.release()
        metrics.inference.labels(identity.service).observe(result.inference_s)
        tokens.labels(identity.service, "prompt").inc(result.prompt_tokens)
        tokens.labels(identity.service, "completion").inc(result.completion_tokens)
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
            metrics.inference.labels(identity.service).observe(elapsed)
            # llama.cpp streams one piece per generated token (a split multi-byte character waits for the next).
            tokens.labels(identity.service, "completion").inc(pieces)
            log.info("completion streamed", extra={"completion_pieces": pieces, "seconds": round(elapsed, 3)})

        return EventStream(events(), generation, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
