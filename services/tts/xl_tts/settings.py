"""TTS settings, read once from the environment (the container's contract with the deploy roles)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import ClassVar

from xl_service.settings import Faults, Identity, SettingsError, env_float, env_int, faults, log_level

FALLBACK_ENGINES = ("espeak-ng",)


def _env_names(name: str, default: str) -> tuple[str, ...]:
    raw = os.environ.get(name, default)
    names = tuple(part.strip() for part in raw.split(",") if part.strip())
    for entry in names:
        if not entry.replace("-", "").replace("_", "").isalnum():
            raise SettingsError(f"{name}: {entry!r} is not a voice name (letters, digits, '-' and '_')")
    return names


def _env_fallback(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        return ""
    if value not in FALLBACK_ENGINES:
        raise SettingsError(f"{name}={value!r} is not a fallback engine; use one of {', '.join(FALLBACK_ENGINES)} "
                            "or leave it empty")
    # A fallback that cannot run would only turn a clear load failure into a confusing second one.
    if shutil.which(value) is None:
        raise SettingsError(f"{name}={value!r} but no {value} binary is on PATH")
    return value


@dataclass(frozen=True)
class Settings:
    # Runtime settings (environment variable -> field): read per request, so a running instance takes them on
    # SIGHUP (xl_service.runtime); XL_LOG_LEVEL too.
    RUNTIME_ENV: ClassVar[dict[str, str]] = {"TTS_QUEUE_TIMEOUT_S": "queue_timeout_s"}
    identity: Identity = field(default_factory=lambda: Identity("tts"))
    voice_model: str = "/opt/models/joe-medium/en_US-joe-medium.onnx"
    model_name: str = "piper-joe-medium"
    voice: str = "joe"
    voice_aliases: tuple[str, ...] = ("alloy", "echo", "fable", "onyx", "nova", "shimmer")
    fallback_engine: str = ""
    espeak_voice: str = "en-us"
    cpu_threads: int = 2
    max_concurrency: int = 1
    max_input_chars: int = 2000
    max_body_bytes: int = 64 * 1024
    sentence_silence_s: float = 0.2
    queue_timeout_s: float = 60.0
    log_level: str = "INFO"
    faults: Faults = field(default_factory=Faults)

    @property
    def voices(self) -> tuple[str, ...]:
        """Every name a request may ask for; all of them are spoken by the one loaded voice."""
        return (self.voice, *(alias for alias in self.voice_aliases if alias != self.voice))

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ.get
        max_input_chars = env_int("TTS_MAX_INPUT_CHARS", 2000, minimum=1)
        max_body_bytes = env_int("TTS_MAX_BODY_BYTES", 64 * 1024, minimum=1024)
        # JSON clients commonly escape non-ASCII text as \uXXXX: six bytes for every character of the input.
        body_needed = 6 * max_input_chars + 1024
        if max_body_bytes < body_needed:
            raise SettingsError(f"TTS_MAX_BODY_BYTES={max_body_bytes} cannot carry TTS_MAX_INPUT_CHARS="
                                f"{max_input_chars} characters of escaped JSON; it needs at least {body_needed}")
        return cls(
            identity=Identity.from_env("tts"),
            voice_model=env("TTS_VOICE_MODEL", "/opt/models/joe-medium/en_US-joe-medium.onnx"),
            model_name=env("TTS_MODEL_NAME", "piper-joe-medium"),
            voice=env("TTS_VOICE", "joe"),
            voice_aliases=_env_names("TTS_VOICE_ALIASES", "alloy,echo,fable,onyx,nova,shimmer"),
            fallback_engine=_env_fallback("TTS_FALLBACK_ENGINE"),
            espeak_voice=env("TTS_ESPEAK_VOICE", "en-us"),
            cpu_threads=env_int("TTS_CPU_THREADS", 2, minimum=1),
            max_concurrency=env_int("TTS_MAX_CONCURRENCY", 1, minimum=1),
            max_input_chars=max_input_chars,
            max_body_bytes=max_body_bytes,
            sentence_silence_s=env_float("TTS_SENTENCE_SILENCE_S", 0.2),
            queue_timeout_s=env_float("TTS_QUEUE_TIMEOUT_S", 60.0, minimum=0.1),
            log_level=log_level(),
            faults=faults(),
        )
