"""Golden speech clips made with espeak-ng at run time, so no audio file lives in the repository."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

GOLDEN_LIST = Path(__file__).resolve().parents[1] / "golden" / "utterances.txt"


def golden_texts() -> list[str]:
    lines = GOLDEN_LIST.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def speak(text: str, directory: Path, speed: int = 150) -> Path:
    """WAV file of `text` spoken by espeak-ng (cached by content in `directory`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()}.wav"
    if not path.exists():
        subprocess.run(["espeak-ng", "-s", str(speed), "-w", str(path), text], check=True)
    return path
