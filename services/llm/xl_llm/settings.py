"""LLM settings, read once from the environment (the container's contract with the deploy roles)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from xl_service.settings import Faults, Identity, SettingsError, env_float, env_int, faults, log_level


@dataclass(frozen=True)
class Settings:
    # Runtime settings (environment variable -> field): read per request, so a running instance takes them on
    # SIGHUP (xl_service.runtime); XL_LOG_LEVEL too.
    RUNTIME_ENV: ClassVar[dict[str, str]] = {
        "LLM_MAX_TOKENS": "max_tokens",
        "LLM_TEMPERATURE": "temperature",
        "LLM_TOP_P": "top_p",
        "LLM_QUEUE_TIMEOUT_S": "queue_timeout_s",
    }
    identity: Identity = field(default_factory=lambda: Identity("llm"))
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
    def from_env(cls) -> Settings:
        env = os.environ.get
        context = env_int("LLM_CONTEXT", 2048, minimum=64)
        max_tokens_limit = env_int("LLM_MAX_TOKENS_LIMIT", 1024, minimum=1)
        max_tokens = env_int("LLM_MAX_TOKENS", 256, minimum=1)
        if max_tokens > max_tokens_limit:
            raise SettingsError(f"LLM_MAX_TOKENS={max_tokens} is above LLM_MAX_TOKENS_LIMIT={max_tokens_limit}")
        if max_tokens_limit >= context:
            raise SettingsError(f"LLM_MAX_TOKENS_LIMIT={max_tokens_limit} leaves no room for a prompt in "
                                f"LLM_CONTEXT={context} tokens; keep it below the context")
        return cls(
            identity=Identity.from_env("llm"),
            model_path=env("LLM_MODEL_PATH", cls.model_path),
            model_name=env("LLM_MODEL_NAME", cls.model_name),
            chat_format=env("LLM_CHAT_FORMAT", "").strip(),
            context=context,
            threads=env_int("LLM_THREADS", 1, minimum=1),
            # -1 offloads every layer; a CPU-only build of llama.cpp ignores the setting.
            gpu_layers=env_int("LLM_GPU_LAYERS", 0, minimum=-1),
            batch=env_int("LLM_BATCH", 512, minimum=1),
            max_tokens=max_tokens,
            max_tokens_limit=max_tokens_limit,
            temperature=env_float("LLM_TEMPERATURE", 0.2, maximum=2.0),
            top_p=env_float("LLM_TOP_P", 0.9, maximum=1.0),
            max_body_bytes=env_int("LLM_MAX_BODY_BYTES", 256 * 1024, minimum=1024),
            queue_timeout_s=env_float("LLM_QUEUE_TIMEOUT_S", 60.0, minimum=0.1),
            log_level=log_level(),
            faults=faults(),
        )
