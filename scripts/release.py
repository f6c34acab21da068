#!/usr/bin/env python3
"""Cut a release: tag the services' images with the version and write release notes from the fragments.

    python scripts/release.py --version 1.1.0 --from-tag 1.1.0-rc1   # tag rc1's images as 1.1.0, write notes
    python scripts/release.py --version 1.1.0                        # images already tagged 1.1.0: notes only

Tagging goes through the registry's HTTP API (the manifest of ``--from-tag`` is put again under the version,
in the same repository), so nothing is pulled or rebuilt and the digest the tests deployed is the one
released. Tags are immutable: a version tag that already names another digest stops the release.

With ``--fold``, antsibull-changelog then folds the fragments into ``changelogs/changelog.yaml`` and
``CHANGELOG.md`` (and removes them), the Ansible way; its own lint runs before anything is tagged.

The notes (``releases/<version>.md``) hold every fragment of ``changelogs/fragments/`` in the sections of
``changelogs/config.yaml``, in that order, and the digest of each image. Fragments are checked the way
antsibull-changelog lints them (a mapping of known sections to lists of strings; the prelude a string) and
every fault is named with its file. Prints one JSON object: the images and the notes file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
# Every service of the catalogue's base layer is released together.
SERVICES = tuple(yaml.safe_load((REPO / "config" / "base" / "services.yml").read_text())["xlerobot_services"])
NAMESPACE = "xlerobot"
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.oci.image.index.v1+json")


class ReleaseError(Exception):
    """The release cannot go on; the message names the fragment, image or tag at fault."""


@dataclass(frozen=True)
class TaggedImage:
    repository: str
    tag: str
    digest: str
    changed: bool


def load_sections(config_path: Path) -> list[tuple[str, str]]:
    """(key, title) of every section in changelogs/config.yaml, the prelude first."""
    config = yaml.safe_load(config_path.read_text())
    prelude = (config.get("prelude_section_name", "release_summary"),
               config.get("prelude_section_title", "Release Summary"))
    return [prelude, *[(key, title) for key, title in config["sections"]]]


def read_fragments(fragments_dir: Path, sections: list[tuple[str, str]]) -> dict[str, list[str]]:
    """Entries of every fragment by section; every fault of every fragment is reported at once."""
    prelude = sections[0][0]
    known = {key for key, _ in sections}
    entries: dict[str, list[str]] = {key: [] for key, _ in sections}
    faults = []
    for path in sorted(fragments_dir.glob("*.y*ml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            faults.append(f"{path.name}: not YAML ({exc})")
            continue
        if not isinstance(data, dict) or not data:
            faults.append(f"{path.name}: must be a mapping of sections to entries")
            continue
        for section, value in data.items():
            if section not in known:
                faults.append(f"{path.name}: unknown section {section!r} (known: {', '.join(sorted(known))})")
            elif section == prelude:
                if not isinstance(value, str) or not value.strip():
                    faults.append(f"{path.name}: {section} must be a non-empty string")
                else:
                    entries[section].append(" ".join(value.split()))
            elif not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
                faults.append(f"{path.name}: {section} must be a list of non-empty strings")
            else:
                entries[section] += [" ".join(v.split()) for v in value]
    if faults:
        raise ReleaseError("changelog fragments have faults:\n" + "\n".join(faults))
    return entries


def render_notes(title: str, version: str, sections: list[tuple[str, str]], entries: dict[str, list[str]],
                 images: list[TaggedImage]) -> str:
    lines = [f"# {title} {version}", ""]
    for key, heading in sections:
        if entries.get(key):
            lines += [f"## {heading}", ""]
            if key == sections[0][0]:
                lines += [*entries[key], ""]
            else:
                lines += [f"- {entry}" for entry in entries[key]] + [""]
    if images:
        lines += ["## Images", "", "| image | digest |", "|---|---|"]
        lines += [f"| `{image.repository}:{image.tag}` | `{image.digest}` |" for image in images] + [""]
    return "\n".join(lines)


def _request(url: str, method: str = "GET", body: bytes | None = None,
             content_type: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read(), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def tag_image(registry: str, repository: str, source: str | None, tag: str) -> TaggedImage:
    """Give `source`'s manifest the tag `tag` (no `source`: the tag must exist already); tags never move."""
    base = f"http://{registry}/v2/{repository}/manifests"
    status, _, headers = _request(f"{base}/{tag}", "HEAD")
    existing = headers.get("docker-content-digest") if status == 200 else None
    if source is None:
        if existing is None:
            raise ReleaseError(f"{repository}:{tag} is not in {registry} (build it with playbooks/build.yml, or give "
                               "--from-tag)")
        return TaggedImage(repository, tag, existing, changed=False)
    status, manifest, headers = _request(f"{base}/{source}")
    if status != 200:
        raise ReleaseError(f"{repository}:{source} is not in {registry} (HTTP {status})")
    digest = headers.get("docker-content-digest", "")
    if existing is not None:
        if existing != digest:
            raise ReleaseError(f"{repository}:{tag} already names {existing}, not {source}'s {digest}: tags are "
                               "immutable, release another version")
        return TaggedImage(repository, tag, digest, changed=False)
    status, body, _ = _request(f"{base}/{tag}", "PUT", manifest, headers.get("content-type", MANIFEST_TYPES[0]))
    if status not in (200, 201):
        raise ReleaseError(f"{registry} refused tag {repository}:{tag} (HTTP {status}: {body[:200]!r})")
    return TaggedImage(repository, tag, digest, changed=True)


