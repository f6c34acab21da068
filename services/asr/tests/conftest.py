"""Fixtures for the ASR service tests: the real Whisper model and a real uvicorn process serving it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support import models

SERVICE_DIR = Path(__file__).resolve().parents[1]
REPO = SERVICE_DIR.parents[1]
MODEL_CACHE = REPO / ".cache" / "models" / "whisper-base"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model assembled from its pinned wheels and verified by sha256, as the image build does."""
    return models.whisper_base()


class Server:
    def __init__(self, model: Path, env: dict[str, str]):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(MODEL_CACHE.parent / f"asr-test-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xl_asr", "--host", "127.0.0.1", "--port", str(self.port),
             "--graceful-timeout", "30"],
            cwd=SERVICE_DIR, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "ASR_MODEL_DIR": str(model), "XL_VERSION": "9.9.9-test", "XL_COLOUR": "green",
                 "XL_RELEASE": "r-test", **env},
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited with {self.process.returncode}")
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.25)
        raise RuntimeError("service did not become ready")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="session")
def asr_server(model_dir: Path) -> Iterator[Server]:
    server = Server(model_dir, {"ASR_MAX_UPLOAD_BYTES": "400000", "ASR_MAX_AUDIO_SECONDS": "8"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def start_server(model_dir: Path) -> Iterator[object]:
    started: list[Server] = []

    def _start(**env: str) -> Server:
        server = Server(model_dir, env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()
