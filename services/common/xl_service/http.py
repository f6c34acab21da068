"""The HTTP surface every service shares: JSON errors, bounded bodies, metrics, probes and the fault drill.

A service builds its FastAPI app, then calls ``install_probes`` for /healthz, /readyz, /version, /metrics and
the request-observing middleware; its own endpoints use ``api_error``, ``read_body``, ``acquire_slot`` and
``FaultDrill``. Metric names and labels are the same for every service, so one set of alert rules and
canary queries covers them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool

from .settings import Faults, Identity

PROBES = ("/healthz", "/readyz", "/metrics", "/version")
ERROR_STATUSES = ("500", "503")
# Fine enough below 3 s that histogram_quantile's interpolation inside one bucket stays well under the
# canary analysis' latency budgets (a quarter second for speech synthesis).
LATENCY_BUCKETS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5,
                   3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0)
INFERENCE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)


class Loadable(Protocol):
    """What the probes need to know of a service's engine."""

    @property
    def ready(self) -> bool: ...

    @property
    def load_error(self) -> str | None: ...

    @property
    def load_seconds(self) -> float | None: ...

    def load(self) -> None: ...


def api_error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
              **extra: Any) -> JSONResponse:
    """An OpenAI-style error body: the message names what is wrong, ``param`` the field to blame."""
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, **extra}})


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None once it grows past ``limit`` (a missing or false Content-Length cannot get around it)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


class InvalidRequest(Exception):
    """A request the service refuses, with the field to blame."""

    def __init__(self, message: str, param: str, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


async def read_json_body(request: Request, limit: int, param: str) -> bytes | JSONResponse:
    """An application/json body of at most ``limit`` bytes, or the 400 or 413 that refuses it, blaming ``param``."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return api_error(413, f"body of {declared} bytes exceeds the limit of {limit} bytes", param=param)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        return api_error(400, f"expected an application/json body, got {content_type or 'no content type'!r}",
                         param=param)
    body = await read_body(request, limit)
    if body is None:
        return api_error(413, f"body exceeds the limit of {limit} bytes", param=param)
    return body


async def acquire_slot(slots: asyncio.Semaphore, timeout_s: float, capacity: int, what: str,
                       busy: str | None = None) -> JSONResponse | None:
    """Wait for an inference slot; a 503 naming the wait when none frees up in time (the gateway retries it).
    ``busy``, when given, is that 503's message instead of the one counting the slots."""
    try:
        await asyncio.wait_for(slots.acquire(), timeout=timeout_s)
    except TimeoutError:
        return api_error(503, busy or f"all {capacity} {what} slots stayed busy for {timeout_s:.0f} s",
                         kind="service_unavailable")
    return None


class Metrics:
    """One registry per app, so tests can build several apps in one process."""

    def __init__(self, identity: Identity, inference_buckets: Sequence[float] = INFERENCE_BUCKETS):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "xl_http_requests", "HTTP requests by endpoint and status.", ["service", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "xl_http_request_duration_seconds", "HTTP request latency.", ["service", "endpoint"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.inference = Histogram(
            "xl_inference_seconds", "Model inference time per request.", ["service"],
            buckets=tuple(inference_buckets), registry=self.registry,
        )
        self.in_flight = Gauge("xl_http_in_flight_requests", "Requests being served.", ["service"],
                               registry=self.registry)
        self.model_load = Gauge("xl_model_load_seconds", "Seconds the model took to load and warm up.", ["service"],
                                registry=self.registry)
        self.ready = Gauge("xl_ready", "1 once the model is loaded and warmed up.", ["service"], registry=self.registry)
        info = Gauge("xl_build_info", "Identity of this instance.", ["service", "version", "colour", "release"],
                     registry=self.registry)
        info.labels(identity.service, identity.version, identity.colour, identity.release).set(1)


class FaultDrill:
    """Applies the injected faults (XL_FAULT) at the start of each inference request."""

    def __init__(self, faults: Faults):
        self.faults = faults
        self.seen = 0
        self._crash: asyncio.TimerHandle | None = None

    async def before_inference(self) -> JSONResponse | None:
        """A 500 when the error_rate fault fails this request; otherwise None, after any injected latency."""
        faults = self.faults
        if faults.crash_after_s and self._crash is None:
            self._crash = asyncio.get_running_loop().call_later(faults.crash_after_s, os._exit, 3)
        self.seen += 1
        if faults.fails(self.seen):
            return api_error(500, "fault injected: error_rate", kind="server_error")
        if faults.latency_ms:
            await asyncio.sleep(faults.latency_ms / 1000)
        return None


def engine_lifespan(engine: Loadable, load_in_background: bool, log: logging.Logger,
                    ) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Load the engine when the app starts: in a thread, so /healthz answers while the model loads."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if load_in_background:
            threading.Thread(target=engine.load, name="model-load", daemon=True).start()
        else:
            await run_in_threadpool(engine.load)
        yield
        log.info("shutting down: in-flight requests have finished")

    return lifespan


def install_probes(app: FastAPI, *, identity: Identity, metrics: Metrics, engine: Loadable, faults: Faults,
                   routes: Sequence[str], log: logging.Logger,
                   details: Callable[[], dict[str, Any]] = dict, loading: str = "model loading",
                   version_details: Callable[[], dict[str, Any]] | None = None) -> None:
    """Add the request-observing middleware and the probes; ``details`` adds to /readyz and /version, or to
    /readyz alone where ``version_details`` says what /version adds."""
    known = (*routes, *PROBES)
    about = version_details or details
    # The error and success series exist from the start at 0: Prometheus' rate() and increase() ignore a counter's
    # first sample, so a series born with its first request would hide that request (an error from every
    # error-ratio query, a new colour's first answers from a deploy report written seconds after its switch).
    for route in routes:
        for status in (*ERROR_STATUSES, "200"):
            metrics.requests.labels(identity.service, route, status)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        endpoint = request.url.path if request.url.path in known else "other"
        started = time.perf_counter()
        metrics.in_flight.labels(identity.service).inc()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.labels(identity.service).dec()
            metrics.requests.labels(identity.service, endpoint, str(status)).inc()
            metrics.latency.labels(identity.service, endpoint).observe(elapsed)
            if endpoint not in PROBES:
                log.info("request", extra={"method": request.method, "path": request.url.path, "status": status,
                                           "seconds": round(elapsed, 4)})
        response.headers["X-Served-By"] = identity.served_by
        return response

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive", "service": identity.service}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        if engine.ready:
            return JSONResponse({"status": "ready", **details()})
        reason = engine.load_error or ("fault injected: never_ready" if faults.never_ready else loading)
        return JSONResponse(status_code=503, content={"status": "not ready", "reason": reason})

    @app.get("/version")
    async def version() -> dict[str, Any]:
        return {"service": identity.service, "version": identity.version, "colour": identity.colour,
                "release": identity.release, "image": identity.image, **about()}

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        metrics.ready.labels(identity.service).set(1 if engine.ready else 0)
        if engine.load_seconds is not None:
            metrics.model_load.labels(identity.service).set(engine.load_seconds)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
