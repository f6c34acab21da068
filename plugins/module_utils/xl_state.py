# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deploy state and history on the gateway host.

``state.json`` holds what is live per service (read back by rollback and the next deploy);
``history.jsonl`` is append-only, one JSON object per deploy event, for audits and reports.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

STATE_FILE = "state.json"
HISTORY_FILE = "history.jsonl"
# What a live record may hold: identity of the release, never configuration or secrets.
LIVE_KEYS = ("colour", "version", "image", "digest", "release", "at", "retire_previous_after")


class StateError(Exception):
    """The state file exists but cannot be read as deploy state."""


def load_state(state_dir: str) -> dict[str, Any]:
    path = os.path.join(state_dir, STATE_FILE)
    if not os.path.exists(path):
        return {"services": {}}
    try:
        with open(path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read deploy state {path}: {exc}") from exc
    if not isinstance(state, dict) or not isinstance(state.get("services"), dict):
        raise StateError(f"deploy state {path} has no 'services' mapping")
    return state


def _atomic_write(path: str, text: str, mode: int = 0o640) -> None:
    directory = os.path.dirname(path)
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=".state-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def next_state(state: dict[str, Any], service: str, live: dict[str, Any]) -> dict[str, Any]:
    """State after `live` becomes the service's live release; the replaced one becomes `previous`.

    A release is replaced when the colour changes (blue-green, canary) or the image does on the same colour
    (rolling); recording the same image on the same colour again keeps the previous one."""
    services = dict(state.get("services", {}))
    current = services.get(service, {})
    entry = {key: live[key] for key in LIVE_KEYS if key in live}
    replaced = current.get("live")
    if replaced and (replaced.get("colour"), replaced.get("digest")) != (entry.get("colour"), entry.get("digest")):
        previous = replaced
    else:
        previous = current.get("previous")
    services[service] = {"live": entry, **({"previous": previous} if previous else {})}
    return {**state, "services": services}


def save_state(state_dir: str, state: dict[str, Any]) -> None:
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    _atomic_write(os.path.join(state_dir, STATE_FILE), json.dumps(state, indent=2, sort_keys=True) + "\n")


def append_history(state_dir: str, event: dict[str, Any]) -> None:
    os.makedirs(state_dir, mode=0o750, exist_ok=True)
    path = os.path.join(state_dir, HISTORY_FILE)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(json.dumps(event, sort_keys=True) + "\n")


def read_history(state_dir: str, service: str | None = None) -> list[dict[str, Any]]:
    path = os.path.join(state_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    events = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError as exc:
                raise StateError(f"{path}:{number}: not JSON: {exc}") from exc
            if service is None or event.get("service") == service:
                events.append(event)
    return events


def record_run(state_dir: str, live: dict[str, dict[str, Any]], events: list[dict[str, Any]],
               check_mode: bool = False) -> dict[str, Any]:
    """What a run writes once at its end: the new live release of every service it moved (the state file written
    once) and one history event per service it acted on. Returns {changed, before, after} of the services."""
    state = load_state(state_dir)
    new_state = state
    for service, entry in live.items():
        new_state = next_state(new_state, service, entry)
    names = sorted(set(live) | {event.get("service", "") for event in events} - {""})
    before = {name: state["services"].get(name, {}) for name in names}
    after = {name: new_state["services"].get(name, {}) for name in names}
    if not check_mode:
        if new_state != state:
            save_state(state_dir, new_state)
        for event in events:
            append_history(state_dir, event)
    return {"changed": new_state != state or bool(events), "before": before, "after": after}
