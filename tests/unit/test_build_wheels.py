"""scripts/build_wheels.py: the cache contract for wheels compiled on the controller (no compiler runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import build_wheels
import pytest

ENTRY = {"requirement": "llama-cpp-python==0.3.36", "env": {"CMAKE_ARGS": "-DGGML_NATIVE=OFF"}}
WHEEL = "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl"


def _cache_with_wheel(cache: Path, entry: dict, content: bytes = b"compiled") -> Path:
    folder = cache / build_wheels.cache_key(entry)
    folder.mkdir(parents=True)
    (folder / WHEEL).write_bytes(content)
    return folder / WHEEL


def _no_compiling(entry: dict, target: Path) -> Path:
    raise AssertionError(f"compiled {entry['requirement']} although the cache has it")


def test_key_follows_the_pin_and_the_build_flags() -> None:
    key = build_wheels.cache_key(ENTRY)
    assert key.startswith("llama_cpp_python-")
    assert key == build_wheels.cache_key(dict(ENTRY))
    assert key != build_wheels.cache_key({**ENTRY, "requirement": "llama-cpp-python==0.3.37"})
    assert key != build_wheels.cache_key({**ENTRY, "env": {"CMAKE_ARGS": "-DGGML_NATIVE=ON"}})


def test_a_cached_wheel_is_reused_and_copied_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(build_wheels, "build", _no_compiling)
    cached = _cache_with_wheel(tmp_path / "cache", ENTRY)
    wheelhouse = tmp_path / "wheels"

    first = build_wheels.ensure({"wheels": [ENTRY]}, tmp_path / "cache", wheelhouse)
    assert first == [{"requirement": ENTRY["requirement"], "wheel": str(cached), "built": False,
                      "build_seconds": None, "copied": True}]
    assert (wheelhouse / WHEEL).read_bytes() == b"compiled"
    assert build_wheels.ensure({"wheels": [ENTRY]}, tmp_path / "cache", wheelhouse)[0]["copied"] is False

    cached.write_bytes(b"recompiled")
    assert build_wheels.ensure({"wheels": [ENTRY]}, tmp_path / "cache", wheelhouse)[0]["copied"] is True
    assert (wheelhouse / WHEEL).read_bytes() == b"recompiled"


def test_a_missing_wheel_is_built_into_its_key_folder(tmp_path, monkeypatch) -> None:
    built: list[Path] = []

    def fake_build(entry: dict, target: Path) -> Path:
        target.mkdir(parents=True)
        (target / WHEEL).write_bytes(b"fresh")
        built.append(target)
        return target / WHEEL

    monkeypatch.setattr(build_wheels, "build", fake_build)
    report = build_wheels.ensure({"wheels": [ENTRY]}, tmp_path, None)
    assert built == [tmp_path / build_wheels.cache_key(ENTRY)]
    assert report[0]["built"] is True
    assert report[0]["copied"] is False


def test_the_compile_names_the_missing_tools(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(build_wheels.shutil, "which", lambda tool: None if tool == "cmake" else f"/usr/bin/{tool}")
    with pytest.raises(build_wheels.WheelBuildError, match=r"cmake not on PATH .*apt-get install build-essential"):
        build_wheels.build(ENTRY, tmp_path / "target")
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize("requirement", ["llama-cpp-python", "llama-cpp-python>=0.3", "llama-cpp-python==0.3.36 x"])
def test_only_exact_pins_are_built(requirement) -> None:
    with pytest.raises(build_wheels.WheelBuildError, match="must pin one exact version"):
        build_wheels.cache_key({"requirement": requirement})


def test_the_wrong_python_is_refused(tmp_path, capsys) -> None:
    manifest = tmp_path / "built_wheels.json"
    manifest.write_text(json.dumps({"wheels": [ENTRY]}))
    assert build_wheels.main(["--manifest", str(manifest), "--cache", str(tmp_path), "--python-version", "2.7"]) == 1
    assert "must be for Python 2.7" in capsys.readouterr().err


def test_the_llm_manifest_pins_a_portable_build() -> None:
    manifest = json.loads((Path(__file__).resolve().parents[2] / "services" / "llm" / "built_wheels.json").read_text())
    flags = manifest["wheels"][0]["env"]["CMAKE_ARGS"].split()
    # -march=native emits instructions (AMX) this VM's CPU advertises but faults on; OpenMP needs a libgomp the
    # base image lacks.
    assert "-DGGML_NATIVE=OFF" in flags
    assert "-DGGML_OPENMP=OFF" in flags


def test_the_cache_is_outside_the_checkout_unless_overridden(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("XL_WHEEL_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_wheels.default_cache() == tmp_path / "xdg" / "xlerobot-deploy" / "wheels"
    monkeypatch.setenv("XL_WHEEL_CACHE", str(tmp_path / "mine"))
    assert build_wheels.default_cache() == tmp_path / "mine"
