"""The generation engine: loads the GGUF model once with llama.cpp, warms it up, answers chat messages."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from .settings import Settings

WARM_UP_MESSAGES = [{"role": "user", "content": "Say hello."}]
# What the garble fault answers instead of generating: fluent, on-topic for nothing, so only a check of the
# content notices.
GARBLED_ANSWER = "The quick brown fox jumps over the lazy dog."
_CONTEXT_OVERFLOW = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")
log = logging.getLogger("xl_llm.engine")


class PromptTooLong(ValueError):
    """The messages, laid out with the chat template, do not fit the context window."""

    def __init__(self, prompt_tokens: int, context: int):
        super().__init__(f"messages take {prompt_tokens} tokens with the chat template, but the context window "
                         f"holds {context} (LLM_CONTEXT) including the answer")
        self.prompt_tokens = prompt_tokens
        self.context = context


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    seed: int | None = None


@dataclass
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    inference_s: float


@dataclass(frozen=True)
class Delta:
    """One streamed piece: some text, or (last) the reason generation stopped."""

    text: str = ""
    finish_reason: str | None = None


def _raise_prompt_too_long(exc: ValueError) -> None:
    """llama-cpp-python reports an overlong prompt only as a ValueError message; give it a type of its own."""
    match = _CONTEXT_OVERFLOW.search(str(exc))
    if match:
        raise PromptTooLong(int(match.group(1)), int(match.group(2))) from exc


class Engine:
    """Owns the model. ``ready`` turns true only after a warm-up completion returned text.

    A llama.cpp context holds one KV cache and one batch: two generations interleaved on it corrupt each
    other. So every call into the model holds ``_lock`` (streams hold it until they finish or are closed), and
    one instance generates one answer at a time; throughput comes from more instances, not more threads.
    """

    def __init__(self, settings: Settings):
        self._settings = settings
        self._model: Any = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.load_seconds: float | None = None
        self.load_error: str | None = None
        self.runtime: str | None = None
        self.created = int(time.time())

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._settings.faults.never_ready

    def load(self) -> None:
        """Load and warm up; meant for a background thread so /healthz answers during the load."""
        started = time.perf_counter()
        settings = self._settings
        try:
            import llama_cpp

            self._model = llama_cpp.Llama(
                model_path=settings.model_path,
                n_ctx=settings.context,
                n_batch=min(settings.batch, settings.context),
                n_threads=settings.threads,
                n_threads_batch=settings.threads,
                n_gpu_layers=settings.gpu_layers,
                chat_format=settings.chat_format or None,
                verbose=False,
            )
            self.runtime = f"llama-cpp-python {llama_cpp.__version__}"
            warm_up = self.complete(WARM_UP_MESSAGES, Sampling(max_tokens=8, temperature=0.0, top_p=1.0, stop=[]),
                                    warming_up=True)
            if not warm_up.text.strip():
                raise RuntimeError("warm-up completion returned no text")
        except Exception as exc:  # a failed load must be visible on /readyz, not kill the process silently
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed", extra={"model_path": settings.model_path})
            return
        self.load_seconds = time.perf_counter() - started
        self._ready.set()
        log.info("model ready", extra={"load_seconds": round(self.load_seconds, 3), "runtime": self.runtime,
                                       "context": settings.context, "threads": settings.threads})

    def _check_loaded(self, warming_up: bool) -> None:
        if self._model is None or not (warming_up or self._ready.is_set()):
            raise RuntimeError("model is not loaded")

    def _options(self, sampling: Sampling) -> dict[str, Any]:
        return {"max_tokens": sampling.max_tokens, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "stop": sampling.stop, "seed": sampling.seed}

    def complete(self, messages: list[dict[str, str]], sampling: Sampling, warming_up: bool = False) -> Completion:
        self._check_loaded(warming_up)
        started = time.perf_counter()
        with self._lock:
            if self._settings.faults.garble and not warming_up:
                return Completion(GARBLED_ANSWER, "stop", self._count_tokens(messages),
                                  len(self._model.tokenize(GARBLED_ANSWER.encode(), add_bos=False)),
                                  time.perf_counter() - started)
            try:
                result = self._model.create_chat_completion(messages=messages, **self._options(sampling))
            except ValueError as exc:
                _raise_prompt_too_long(exc)
                raise
        choice = result["choices"][0]
        usage = result["usage"]
        return Completion(text=choice["message"]["content"] or "", finish_reason=choice["finish_reason"] or "stop",
                          prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                          inference_s=time.perf_counter() - started)

    def stream(self, messages: list[dict[str, str]], sampling: Sampling) -> Generator[Delta, None, None]:
        """Text as it is generated, then one Delta with the finish reason.

        The model stays locked until the generator is exhausted or closed: close it (``with closing(...)``)
        when a client goes away mid-answer, or the next request waits for garbage collection.
        """
        self._check_loaded(warming_up=False)
        with self._lock:
            if self._settings.faults.garble:
                words = GARBLED_ANSWER.split(" ")
                for index, word in enumerate(words):
                    yield Delta(text=word if index == 0 else f" {word}")
                yield Delta(finish_reason="stop")
                return
            chunks = self._model.create_chat_completion(messages=messages, stream=True, **self._options(sampling))
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    text = choice["delta"].get("content") or ""
                    if text:
                        yield Delta(text=text)
                    if choice["finish_reason"]:
                        yield Delta(finish_reason=choice["finish_reason"])
            except ValueError as exc:
                _raise_prompt_too_long(exc)
                raise
            finally:
                chunks.close()

    def _count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Tokens of the message texts alone (the garble fault never renders the chat template)."""
        return sum(len(self._model.tokenize(message["content"].encode(), add_bos=False)) for message in messages)
