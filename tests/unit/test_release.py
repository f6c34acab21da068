"""scripts/release.py: fragments checked and rendered as release notes, images tagged through a registry's API."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from release import ReleaseError, load_sections, read_fragments, release, tag_image

REPO = Path(__file__).resolve().parents[2]
MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"


class FakeRegistry:
    """The manifest part of the registry API (HEAD/GET/PUT /v2/<repo>/manifests/<ref>), on 127.0.0.1."""

    def __init__(self) -> None:
        self.manifests: dict[tuple[str, str], bytes] = {}
        self.puts: list[tuple[str, str]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                return

            def _find(self) -> tuple[str, str]:
                match = re.fullmatch(r"/v2/(.+)/manifests/([^/]+)", self.path)
                assert match, self.path
                return match[1], match[2]

            def _answer(self, body: bool) -> None:
                key = self._find()
                if key not in owner.manifests:
                    self.send_response(404)
                    self.end_headers()
                    return
                manifest = owner.manifests[key]
                self.send_response(200)
                self.send_header("Content-Type", MANIFEST_TYPE)
                self.send_header("Docker-Content-Digest", "sha256:" + hashlib.sha256(manifest).hexdigest())
                self.send_header("Content-Length", str(len(manifest)))
                self.end_headers()
                if body:
                    self.wfile.write(manifest)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def do_PUT(self) -> None:
                assert self.headers["Content-Type"] == MANIFEST_TYPE
                key = self._find()
                owner.manifests[key] = self.rfile.read(int(self.headers["Content-Length"]))
                owner.puts.append(key)
                self.send_response(201)
                self.end_headers()

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def push(self, repository: str, tag: str, layer: str) -> str:
        manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "layers": [layer]}).encode()
        self.manifests[(repository, tag)] = manifest
        return "sha256:" + hashlib.sha256(manifest).hexdigest()


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    yield fake
    fake.server.shutdown()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the repository's changelog configuration and fragments, to add faulty fragments to."""
    shutil.copytree(REPO / "changelogs", tmp_path / "changelogs")
    return tmp_path


def test_the_repository_fragments_are_valid() -> None:
    sections = load_sections(REPO / "changelogs" / "config.yaml")
    entries = read_fragments(REPO / "changelogs" / "fragments", sections)
    assert entries["minor_changes"] and entries["major_changes"]
    assert sections[0] == ("release_summary", "Release Summary")


def test_every_faulty_fragment_is_named_at_once(repo: Path) -> None:
    fragments = repo / "changelogs" / "fragments"
    (fragments / "9001-typo.yml").write_text("minor_change:\n  - oops\n")
    (fragments / "9002-scalar.yml").write_text("bugfixes: fixed it\n")
    with pytest.raises(ReleaseError) as raised:
        read_fragments(fragments, load_sections(repo / "changelogs" / "config.yaml"))
    message = str(raised.value)
    assert "9001-typo.yml: unknown section 'minor_change'" in message
    assert "9002-scalar.yml: bugfixes must be a list of non-empty strings" in message


def test_a_release_tags_every_image_by_manifest_and_writes_notes(registry: FakeRegistry, repo: Path) -> None:
    digests = {svc: registry.push(f"xlerobot/{svc}", "1.1.0-rc1", svc) for svc in ("asr", "tts")}
    notes_dir = repo / "releases"
    result = release("1.1.0", registry.address, ["asr", "tts"], "1.1.0-rc1", notes_dir, repo=repo)
    assert registry.puts == [("xlerobot/asr", "1.1.0"), ("xlerobot/tts", "1.1.0")]
    assert [(i["image"], i["digest"], i["changed"]) for i in result["images"]] == [
        ("xlerobot/asr:1.1.0", digests["asr"], True), ("xlerobot/tts:1.1.0", digests["tts"], True)]
    notes = (notes_dir / "1.1.0.md").read_text()
    assert notes.startswith("# xlerobot-deploy 1.1.0\n")
    assert notes.index("## Major Changes") < notes.index("## Minor Changes")
    assert "- Walking skeleton:" in notes
    assert f"| `xlerobot/asr:1.1.0` | `{digests['asr']}` |" in notes
    # Again: the tags already name those digests, nothing is put twice.
    again = release("1.1.0", registry.address, ["asr", "tts"], "1.1.0-rc1", notes_dir, repo=repo)
    assert [i["changed"] for i in again["images"]] == [False, False] and len(registry.puts) == 2


def test_fold_puts_the_fragments_into_the_changelog_with_antsibull_changelog(registry: FakeRegistry,
                                                                             repo: Path) -> None:
    registry.push("xlerobot/asr", "1.1.0", "asr")
    fragments = sorted((repo / "changelogs" / "fragments").glob("*.yml"))
    assert fragments
    result = release("1.1.0", registry.address, ["asr"], None, repo / "releases", repo=repo, fold=True,
                     date="2026-11-28")
    changelog = (repo / "CHANGELOG.md").read_text()
    assert result["changelog"] == str(repo / "CHANGELOG.md")
    assert "## v1\\.1\\.0" in changelog and "### Minor Changes" in changelog
    assert "Walking skeleton" in changelog
    assert not list((repo / "changelogs" / "fragments").glob("*.yml")), "folded fragments are removed"
    folded = yaml.safe_load((repo / "changelogs" / "changelog.yaml").read_text())
    assert folded["releases"]["1.1.0"]["release_date"] == "2026-11-28"


def test_fold_refuses_what_antsibull_changelog_lint_refuses(registry: FakeRegistry, repo: Path) -> None:
    registry.push("xlerobot/asr", "1.1.0", "asr")
    # Well-formed for read_fragments, but not valid reStructuredText: only antsibull-changelog's lint sees it.
    (repo / "changelogs" / "fragments" / "9003-bad.yml").write_text('minor_changes:\n  - "a ``broken literal"\n')
    with pytest.raises(ReleaseError, match=r"9003-bad\.yml.*Inline literal"):
        release("1.1.0", registry.address, ["asr"], None, repo / "releases", repo=repo, fold=True)
    assert not (repo / "CHANGELOG.md").exists()


def test_a_version_tag_never_moves(registry: FakeRegistry) -> None:
    registry.push("xlerobot/asr", "1.1.0", "old")
    registry.push("xlerobot/asr", "1.1.0-rc2", "new")
    with pytest.raises(ReleaseError, match=r"xlerobot/asr:1.1.0 already names sha256:.*tags are immutable"):
        tag_image(registry.address, "xlerobot/asr", "1.1.0-rc2", "1.1.0")
    assert registry.puts == []


def test_without_a_source_the_version_must_exist(registry: FakeRegistry) -> None:
    digest = registry.push("xlerobot/asr", "1.0.0", "a")
    assert tag_image(registry.address, "xlerobot/asr", None, "1.0.0").digest == digest
    with pytest.raises(ReleaseError, match=r"xlerobot/tts:1.0.0 is not in 127.0.0.1:\d+"):
        tag_image(registry.address, "xlerobot/tts", None, "1.0.0")


def test_a_faulty_fragment_stops_the_release_before_any_tag(registry: FakeRegistry, repo: Path) -> None:
    registry.push("xlerobot/asr", "1.1.0-rc1", "a")
    (repo / "changelogs" / "fragments" / "9003-empty.yml").write_text("---\n")
    with pytest.raises(ReleaseError, match=r"9003-empty\.yml: must be a mapping"):
        release("1.1.0", registry.address, ["asr"], "1.1.0-rc1", repo / "releases", repo=repo)
    assert registry.puts == [] and not (repo / "releases").exists()
