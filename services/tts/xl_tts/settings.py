"""Service settings, read once from the environment (the container's contract with the deploy roles)."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field

FALLBACK_ENGINES = ("espeak-ng",)


class SettingsError(ValueError):
    """An environment variable holds a value the service cannot use."""


def _env_int(name: str, default: int, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


def _env_float(name: str, default: float, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} is below the minimum {minimum}")
    return value


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


def _fault_number(key: str, raw: str, kind: type[int] | type[float]) -> int | float:
    try:
        return kind(raw)
    except ValueError as exc:
        raise SettingsError(f"XL_FAULT: {key}={raw!r} is not a number") from exc


@dataclass(frozen=True)
class Faults:
    """Fault injection, for building deliberately broken versions that exercise the deploy gates.

    Parsed from ``XL_FAULT``, a comma-separated list such as ``never_ready`` or
    ``error_rate=0.05,latency_ms=500``. Empty in every normal image. ``error_rate`` fails exactly that share
    of the requests, evenly spread (see ``fails``). ``errors_after=N`` serves the first N
    syntheses cleanly before ``error_rate`` applies: a version that passes its smoke gates and then fails
    under real traffic, which is what canary analysis exists to catch. ``garble`` speaks a fixed sentence
    instead of the requested one, which only a round trip through speech recognition notices.
    """

    never_ready: bool = False
    garble: bool = False
    error_rate: float = 0.0
    errors_after: int = 0
    latency_ms: int = 0
    crash_after_s: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> "Faults":
        values: dict[str, object] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            key, _, raw = item.partition("=")
            if key in ("never_ready", "garble"):
                values[key] = True
            elif key in ("error_rate", "crash_after_s"):
                values[key] = _fault_number(key, raw, float)
            elif key in ("latency_ms", "errors_after"):
                values[key] = _fault_number(key, raw, int)
            else:
                raise SettingsError(f"XL_FAULT: unknown fault {key!r}")
        return cls(**values)  # type: ignore[arg-type]

    def fails(self, seen: int) -> bool:
        """Whether request number `seen` (from 1) is one the error_rate fault fails: exactly that share of the
        requests after the first `errors_after`, evenly spread and starting with the first of them, so a drill
        fails the same way on every run."""
        served = seen - self.errors_after
        # Rounded first, so that 10 * 0.3 counts as 3 and not 3.0000000000000004.
        return (self.error_rate > 0 and served > 0
                and math.ceil(round(served * self.error_rate, 9)) > math.ceil(round((served - 1) * self.error_rate, 9)))

    @property
    def active(self) -> bool:
        return self != Faults()


@dataclass(frozen=True)
class Settings:
    service: str = "tts"
    version: str = "dev"
    colour: str = "none"
    release: str = ""
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
    def from_env(cls) -> "Settings":
        env = os.environ.get
        max_input_chars = _env_int("TTS_MAX_INPUT_CHARS", 2000, minimum=1)
        max_body_bytes = _env_int("TTS_MAX_BODY_BYTES", 64 * 1024, minimum=1024)
        # JSON clients commonly escape non-ASCII text as \uXXXX: six bytes for every character of the input.
        body_needed = 6 * max_input_chars + 1024
        if max_body_bytes < body_needed:
            raise SettingsError(f"TTS_MAX_BODY_BYTES={max_body_bytes} cannot carry TTS_MAX_INPUT_CHARS="
                                f"{max_input_chars} characters of escaped JSON; it needs at least {body_needed}")
        return cls(
            service=env("XL_SERVICE", "tts"),
            version=env("XL_VERSION", "dev"),
            colour=env("XL_COLOUR", "none"),
            release=env("XL_RELEASE", ""),
            voice_model=env("TTS_VOICE_MODEL", "/opt/models/joe-medium/en_US-joe-medium.onnx"),
            model_name=env("TTS_MODEL_NAME", "piper-joe-medium"),
            voice=env("TTS_VOICE", "joe"),
            voice_aliases=_env_names("TTS_VOICE_ALIASES", "alloy,echo,fable,onyx,nova,shimmer"),
            fallback_engine=_env_fallback("TTS_FALLBACK_ENGINE"),
            espeak_voice=env("TTS_ESPEAK_VOICE", "en-us"),
            cpu_threads=_env_int("TTS_CPU_THREADS", 2, minimum=1),
            max_concurrency=_env_int("TTS_MAX_CONCURRENCY", 1, minimum=1),
            max_input_chars=max_input_chars,
            max_body_bytes=max_body_bytes,
            sentence_silence_s=_env_float("TTS_SENTENCE_SILENCE_S", 0.2),
            queue_timeout_s=_env_float("TTS_QUEUE_TIMEOUT_S", 60.0, minimum=0.1),
            log_level=env("XL_LOG_LEVEL", "INFO").upper(),
            faults=Faults.parse(env("XL_FAULT", "")),
        )
