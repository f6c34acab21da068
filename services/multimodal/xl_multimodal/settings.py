"""Multimodal settings, read once from the environment (the container's contract with the deploy roles)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from xl_service.settings import Faults, Identity, SettingsError, env_float, env_int, faults, log_level

DEFAULT_SYSTEM_PROMPT = ("You are XleRobot, a helpful home robot. Answer the user in English, in one or two short, "
                         "plain sentences that can be spoken aloud.")


def _env_url(name: str, default: str) -> str:
    """An http(s) URL without a trailing slash; empty stays empty when the default is empty."""
    value = os.environ.get(name) or default
    if value and not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name}={value!r} is not an http(s) URL")
    return value.rstrip("/")


@dataclass(frozen=True)
class Settings:
    # Runtime settings (environment variable -> field): read per request, so a running instance takes them on
    # SIGHUP (xl_service.runtime); XL_LOG_LEVEL too.
    RUNTIME_ENV: ClassVar[dict[str, str]] = {
        "MM_MAX_TOKENS": "max_tokens",
        "MM_TEMPERATURE": "temperature",
        "MM_QUEUE_TIMEOUT_S": "queue_timeout_s",
    }
    identity: Identity = field(default_factory=lambda: Identity("multimodal"))
    # The three stages are reached through the gateway by default, so they follow its traffic split.
    gateway_url: str = "http://127.0.0.1:8080"
    # Presented to the gateway as a bearer token where its authentication is on; never logged.
    gateway_api_key: str = field(default="", repr=False)
    asr_url: str = ""
    llm_url: str = ""
    tts_url: str = ""
    asr_timeout_s: float = 30.0
    llm_timeout_s: float = 60.0
    tts_timeout_s: float = 30.0
    connect_timeout_s: float = 2.0
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_tokens: int = 64
    temperature: float = 0.0
    voice: str = "joe"
    max_audio_bytes: int = 10 * 1024 * 1024
    max_image_bytes: int = 5 * 1024 * 1024
    max_image_pixels: int = 4_000_000
    max_image_text_chars: int = 500
    ocr_model_dir: str = "/opt/models/pp-ocrv4"
    ocr_threads: int = 2
    max_concurrency: int = 4
    queue_timeout_s: float = 60.0
    log_level: str = "INFO"
    faults: Faults = field(default_factory=Faults)

    @property
    def stage_urls(self) -> dict[str, str]:
        return {"asr": self.asr_url or f"{self.gateway_url}/v1/audio/transcriptions",
                "llm": self.llm_url or f"{self.gateway_url}/v1/chat/completions",
                "tts": self.tts_url or f"{self.gateway_url}/v1/audio/speech"}

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            identity=Identity.from_env("multimodal"),
            gateway_url=_env_url("XL_GATEWAY_URL", "http://127.0.0.1:8080"),
            gateway_api_key=env("XL_GATEWAY_API_KEY", ""),
            asr_url=_env_url("MM_ASR_URL", ""),
            llm_url=_env_url("MM_LLM_URL", ""),
            tts_url=_env_url("MM_TTS_URL", ""),
            asr_timeout_s=env_float("MM_ASR_TIMEOUT_S", 30.0, minimum=0.1),
            llm_timeout_s=env_float("MM_LLM_TIMEOUT_S", 60.0, minimum=0.1),
            tts_timeout_s=env_float("MM_TTS_TIMEOUT_S", 30.0, minimum=0.1),
            connect_timeout_s=env_float("MM_CONNECT_TIMEOUT_S", 2.0, minimum=0.1),
            system_prompt=env("MM_SYSTEM_PROMPT") or DEFAULT_SYSTEM_PROMPT,
            max_tokens=env_int("MM_MAX_TOKENS", 64, minimum=1),
            temperature=env_float("MM_TEMPERATURE", 0.0),
            voice=env("MM_VOICE", "joe"),
            max_audio_bytes=env_int("MM_MAX_AUDIO_BYTES", 10 * 1024 * 1024, minimum=1024),
            max_image_bytes=env_int("MM_MAX_IMAGE_BYTES", 5 * 1024 * 1024, minimum=1024),
            max_image_pixels=env_int("MM_MAX_IMAGE_PIXELS", 4_000_000, minimum=10_000),
            max_image_text_chars=env_int("MM_MAX_IMAGE_TEXT_CHARS", 500, minimum=1),
            ocr_model_dir=env("MM_OCR_MODEL_DIR", "/opt/models/pp-ocrv4"),
            ocr_threads=env_int("MM_OCR_THREADS", 2, minimum=1),
            max_concurrency=env_int("MM_MAX_CONCURRENCY", 4, minimum=1),
            queue_timeout_s=env_float("MM_QUEUE_TIMEOUT_S", 60.0, minimum=0.1),
            log_level=log_level(),
            faults=faults(),
        )
