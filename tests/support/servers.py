"""Small real servers for unit tests: an HTTP stub instance and a throwaway HAProxy, both on 127.0.0.1."""

from __future__ import annotations

import base64
import http.server
import json
import math
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
import wave
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def silent_wav(seconds: float, rate: int = 16000) -> bytes:
    buffer = BytesIO()
    with wave.open(buffer, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(rate)
        clip.writeframes(b"\x00\x00" * int(rate * seconds))
    return buffer.getvalue()


class FakeInstance:
    """An HTTP server whose /healthz, /readyz, transcription and speech answers the test controls.

    A speech request (/v1/audio/speech) answers `speech_seconds` of silent 16 kHz WAV, or `speech_body`
    when that is set; a chat request (/v1/chat/completions) answers `chat_answer` with `chat_status`; an
    interaction (/v1/interact) answers `interaction_answer` (its audio: `speech_seconds` of silent WAV) with
    `interaction_status`; any other POST is a transcription answering `transcript`.
    """

    def __init__(self) -> None:
        self.ready = True
        self.alive = True
        self.transcript = "turn off the radio in the living room"
        self.transcription_status = 200
        self.speech_seconds = 2.0
        self.speech_body: bytes | None = None
        self.spoken: list[dict[str, Any]] = []
        self.chat_status = 200
        self.chat_answer: Any = {"object": "chat.completion",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}]}
        self.asked: list[dict[str, Any]] = []
        self.interaction_status = 200
        self.interaction_answer: dict[str, Any] = {
            "transcript": "can you turn on the kitchen lights please", "reply": "The kitchen lights are on.",
            "timings": {"asr": 0.5, "llm": 0.4, "tts": 0.2, "total": 1.1}}
        self.interactions = 0
        # What /version answers.
        self.about: dict[str, Any] = {"service": "asr", "version": "1.0.0", "colour": "blue", "release": "r1",
                                      "image": "reg/xlerobot/asr@sha256:old"}
        # How many /version requests answer 503 before it answers `about` (a busy instance's lost answer).
        self.version_failures = 0
        # Authorization header of each transcription request ("" when none was sent).
        self.authorizations: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/healthz":
                    self._send(200 if owner.alive else 500, {"status": "alive"})
                elif self.path == "/readyz":
                    self._send(200 if owner.ready else 503, {"status": "ready" if owner.ready else "loading"})
                elif self.path == "/version" and owner.version_failures > 0:
                    owner.version_failures -= 1
                    self._send(503, {"status": "busy"})
                elif self.path == "/version":
                    self._send(200, owner.about)
                else:
                    self._send(404, {"error": "no such path"})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length)
                if self.path == "/v1/audio/speech":
                    owner.spoken.append(json.loads(body))
                    audio = owner.speech_body if owner.speech_body is not None else silent_wav(owner.speech_seconds)
                    self.send_response(200)
                    self.send_header("Content-Type", "audio/wav")
                    self.send_header("Content-Length", str(len(audio)))
                    self.end_headers()
                    self.wfile.write(audio)
                    return
                if self.path == "/v1/interact":
                    owner.interactions += 1
                    encoded = base64.b64encode(silent_wav(owner.speech_seconds)).decode()
                    answer = {"audio": {"format": "wav", "base64": encoded}, **owner.interaction_answer}
                    self._send(owner.interaction_status, answer)
                    return
                if self.path == "/v1/chat/completions":
                    owner.asked.append(json.loads(body))
                    self._send(owner.chat_status, owner.chat_answer)
                    return
                owner.authorizations.append(self.headers.get("Authorization", ""))
                self._send(owner.transcription_status, {"text": owner.transcript})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeInstance":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Haproxy:
    """A real HAProxy with one backend `be_test` and the given servers (name -> (port, weight)), and the backends of
    `backends` ({backend: {server: (port, weight)}}) beside it."""

    def __init__(self, workdir: Path, servers: dict[str, tuple[int, int]], frontend: Sequence[str] = (),
                 backends: dict[str, dict[str, tuple[int, int]]] | None = None):
        self.workdir = workdir
        self.socket = str(workdir / "admin.sock")
        self.frontend_port = free_port()
        self.config = workdir / "haproxy.cfg"
        lines = [
            "global",
            f"    stats socket {self.socket} mode 600 level admin",
            "defaults",
            "    mode http",
            "    timeout connect 1s",
            "    timeout client 10s",
            "    timeout server 10s",
            "    default-server inter 200ms fall 1 rise 1",
            "frontend fe",
            f"    bind 127.0.0.1:{self.frontend_port}",
            *(f"    {line}" for line in frontend),
            "    default_backend be_test",
            "backend be_test",
            "    balance leastconn",
            "    option httpchk GET /readyz",
            "    http-check expect status 200",
        ]
        lines += [f"    server {name} 127.0.0.1:{port} weight {weight} check" for name, (port, weight)
                  in servers.items()]
        for backend, members in (backends or {}).items():
            lines += [f"backend {backend}", "    option httpchk GET /readyz", "    http-check expect status 200"]
            lines += [f"    server {name} 127.0.0.1:{port} weight {weight} check" for name, (port, weight)
                      in members.items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Haproxy":
        self.process = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not Path(self.socket).exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("HAProxy did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)


class Prometheus:
    """A real Prometheus (the Debian package's binary) on a free loopback port that scrapes its own /metrics every
    second as job `xlerobot-services` with the labels `labels` (e.g. {"service": "asr"}): what the engine's queries
    read from the environments' Prometheus, with a target that is there. Entered once the first scrape is in."""

    def __init__(self, workdir: Path, labels: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "scrape_configs": [{"job_name": "xlerobot-services", "static_configs": [
                      {"targets": [f"127.0.0.1:{self.port}"], "labels": labels}]}]}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps(config))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Prometheus":
        self.process = subprocess.Popen(
            ["prometheus", f"--config.file={self.config}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                # Ready once it has scraped its target: before that it knows no series of it.
                query = urllib.parse.urlencode({"query": 'up{job="xlerobot-services"}'})
                with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=2) as answer:
                    if json.loads(answer.read())["data"]["result"]:
                        return self
                time.sleep(0.2)
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.__exit__()
                    raise RuntimeError("Prometheus did not start") from None
                time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)


class FakePrometheus:
    """An HTTP server answering /api/v1/query like Prometheus, with answers the test sets per PromQL query.

    `answer(query, *values)`: each value is one instant answer, served in order (the last one repeats):
    a number or a Prometheus sample string ("NaN", "+Inf") is one series, None is no series at all, and a list
    of values is that many series. Queries with no answer set get an empty vector, as Prometheus gives for
    series that do not exist. `queries` records every query received; `status` other than 200 makes every
    answer an error with that HTTP status.
    """

    def __init__(self) -> None:
        self.answers: dict[str, list[Any]] = {}
        self.ranges: dict[str, list[dict[str, Any]]] = {}  # query_range: query -> matrix result, as Prometheus has it
        self.queries: list[str] = []
        self.status = 200
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path == "/api/v1/query_range":
                    query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                    owner.queries.append(query)
                    self._send(200, {"status": "success", "data": {"resultType": "matrix",
                                                                   "result": owner.ranges.get(query, [])}})
                    return
                if url.path != "/api/v1/query":
                    self._send(404, {"status": "error", "errorType": "not_found", "error": "no such path"})
                    return
                query = urllib.parse.parse_qs(url.query).get("query", [""])[0]
                owner.queries.append(query)
                if owner.status != 200:
                    self._send(owner.status, {"status": "error", "errorType": "internal", "error": "fake failure"})
                    return
                self._send(200, {"status": "success", "data": {"resultType": "vector",
                                                               "result": owner.series(query)}})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, query: str, *values: Any) -> None:
        self.answers[query] = list(values)

    def series(self, query: str) -> list[dict[str, Any]]:
        queue = self.answers.get(query)
        if not queue:
            return []
        value = queue.pop(0) if len(queue) > 1 else queue[0]
        if value is None:
            return []
        values = value if isinstance(value, list) else [value]
        return [{"metric": {"series": str(index)} if len(values) > 1 else {},
                 "value": [time.time(), _sample_text(item)]} for index, item in enumerate(values)]

    def __enter__(self) -> "FakePrometheus":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sample_text(value: Any) -> str:
    """A sample value as Prometheus writes it: a string, with NaN and infinities spelled its way."""
    if isinstance(value, str):
        return value
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)
