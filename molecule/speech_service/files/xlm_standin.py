"""A stand-in speech service for the speech_service scenario: the container contract of the real services, no model.

The real images (services/*) are 0.4-0.8 GB of wheels and models, built by `make build` from PyPI wheels, and a
molecule run on a fresh machine (CI's molecule job) has none of them. What the speech_service role relies on is the
contract every service shares, and this stand-in keeps it with the real shared library (services/common/xl_service)
rather than a copy of it: settings from the environment (Identity), the runtime file applied at start and on SIGHUP
(runtime.LiveSettings, served at /runtime), JSON logs, /healthz and /readyz with the real services' answers, the
image's HEALTHCHECK (xl_service.healthcheck, which asks /readyz), the XL_LISTEN_* overrides, and a clean exit on
SIGTERM. Only the HTTP stack differs: the standard library's, since FastAPI and uvicorn are not on the test host.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from xl_service import jsonlog
from xl_service.runtime import RUNTIME_FILE_VAR, LiveSettings
from xl_service.settings import Identity, SettingsError, log_level

log = logging.getLogger("xlm_standin")


@dataclass(frozen=True)
class Settings:
    """What the stand-in reads from its environment; like every service, it reloads only its log level."""

    identity: Identity = field(default_factory=lambda: Identity("standin"))
    log_level: str = "INFO"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(identity=Identity.from_env("standin"), log_level=log_level())


def handler_for(live: LiveSettings[Settings]) -> type[BaseHTTPRequestHandler]:
    identity = live.identity

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answers: dict[str, Callable[[], dict[str, Any]]] = {
                "/healthz": lambda: {"status": "alive", "service": identity.service},
                "/readyz": lambda: {"status": "ready"},
                "/version": lambda: {"service": identity.service, "version": identity.version,
                                     "colour": identity.colour, "release": identity.release},
                "/runtime": live.describe,
            }
            answer = answers.get(self.path)
            if answer is None:
                self._send(404, {"error": f"no route {self.path}"})
            else:
                self._send(200, answer())

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug(format, *args)

    return Handler


def main() -> int:
    try:
        live = LiveSettings(Settings.from_env, os.environ.get(RUNTIME_FILE_VAR) or None)
        live.start()
    except SettingsError as exc:
        print(f"xlm_standin: invalid setting: {exc}", file=sys.stderr)
        return 2
    jsonlog.configure(live.log_level, {"service": live.identity.service, "version": live.identity.version,
                                       "colour": live.identity.colour})
    host = os.environ.get("XL_LISTEN_HOST") or "0.0.0.0"
    port = int(os.environ.get("XL_LISTEN_PORT") or 8000)
    server = ThreadingHTTPServer((host, port), handler_for(live))
    signal.signal(signal.SIGHUP, lambda _signum, _frame: live.reload())
    # shutdown() waits for serve_forever() to return, so it cannot run on the thread that serves.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: threading.Thread(target=server.shutdown).start())
    log.info("serving", extra={"host": host, "port": port, "runtime_version": live.version})
    server.serve_forever()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
