#!/usr/bin/env python3
"""Compile the wheels a service declares in ``built_wheels.json`` once, and keep them in a cache.

Some runtime packages have no wheel on PyPI that runs here (llama-cpp-python publishes no CPU wheel, and its
default ``-march=native`` build dies with SIGILL on this VM). They are compiled from their PyPI source with
the flags the manifest pins, on the controller, because the base image has no compiler.

Each wheel lands in ``<cache>/<key>/``; the key hashes the requirement, the build environment and the Python
and machine it is built for, so a changed flag or pin builds a new wheel instead of reusing a stale one. A
wheel already in the cache is reused as is: the compile runs once per machine, never on every image build
or test run. The cache lives outside the checkout ($XL_WHEEL_CACHE, else ~/.cache/xlerobot-deploy/wheels), so
every clone on the machine, CI's fresh one included, shares the one compile. ``--copy-to`` puts the cached
wheels into an image build context's wheelhouse.

Standard library only: it runs before the controller venv exists (scripts/venv.sh) and from the image build
role. Prints one JSON object: what was built, reused and copied.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# The controller is also the local speech host: the compile must never starve the instances serving there.
BUILD_NICENESS = "19"
TOOLS = ("cc", "c++", "cmake")


class WheelBuildError(Exception):
    """A declared wheel cannot be built or found."""


def default_cache() -> Path:
    if os.environ.get("XL_WHEEL_CACHE"):
        return Path(os.environ["XL_WHEEL_CACHE"])
    cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache_home) / "xlerobot-deploy" / "wheels"


def project_name(requirement: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*[^\s;]+\s*$", requirement)
    if not match:
        raise WheelBuildError(f"requirement {requirement!r} must pin one exact version (name==version)")
    return match.group(1)


def python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def cache_key(entry: dict) -> str:
    identity = json.dumps({"requirement": entry["requirement"], "env": entry.get("env", {}),
                           "python": python_tag(), "machine": platform.machine()}, sort_keys=True)
    name = project_name(entry["requirement"]).lower().replace("-", "_").replace(".", "_")
    return f"{name}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def cached_wheel(folder: Path) -> Path | None:
    wheels = sorted(folder.glob("*.whl")) if folder.is_dir() else []
    if len(wheels) > 1:
        raise WheelBuildError(f"several wheels in {folder}: {[w.name for w in wheels]}; remove the folder to rebuild")
    return wheels[0] if wheels else None


def build(entry: dict, target: Path) -> Path:
    """Compile one wheel into ``target`` (created only once the wheel is complete)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise WheelBuildError(f"cannot compile {entry['requirement']}: {', '.join(missing)} not on PATH "
                              "(Debian: apt-get install build-essential cmake)")
    target.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **entry.get("env", {})}
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".building-") as scratch:
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir",
                   "--no-binary", project_name(entry["requirement"]), "--wheel-dir", scratch, entry["requirement"]]
        if shutil.which("nice"):
            command = ["nice", "-n", BUILD_NICENESS, *command]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise WheelBuildError(f"pip wheel {entry['requirement']} exited with {result.returncode}:\n"
                                  f"{result.stdout[-4000:]}{result.stderr[-4000:]}")
        wheel = cached_wheel(Path(scratch))
        if wheel is None:
            raise WheelBuildError(f"pip wheel {entry['requirement']} succeeded but wrote no wheel")
        # A rename is atomic: an interrupted build never leaves a half-written wheel that looks cached.
        staged = Path(scratch) / "done"
        staged.mkdir()
        wheel.rename(staged / wheel.name)
        staged.rename(target)
    built = cached_wheel(target)
    if built is None:
        raise RuntimeError(f"{target}: the wheel just built is not in the cache")
    return built


def copy_if_changed(wheel: Path, folder: Path) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    destination = folder / wheel.name
    if destination.exists() and destination.read_bytes() == wheel.read_bytes():
        return False
    shutil.copyfile(wheel, destination)
    return True


def ensure(manifest: dict, cache: Path, copy_to: Path | None) -> list[dict]:
    report = []
    for entry in manifest.get("wheels", []):
        folder = cache / cache_key(entry)
        started = time.monotonic()
        wheel = cached_wheel(folder)
        built = wheel is None
        if wheel is None:
            wheel = build(entry, folder)
        report.append({
            "requirement": entry["requirement"],
            "wheel": str(wheel),
            "built": built,
            "build_seconds": round(time.monotonic() - started, 1) if built else None,
            "copied": copy_if_changed(wheel, copy_to) if copy_to else False,
        })
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, action="append", required=True,
                        help="a service's built_wheels.json (repeatable)")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="folder that keeps the compiled wheels (default: $XL_WHEEL_CACHE, else "
                             "~/.cache/xlerobot-deploy/wheels)")
    parser.add_argument("--copy-to", type=Path, help="wheelhouse to copy the wheels into (an image build context)")
    parser.add_argument("--python-version", help="fail unless this script runs on that Python (e.g. 3.11): "
                                                 "the wheels are compiled for the interpreter that builds them")
    args = parser.parse_args(argv)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if args.python_version and args.python_version != running:
        print(f"wheel build failed: the wheels must be for Python {args.python_version}, but this is Python "
              f"{running} ({sys.executable})", file=sys.stderr)
        return 1
    report: list[dict] = []
    try:
        for manifest in args.manifest:
            report += ensure(json.loads(manifest.read_text()), args.cache, args.copy_to)
    except WheelBuildError as exc:
        print(f"wheel build failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"wheels": report}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
