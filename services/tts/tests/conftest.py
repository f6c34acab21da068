"""Fixtures for the TTS service tests: the real Piper voice, a real uvicorn process serving it, and the
ASR service's Whisper model to hear what it said."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import models

SERVICE_DIR = Path(__file__).resolve().parents[1]
REPO = SERVICE_DIR.parents[1]
CACHE = REPO / ".cache"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def voice_model() -> Path:
    """The Piper voice extracted from its pinned wheel and verified by sha256."""
    return models.piper_joe()


@pytest.fixture(scope="session")
def transcribe() -> Callable[[bytes], str]:
    """Speech recognition through the ASR service's own engine and Whisper model (same cache as its tests)."""
    from xl_asr.engine import Engine, decode
    from xl_asr.settings import Settings as AsrSettings

    engine = Engine(AsrSettings(model_dir=str(models.whisper_base())))
    engine.load()
    if engine.load_error:
        raise RuntimeError(f"Whisper did not load: {engine.load_error}")

    def _transcribe(audio: bytes) -> str:
        return engine.transcribe(decode(audio)).text

    return _transcribe


class Server:
    def __init__(self, voice_model: Path, env: dict[str, str]):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(CACHE / "models" / f"tts-test-{self.port}.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xl_tts", "--host", "127.0.0.1", "--port", str(self.port),
             "--graceful-timeout", "30"],
            cwd=SERVICE_DIR, stdout=self.log, stderr=subprocess.STDOUT,
            env={**os.environ, "TTS_VOICE_MODEL": str(voice_model), "XL_VERSION": "9.9.9-test", "XL_COLOUR": "green",
                 "XL_RELEASE": "r-test", **env},
        )

    def speak(self, timeout: float = 120, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}/v1/audio/speech", timeout=timeout, **kwargs)

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

    def wait_alive(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                time.sleep(0.25)
        raise RuntimeError("service did not start")

    def log_text(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)
        self.log.close()


@pytest.fixture(scope="session")
def tts_server(voice_model: Path) -> Iterator[Server]:
    server = Server(voice_model, {"TTS_MAX_INPUT_CHARS": "300", "TTS_MAX_BODY_BYTES": "4096"})
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def start_server(voice_model: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def _start(**env: str) -> Server:
        server = Server(voice_model, env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()
