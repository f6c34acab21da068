#!/usr/bin/env python3
"""A CycloneDX SBOM per service image, read from the image itself.

    python scripts/sbom.py 127.0.0.1:5000/xlerobot/asr:1.0.0 [more images] [--out reports/sbom]

Each image is run once (``--network none``, its own user, no command of its own) to list what it really holds:
every Python distribution its interpreter can import (name, version, licence, from the installed metadata)
and every Debian package of its base (dpkg's database). So the SBOM describes the image that was built, not
the lock file it was built from: a wheel added by hand or a base image with other packages shows up. The
image itself is the SBOM's subject, named by its registry digest where it has one.

Writes ``<out>/<service>-<tag>.cdx.json`` (CycloneDX 1.6 JSON, checked against the schema before it is
written) and prints one JSON object: each image with its file and component counts. Exit 2 names the image
that cannot be read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cyclonedx.contrib.license.factories import LicenseFactory
from cyclonedx.model.bom import Bom
from cyclonedx.model.component import Component, ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from packageurl import PackageURL

REPO = Path(__file__).resolve().parents[1]
# Run inside the image: its Python distributions, then its Debian packages, as one JSON document.
PROBE = r"""
import importlib.metadata as metadata, json, subprocess
python = [{"name": d.metadata["Name"], "version": d.version,
           "license": d.metadata.get("License-Expression") or d.metadata.get("License") or ""}
          for d in metadata.distributions() if d.metadata["Name"]]
listed = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\t${Architecture}\n"],
                        capture_output=True, text=True, check=True).stdout
debian = [dict(zip(("name", "version", "arch"), line.split("\t"))) for line in listed.splitlines() if line]
print(json.dumps({"python": python, "debian": debian}))
"""


class SbomError(Exception):
    """An image cannot be inspected or run; the message names it."""


def _docker(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise SbomError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"docker {args[0]} failed")
    return result.stdout


def inspect(image: str) -> dict[str, Any]:
    """Labels, digest and the interpreter of an image present in the local engine."""
    try:
        found = json.loads(_docker("image", "inspect", image))[0]
    except SbomError as exc:
        raise SbomError(f"image {image}: {exc} (build or pull it first)") from exc
    labels = (found.get("Config") or {}).get("Labels") or {}
    digests = [d for d in found.get("RepoDigests") or [] if d.split("@")[0] == image.rsplit(":", 1)[0]]
    return {"id": found["Id"], "labels": labels, "digest": digests[0].split("@")[1] if digests else None}


def contents(image: str) -> dict[str, list[dict[str, str]]]:
    """What the image holds, listed by the image's own Python and dpkg."""
    try:
        out = _docker("run", "--rm", "--network", "none", "--entrypoint", "python3", image, "-c", PROBE)
        listed: dict[str, list[dict[str, str]]] = json.loads(out)
    except (SbomError, json.JSONDecodeError) as exc:
        raise SbomError(f"image {image}: cannot list its contents: {exc}") from exc
    return listed


def _licenses(text: str) -> list[Any]:
    # Free-text licence fields (whole licence texts, "UNKNOWN") are not worth carrying into an SBOM.
    text = text.strip()
    if not text or text.upper() == "UNKNOWN" or "\n" in text or len(text) > 100:
        return []
    return [LicenseFactory().make_from_string(text)]


def build_bom(image: str, facts: dict[str, Any], listed: dict[str, list[dict[str, str]]]) -> Bom:
    """The SBOM of one image: the image as subject, its Python and Debian packages as components."""
    repository, _, tag = image.rpartition(":")
    name = repository.partition("/")[2]
    digest = facts["digest"]
    subject = Component(
        type=ComponentType.CONTAINER, name=name, version=tag,
        purl=PackageURL(type="oci", name=name.rsplit("/", 1)[-1], version=digest,
                        qualifiers={"repository_url": repository, "tag": tag}) if digest else None,
        bom_ref=f"image:{repository}@{digest or facts['id']}",
    )
    bom = Bom()
    bom.metadata.component = subject
    packages = [(PackageURL(type="pypi", name=p["name"].lower().replace("_", "-"), version=p["version"]), p)
                for p in sorted(listed["python"], key=lambda p: p["name"].lower())]
    packages += [(PackageURL(type="deb", namespace="debian", name=p["name"], version=p["version"],
                             qualifiers={"arch": p["arch"]} if p.get("arch") else None), p)
                 for p in sorted(listed["debian"], key=lambda p: p["name"])]
    seen: set[str] = set()
    for purl, package in packages:
        if purl.to_string() in seen:
            continue
        seen.add(purl.to_string())
        bom.components.add(Component(type=ComponentType.LIBRARY, name=package["name"], version=package["version"],
                                     purl=purl, licenses=_licenses(package.get("license", "")),
                                     bom_ref=purl.to_string()))
    # Everything listed is in the image; which package needs which is not read, so the graph stops there.
    bom.register_dependency(subject, list(bom.components))
    return bom


def serialize(bom: Bom) -> str:
    """CycloneDX 1.6 JSON, refused when the schema does not accept it."""
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is not None:
        raise SbomError(f"the SBOM does not validate against CycloneDX 1.6: {error}")
    return text


def write_sbom(image: str, out_dir: Path) -> dict[str, Any]:
    facts = inspect(image)
    listed = contents(image)
    service = facts["labels"].get("io.xlerobot.service") or image.rsplit("/", 1)[-1].split(":")[0]
    tag = image.rpartition(":")[2]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{service}-{tag}.cdx.json"
    path.write_text(serialize(build_bom(image, facts, listed)))
    return {"image": image, "digest": facts["digest"], "file": str(path), "python": len(listed["python"]),
            "debian": len(listed["debian"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", help="image references in the local engine (registry/repo:tag)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "sbom")
    args = parser.parse_args(argv)
    written = []
    for image in args.images:
        try:
            written.append(write_sbom(image, args.out))
        except (SbomError, subprocess.TimeoutExpired) as exc:
            print(f"sbom: {exc}", file=sys.stderr)
            return 2
    print(json.dumps({"sboms": written}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
