"""Service settings, read once from the environment (the container's contract with the deploy roles)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class Faults:
    """Fault injection, for building deliberately broken versions that exercise the deploy gates.

    Parsed from ``XL_FAULT``, a comma-separated list such as ``never_ready`` or
    ``error_rate=0.05,latency_ms=500``. Empty in every normal image. ``error_rate`` fails exactly that share
    of the requests, evenly spread (see ``fails``). ``errors_after=N`` serves the first N
    transcriptions cleanly before ``error_rate`` applies: a version that passes its smoke gates and then fails
    under real traffic, which is what canary analysis exists to catch.
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
            elif key == "error_rate":
                values[key] = float(raw)
            elif key in ("latency_ms", "errors_after"):
                values[key] = int(raw)
            elif key == "crash_after_s":
                values[key] = float(raw)
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
    service: str = "asr"
    version: str = "dev"
    colour: str = "none"
    release: str = ""
    model_dir: str = "/opt/models/whisper-base"
    model_name: str = "whisper-base"
    device: str = "cpu"
    compute_type: str = "int8"
    cpu_threads: int = 2
    beam_size: int = 1
    default_language: str = "en"
    max_concurrency: int = 1
    max_upload_bytes: int = 25 * 1024 * 1024
    max_audio_seconds: float = 120.0
    queue_timeout_s: float = 60.0
    log_level: str = "INFO"
    faults: Faults = field(default_factory=Faults)

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ.get
        return cls(
            service=env("XL_SERVICE", "asr"),
            version=env("XL_VERSION", "dev"),
            colour=env("XL_COLOUR", "none"),
            release=env("XL_RELEASE", ""),
            model_dir=env("ASR_MODEL_DIR", "/opt/models/whisper-base"),
            model_name=env("ASR_MODEL_NAME", "whisper-base"),
            device=env("ASR_DEVICE", "cpu"),
            compute_type=env("ASR_COMPUTE_TYPE", "int8"),
            cpu_threads=_env_int("ASR_CPU_THREADS", 2, minimum=1),
            beam_size=_env_int("ASR_BEAM_SIZE", 1, minimum=1),
            default_language=env("ASR_DEFAULT_LANGUAGE", "en"),
            max_concurrency=_env_int("ASR_MAX_CONCURRENCY", 1, minimum=1),
            max_upload_bytes=_env_int("ASR_MAX_UPLOAD_BYTES", 25 * 1024 * 1024, minimum=1024),
            max_audio_seconds=_env_float("ASR_MAX_AUDIO_SECONDS", 120.0, minimum=1.0),
            queue_timeout_s=_env_float("ASR_QUEUE_TIMEOUT_S", 60.0, minimum=0.1),
            log_level=env("XL_LOG_LEVEL", "INFO").upper(),
            faults=Faults.parse(env("XL_FAULT", "")),
        )
