"""The synthesis engine: loads the Piper voice once, warms it up, turns text into 16-bit mono PCM."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import threading
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .settings import Settings

SAMPLE_WIDTH = 2  # bytes: every engine here produces signed 16-bit little-endian mono
WARM_UP_TEXT = "The voice is ready."
# What the garble fault says instead of the request: real speech, so only a round trip through ASR notices.
GARBLED_SENTENCE = "The quick brown fox jumps over the lazy dog."
ESPEAK_DEFAULT_WPM = 175
log = logging.getLogger("xl_tts.engine")


class SpeechError(ValueError):
    """The input holds nothing the voice can speak."""


@dataclass
class Speech:
    pcm: bytes
    sample_rate: int
    inference_s: float
    engine: str

    @property
    def seconds(self) -> float:
        return len(self.pcm) / SAMPLE_WIDTH / self.sample_rate

    def wav(self) -> bytes:
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(SAMPLE_WIDTH)
            out.setframerate(self.sample_rate)
            out.writeframes(self.pcm)
        return buffer.getvalue()


class Backend(Protocol):
    name: str
    model_name: str
    sample_rate: int

    def speak(self, text: str, speed: float) -> bytes: ...


class PiperBackend:
    """The Piper voice, with the ONNX session built here so its thread count follows the settings."""

    name = "piper"

    def __init__(self, settings: Settings):
        import onnxruntime
        from piper import PiperConfig, PiperVoice

        model = Path(settings.voice_model)
        config = json.loads(Path(f"{model}.json").read_text(encoding="utf-8"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = settings.cpu_threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(model), sess_options=options, providers=["CPUExecutionProvider"])
        self._voice = PiperVoice(session=session, config=PiperConfig.from_dict(config))
        self._sentence_silence_s = settings.sentence_silence_s
        self.model_name = settings.model_name
        self.sample_rate = self._voice.config.sample_rate

    def speak(self, text: str, speed: float) -> bytes:
        from piper import SynthesisConfig

        # Piper stretches phoneme durations; the voice's own length_scale is its natural pace.
        config = SynthesisConfig(length_scale=self._voice.config.length_scale / speed)
        sentences = [chunk.audio_int16_bytes for chunk in self._voice.synthesize(text, syn_config=config)]
        # Piper speaks sentence after sentence with no gap; a short pause keeps them from running together.
        pause = bytes(SAMPLE_WIDTH * round(self.sample_rate * self._sentence_silence_s / speed))
        return pause.join(sentences)


class EspeakBackend:
    """Debian's espeak-ng, as a robotic but dependable fallback; one short process per request."""

    name = "espeak-ng"

    def __init__(self, settings: Settings):
        binary = shutil.which("espeak-ng")
        if binary is None:
            raise RuntimeError("espeak-ng is not installed")
        self._binary = binary
        self._voice = settings.espeak_voice
        self.model_name = f"espeak-ng/{settings.espeak_voice}"
        self.sample_rate = 22050  # replaced by the rate of the first clip espeak-ng writes

    def speak(self, text: str, speed: float) -> bytes:
        # Text goes in on stdin so that input starting with "-" is never read as an option.
        # espeak-ng caps its own rate (about 80-450 words a minute), so extreme speeds are approximate here.
        result = subprocess.run(
            [self._binary, "--stdout", "-v", self._voice, "-s", str(round(ESPEAK_DEFAULT_WPM * speed)), "--stdin"],
            input=text.encode("utf-8"), capture_output=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"espeak-ng exited with {result.returncode}: {result.stderr.decode(errors='replace')}")
        # espeak-ng streams to stdout, so its WAV header carries a placeholder length; read what is there.
        with wave.open(io.BytesIO(result.stdout)) as clip:
            self.sample_rate = clip.getframerate()
            return clip.readframes(clip.getnframes())


def _audible(pcm: bytes) -> bool:
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % SAMPLE_WIDTH], dtype="<i2")
    return bool(samples.size) and int(np.abs(samples.astype(np.int32)).max()) > 0


class Engine:
    """Owns the voice. ``ready`` turns true only after a warm-up synthesis produced audible audio."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._backend: Backend | None = None
        self._ready = threading.Event()
        self.load_seconds: float | None = None
        self.load_error: str | None = None
        # Why the primary voice is not the one speaking, while the fallback engine serves.
        self.fallback_reason: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and not self._settings.faults.never_ready

    @property
    def engine_name(self) -> str | None:
        return self._backend.name if self._backend else None

    @property
    def model_name(self) -> str:
        return self._backend.model_name if self._backend else self._settings.model_name

    def load(self) -> None:
        """Load and warm up; meant for a background thread so /healthz answers during the load."""
        started = time.perf_counter()
        try:
            backend: Backend = self._warmed_up(PiperBackend(self._settings))
        except Exception as exc:  # a failed load must be visible on /readyz, not kill the process silently
            log.exception("voice load failed", extra={"voice_model": self._settings.voice_model})
            primary_error = f"{type(exc).__name__}: {exc}"
            if not self._settings.fallback_engine:
                self.load_error = primary_error
                return
            try:
                backend = self._warmed_up(EspeakBackend(self._settings))
            except Exception as fallback_exc:  # reported on /readyz beside the first failure
                log.exception("fallback engine failed too")
                self.load_error = (f"{primary_error}; fallback {self._settings.fallback_engine}: "
                                   f"{type(fallback_exc).__name__}: {fallback_exc}")
                return
            self.fallback_reason = primary_error
            log.warning("serving with the fallback engine", extra={"engine": backend.name, "reason": primary_error})
        self._backend = backend
        self.load_seconds = time.perf_counter() - started
        self._ready.set()
        log.info("voice ready", extra={"engine": backend.name, "load_seconds": round(self.load_seconds, 3)})

    @staticmethod
    def _warmed_up(backend: Backend) -> Backend:
        if not _audible(backend.speak(WARM_UP_TEXT, 1.0)):
            raise RuntimeError(f"warm-up synthesis with {backend.name} produced no audible audio")
        return backend

    def synthesize(self, text: str, speed: float = 1.0) -> Speech:
        backend = self._backend
        if backend is None or not self._ready.is_set():
            raise RuntimeError("voice is not loaded")
        started = time.perf_counter()
        pcm = backend.speak(GARBLED_SENTENCE if self._settings.faults.garble else text, speed)
        if not pcm:
            raise SpeechError("input contains nothing that can be spoken")
        return Speech(pcm=pcm, sample_rate=backend.sample_rate, inference_s=time.perf_counter() - started,
                      engine=backend.name)
