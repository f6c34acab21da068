"""Fixtures for the multimodal service tests: the real ASR, LLM and TTS services as processes with their real
models, and the multimodal service in front of them with its real OCR models."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
import requests

from tests.support import models
from tests.support.service_process import ServiceProcess, launcher, running


@pytest.fixture(scope="session")
def downstream() -> Iterator[dict[str, ServiceProcess]]:
    """ASR, LLM and TTS, each a real service process, started side by side."""
    started = {
        "asr": ServiceProcess("asr", "xl_asr", {"ASR_MODEL_DIR": str(models.whisper_base())}),
        "llm": ServiceProcess("llm", "xl_llm", {"LLM_MODEL_PATH": str(models.smollm2()), "LLM_CONTEXT": "1024",
                                                "LLM_MAX_TOKENS": "48", "LLM_MAX_TOKENS_LIMIT": "256",
                                                "LLM_THREADS": "1"}),
        "tts": ServiceProcess("tts", "xl_tts", {"TTS_VOICE_MODEL": str(models.piper_joe())}),
    }
    try:
        for process in started.values():
            process.wait_ready(timeout=180)
        yield started
    finally:
        for process in started.values():
            process.stop()


@pytest.fixture(scope="session")
def stage_env(downstream: dict[str, ServiceProcess]) -> dict[str, str]:
    """Settings that point the multimodal service straight at the three downstream processes."""
    return {"MM_ASR_URL": f"{downstream['asr'].url}/v1/audio/transcriptions",
            "MM_LLM_URL": f"{downstream['llm'].url}/v1/chat/completions",
            "MM_TTS_URL": f"{downstream['tts'].url}/v1/audio/speech"}


def multimodal_env(**env: str) -> dict[str, str]:
    return {"MM_OCR_MODEL_DIR": str(models.pp_ocrv4()), "MM_OCR_THREADS": "2", **env}


@pytest.fixture(scope="session")
def mm_server(stage_env: dict[str, str]) -> Iterator[ServiceProcess]:
    yield from running(ServiceProcess("multimodal", "xl_multimodal",
                                      multimodal_env(**stage_env, MM_MAX_AUDIO_BYTES="2000000",
                                                     MM_MAX_IMAGE_BYTES="300000", MM_MAX_IMAGE_PIXELS="1000000")))


@pytest.fixture()
def start_server() -> Iterator[Callable[..., ServiceProcess]]:
    yield from launcher(lambda **env: ServiceProcess("multimodal", "xl_multimodal", multimodal_env(**env)))


@pytest.fixture(scope="session")
def speak(downstream: dict[str, ServiceProcess]) -> Callable[[str], bytes]:
    """Piper (through the real TTS service) saying `text`, as WAV bytes."""

    def _speak(text: str) -> bytes:
        response = requests.post(f"{downstream['tts'].url}/v1/audio/speech", json={"input": text}, timeout=60)
        response.raise_for_status()
        return response.content

    return _speak


@pytest.fixture(scope="session")
def transcribe(downstream: dict[str, ServiceProcess]) -> Callable[[bytes], str]:
    def _transcribe(audio: bytes) -> str:
        response = requests.post(f"{downstream['asr'].url}/v1/audio/transcriptions",
                                 files={"file": ("reply.wav", audio, "audio/wav")}, timeout=60)
        response.raise_for_status()
        return str(response.json()["text"])

    return _transcribe


class SilentServer:
    """Accepts connections on 127.0.0.1 and never answers: a downstream stage that hangs."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(16)
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.held.append(connection)

    def close(self) -> None:
        for connection in self.held:
            connection.close()
        self.socket.close()


@pytest.fixture()
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()
