"""The recognition engine: loads faster-whisper once, warms it up, transcribes decoded audio."""

from __future__ import annotations

import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .settings import Settings

SAMPLE_RATE = 16000
log = logging.getLogger("xl_asr.engine")


class AudioError(ValueError):
    """The upload is not audio this service can decode."""


@dataclass
class Transcript:
    text: str
    language: str
    duration_s: float
    inference_s: float
    segments: list[dict[str, Any]] = field(default_factory=list)


def decode(data: bytes) -> np.ndarray:
    """Decode any container/codec PyAV understands to 16 kHz mono float32."""
    from faster_whisper import decode_audio

    try:
        audio = decode_audio(io.BytesIO(data), sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # PyAV raises a family of errors that share no useful base class
        raise AudioError(f"file is not decodable audio ({type(exc).__name__})") from exc
    if audio.size == 0:
        raise AudioError("file decodes to zero audio samples")
    return audio


class Engine:
    """Owns the model. ``ready`` turns true only after a successful warm-up transcription."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._model: Any = None
        self._ready = threading.Event()
        self.load_seconds: float | None = None
        self.load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._settings.faults.never_ready

    def load(self) -> None:
        """Load and warm up; meant for a background thread so /healthz answers during the load."""
        from faster_whisper import WhisperModel

        started = time.perf_counter()
        try:
            self._model = WhisperModel(
                self._settings.model_dir,
                device=self._settings.device,
                compute_type=self._settings.compute_type,
                cpu_threads=self._settings.cpu_threads,
                num_workers=self._settings.max_concurrency,
            )
            # One second of silence runs the encoder and decoder end to end without needing a bundled clip.
            self._run(np.zeros(SAMPLE_RATE, dtype=np.float32), language="en", beam_size=1, vad_filter=False,
                      max_new_tokens=8)
        except Exception as exc:  # a failed load must be visible on /readyz, not kill the process silently
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model load failed", extra={"model_dir": self._settings.model_dir})
            return
        self.load_seconds = time.perf_counter() - started
        self._ready.set()
        log.info("model ready", extra={"load_seconds": round(self.load_seconds, 3)})

    def _run(self, audio: np.ndarray, language: str | None, beam_size: int, vad_filter: bool,
             **options: Any) -> Transcript:
        started = time.perf_counter()
        segments_iter, info = self._model.transcribe(
            audio, language=language, beam_size=beam_size, vad_filter=vad_filter, **options
        )
        segments = [
            {"id": index, "start": round(seg.start, 3), "end": round(seg.end, 3), "text": seg.text.strip()}
            for index, seg in enumerate(segments_iter)
        ]
        text = " ".join(seg["text"] for seg in segments).strip()
        return Transcript(
            text=text,
            language=info.language,
            duration_s=round(audio.size / SAMPLE_RATE, 3),
            inference_s=time.perf_counter() - started,
            segments=segments,
        )

    def transcribe(self, audio: np.ndarray, language: str | None = None, vad_filter: bool = False) -> Transcript:
        if not self._ready.is_set():
            raise RuntimeError("model is not loaded")
        # Language detection costs a second encoder pass, so a configured default language skips it.
        language = language or self._settings.default_language or None
        result = self._run(audio, language=language, beam_size=self._settings.beam_size, vad_filter=vad_filter)
        if self._settings.faults.garble:
            result.text = " ".join(reversed(result.text.split()))[::-1]
        return result
