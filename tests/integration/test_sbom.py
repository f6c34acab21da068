"""SBOM per image: read from the built images themselves, valid CycloneDX, naming what each service runs on."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import GOOD, REPO

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("images")]

REGISTRY = "127.0.0.1:5000"
# The package that makes each service what it is, and where its pin lives.
RUNTIME = {"asr": ("faster-whisper", "services/asr/requirements.lock"),
           "tts": ("piper-tts", "services/tts/requirements.lock"),
           "llm": ("llama-cpp-python", "services/llm/built_wheels.json"),
           "multimodal": ("rapidocr-onnxruntime", "services/multimodal/requirements.lock")}


def _pinned(package: str, source: str) -> str:
    text = (REPO / source).read_text()
    line = next(part for part in text.replace('"', "\n").splitlines() if part.strip().startswith(f"{package}=="))
    return line.strip().split("==")[1]


def _registry_digest(service: str) -> str:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{json .RepoDigests}}",
                          f"{REGISTRY}/xlerobot/{service}:{GOOD}"], capture_output=True, text=True, check=True)
    return next(d for d in json.loads(out.stdout) if d.startswith(f"{REGISTRY}/xlerobot/{service}@")).split("@")[1]


def test_each_image_gets_a_valid_sbom_of_what_it_really_holds(tmp_path: Path) -> None:
    images = [f"{REGISTRY}/xlerobot/{service}:{GOOD}" for service in RUNTIME]
    run = subprocess.run([sys.executable, "scripts/sbom.py", *images, "--out", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    written = {Path(s["file"]).name: s for s in json.loads(run.stdout)["sboms"]}
    assert set(written) == {f"{service}-{GOOD}.cdx.json" for service in RUNTIME}
    for service, (package, source) in RUNTIME.items():
        bom = json.loads((tmp_path / f"{service}-{GOOD}.cdx.json").read_text())
        assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
        subject = bom["metadata"]["component"]
        assert subject["type"] == "container" and subject["version"] == GOOD
        assert _registry_digest(service) in subject["purl"], subject
        purls = {c["purl"] for c in bom["components"]}
        assert f"pkg:pypi/{package}@{_pinned(package, source)}" in purls, sorted(purls)[:20]
        # The base image's own packages are in it too: the interpreter the service runs on.
        assert any(p.startswith("pkg:deb/debian/python3@") for p in purls)
        assert written[f"{service}-{GOOD}.cdx.json"]["debian"] > 50


def test_an_image_that_is_not_there_is_named() -> None:
    missing = f"{REGISTRY}/xlerobot/asr:9.9.9-absent"
    run = subprocess.run([sys.executable, "scripts/sbom.py", missing, "--out", "/nonexistent"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2
    assert missing in run.stderr and "build or pull it first" in run.stderr
