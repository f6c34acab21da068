"""ASR settings, read once from the environment (the container's contract with the deploy roles)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from xl_service.settings import Faults, Identity, env_float, env_int, faults, log_level


@dataclass(frozen=True)
class Settings:
    # Runtime settings (environment variable -> field): read per request, so a running instance takes them on
    # SIGHUP (xl_service.runtime); XL_LOG_LEVEL too.
    RUNTIME_ENV: ClassVar[dict[str, str]] = {"ASR_BEAM_SIZE": "beam_size", "ASR_QUEUE_TIMEOUT_S": "queue_timeout_s"}
    identity: Identity = field(default_factory=lambda: Identity("asr"))
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
    def from_env(cls) -> Settings:
        env = os.environ.get
        return cls(
            identity=Identity.from_env("asr"),
            model_dir=env("ASR_MODEL_DIR", "/opt/models/whisper-base"),
            model_name=env("ASR_MODEL_NAME", "whisper-base"),
            device=env("ASR_DEVICE", "cpu"),
            compute_type=env("ASR_COMPUTE_TYPE", "int8"),
            cpu_threads=env_int("ASR_CPU_THREADS", 2, minimum=1),
            beam_size=env_int("ASR_BEAM_SIZE", 1, minimum=1),
            default_language=env("ASR_DEFAULT_LANGUAGE", "en"),
            max_concurrency=env_int("ASR_MAX_CONCURRENCY", 1, minimum=1),
            max_upload_bytes=env_int("ASR_MAX_UPLOAD_BYTES", 25 * 1024 * 1024, minimum=1024),
            max_audio_seconds=env_float("ASR_MAX_AUDIO_SECONDS", 120.0, minimum=1.0),
            queue_timeout_s=env_float("ASR_QUEUE_TIMEOUT_S", 60.0, minimum=0.1),
            log_level=log_level(),
            faults=faults(),
        )
