"""A service under test as a real uvicorn process on 127.0.0.1, started from its source folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import requests

from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
LOG_DIR = REPO / ".cache" / "service-logs"
COMMON = REPO / "services" / "common"
Server = TypeVar("Server", bound="ServiceProcess")


class ServiceProcess:
    """`python -m <module>` in services/<service>/, with the shared xl_service package importable."""

    def __init__(self, service: str, module: str, env: dict[str, str], graceful_timeout_s: float = 30):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.log = open(LOG_DIR / f"{service}-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        service_dir = REPO / "services" / service
        path = os.pathsep.join(filter(None, [str(service_dir), str(COMMON), os.environ.get("PYTHONPATH")]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port),
             "--graceful-timeout", str(graceful_timeout_s)],
            # Not the service folder: `python -m` puts its cwd first on sys.path, and there a build leaves its own
            # copy of xl_service (the image's build context), which may be older than services/common.
            cwd=COMMON, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": path, "XL_VERSION": "9.9.9-test", "XL_COLOUR": "green",
                 "XL_RELEASE": "r-test", "XL_IMAGE": "registry.test/xlerobot/svc@sha256:" + "0" * 64, **env},
        )

    def _wait(self, path: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                if requests.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{path} did not answer 200 within {timeout:g} s:\n{self.log_text()[-3000:]}")

    def wait_ready(self, timeout: float = 120) -> None:
        self._wait("/readyz", timeout)

    def wait_alive(self, timeout: float = 60) -> None:
        self._wait("/healthz", timeout)

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.log.close()
        return self.process.returncode


def running(server: Server) -> Iterator[Server]:
    """For a fixture, ``yield from running(server)``: the server once it is ready, stopped afterwards."""
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def launcher(make: Callable[..., Server]) -> Iterator[Callable[..., Server]]:
    """For a fixture, ``yield from launcher(make)``: a function that starts servers with ``make(**env)``, every one
    of them stopped afterwards."""
    started: list[Server] = []

    def _start(**env: str) -> Server:
        server = make(**env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()