def antsibull_changelog(repo: Path, *args: str) -> str:
    """Run antsibull-changelog (from this interpreter's venv) in `repo`; ReleaseError with what it printed."""
    command = [str(Path(sys.executable).parent / "antsibull-changelog"), *args]
    result = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0 or (args[0] == "lint" and result.stdout.strip()):
        raise ReleaseError(f"antsibull-changelog {args[0]}: {(result.stdout + result.stderr).strip()[-2000:]}")
    return result.stdout


def release(version: str, registry: str, services: list[str], source: str | None, notes_dir: Path,
            repo: Path = REPO, fold: bool = False, date: str | None = None) -> dict[str, Any]:
    """Check the fragments, tag every image, then write the notes (nothing is tagged when a fragment is faulty)
    and, with `fold`, fold the fragments into CHANGELOG.md."""
    sections = load_sections(repo / "changelogs" / "config.yaml")
    entries = read_fragments(repo / "changelogs" / "fragments", sections)
    if fold:
        antsibull_changelog(repo, "lint")
    images = [tag_image(registry, f"{NAMESPACE}/{service}", source, version) for service in services]
    title = yaml.safe_load((repo / "changelogs" / "config.yaml").read_text()).get("title", "release")
    notes_dir.mkdir(parents=True, exist_ok=True)
    notes = notes_dir / f"{version}.md"
    notes.write_text(render_notes(title, version, sections, entries, images))
    result: dict[str, Any] = {
        "version": version, "notes": str(notes),
        "images": [{"image": f"{i.repository}:{i.tag}", "digest": i.digest, "changed": i.changed} for i in images]}
    if fold:
        day = date or datetime.date.today().isoformat()
        antsibull_changelog(repo, "release", "--version", version, "--date", day)
        result["changelog"] = str(repo / "CHANGELOG.md")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", required=True)
    parser.add_argument("--from-tag", help="tag whose images become the release (default: the version is tagged)")
    parser.add_argument("--registry", default="127.0.0.1:5000")
    parser.add_argument("--services", default=",".join(SERVICES))
    parser.add_argument("--notes-dir", type=Path, default=REPO / "releases")
    parser.add_argument("--fold", action="store_true",
                        help="fold the fragments into CHANGELOG.md with antsibull-changelog (removes them)")
    args = parser.parse_args(argv)
    try:
        result = release(args.version, args.registry, [s for s in args.services.split(",") if s], args.from_tag,
                         args.notes_dir, fold=args.fold)
    except ReleaseError as exc:
        sys.stderr.write(f"release {args.version}: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
