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


def _env_float(name: str, default: float, minimum: float = 0.0, maximum: float = math.inf) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not a number") from exc
    if not minimum <= value <= maximum:  # NaN fails both comparisons, so it lands here too
        bounds = f"from {minimum} to {maximum}" if maximum != math.inf else f"at least {minimum}"
        raise SettingsError(f"{name}={value} must be {bounds}")
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
    completions cleanly before ``error_rate`` applies: a version that passes its smoke gates and then fails
    under real traffic, which is what canary analysis exists to catch. ``garble`` answers every request with
    one fixed sentence instead of generating, which only a check of what the answer says notices.
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
    service: str = "llm"
    version: str = "dev"
    colour: str = "none"
    release: str = ""
    # Any chat GGUF llama.cpp reads: a GPU host mounts a larger one and points these two settings at it.
    model_path: str = "/opt/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
    model_name: str = "smollm2-135m-instruct"
    # Empty: the chat template stored in the GGUF (SmolLM2 has one). A llama-cpp-python chat format name
    # (chatml, llama-2, ...) for models that carry none.
    chat_format: str = ""
    context: int = 2048
    # One thread by default: llama.cpp's threads meet at a spinning barrier after every operation, so on a host
    # whose cores are busy with other services a descheduled thread stalls the rest (measured on 2 shared cores:
    # 16 tokens in 1 s with one thread, 3-22 s with two). A host with cores to itself raises LLM_THREADS.
    threads: int = 1
    gpu_layers: int = 0
    batch: int = 512
    max_tokens: int = 256
    max_tokens_limit: int = 1024
    temperature: float = 0.2
    top_p: float = 0.9
    max_body_bytes: int = 256 * 1024
    queue_timeout_s: float = 60.0
    log_level: str = "INFO"
    faults: Faults = field(default_factory=Faults)

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ.get
        context = _env_int("LLM_CONTEXT", 2048, minimum=64)
        max_tokens_limit = _env_int("LLM_MAX_TOKENS_LIMIT", 1024, minimum=1)
        max_tokens = _env_int("LLM_MAX_TOKENS", 256, minimum=1)
        if max_tokens > max_tokens_limit:
            raise SettingsError(f"LLM_MAX_TOKENS={max_tokens} is above LLM_MAX_TOKENS_LIMIT={max_tokens_limit}")
        if max_tokens_limit >= context:
            raise SettingsError(f"LLM_MAX_TOKENS_LIMIT={max_tokens_limit} leaves no room for a prompt in "
                                f"LLM_CONTEXT={context} tokens; keep it below the context")
        return cls(
            service=env("XL_SERVICE", "llm"),
            version=env("XL_VERSION", "dev"),
            colour=env("XL_COLOUR", "none"),
            release=env("XL_RELEASE", ""),
            model_path=env("LLM_MODEL_PATH", cls.model_path),
            model_name=env("LLM_MODEL_NAME", cls.model_name),
            chat_format=env("LLM_CHAT_FORMAT", "").strip(),
            context=context,
            threads=_env_int("LLM_THREADS", 1, minimum=1),
            # -1 offloads every layer; a CPU-only build of llama.cpp ignores the setting.
            gpu_layers=_env_int("LLM_GPU_LAYERS", 0, minimum=-1),
            batch=_env_int("LLM_BATCH", 512, minimum=1),
            max_tokens=max_tokens,
            max_tokens_limit=max_tokens_limit,
            temperature=_env_float("LLM_TEMPERATURE", 0.2, maximum=2.0),
            top_p=_env_float("LLM_TOP_P", 0.9, maximum=1.0),
            max_body_bytes=_env_int("LLM_MAX_BODY_BYTES", 256 * 1024, minimum=1024),
            queue_timeout_s=_env_float("LLM_QUEUE_TIMEOUT_S", 60.0, minimum=0.1),
            log_level=env("XL_LOG_LEVEL", "INFO").upper(),
            faults=Faults.parse(env("XL_FAULT", "")),
        )
