# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deploy lock: one deploy at a time per environment, as a lock file on the gateway host.

``<state_dir>/deploy.lock`` is created with ``O_CREAT | O_EXCL`` (mode 0600), so of two deploys racing for it
exactly one creates it; the file holds JSON ``{holder, pid, host, since, release, purpose}``. Only the release that
took the lock releases it. A lock left behind by a deploy that died is never removed automatically: the message
says how old it is and how to break it (``-e break_lock=true``), and breaking is an explicit, separate step.

``pid`` and ``host`` identify the process that took the lock. When the deploy_lock module takes it, that process
is the short-lived module run, so a dead pid says nothing; the lock's age is the staleness signal.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
import time
from typing import Any

LOCK_FILE = "deploy.lock"
LOCK_KEYS = ("holder", "pid", "host", "since", "release", "purpose")
# Older than this, the message calls the lock possibly stale (it is still never broken without being asked).
STALE_AFTER_S = 3600
BREAK_HINT = "-e break_lock=true"
# A reader can meet a lock file between its creation and the end of the write; it retries for this long.
_READ_RETRY_S = 0.5


class LockError(Exception):
    """The lock file cannot be read, written or removed."""


class LockHeld(LockError):
    """Another release holds the lock; ``holder`` is its lock content."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


def lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, LOCK_FILE)


def utc_text(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc_now(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.UTC)
    return now if now.tzinfo else now.replace(tzinfo=datetime.UTC)


def format_age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def age_seconds(info: dict[str, Any], now: datetime.datetime | None = None) -> float | None:
    try:
        since = datetime.datetime.strptime(str(info.get("since")), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
    return (_utc_now(now) - since).total_seconds()


def describe(info: dict[str, Any], path: str, now: datetime.datetime | None = None) -> str:
    """Who holds the lock, since when (and how long ago), for what release, and how to break it."""
    if "unreadable" in info:
        return (f"deploy lock {path} exists but is not a lock record ({info['unreadable']!r}); if no deploy is "
                f"running, break it with {BREAK_HINT}")
    age = age_seconds(info, now)
    age_text = f"{format_age(age)} ago" if age is not None else "unknown age"
    stale = (f"; older than {format_age(STALE_AFTER_S)}, so possibly left by a deploy that died"
             if age is not None and age > STALE_AFTER_S else "")
    purpose = f" ({info['purpose']})" if info.get("purpose") else ""
    return (f"deploy lock {path} is held by {info.get('holder')} (pid {info.get('pid')} on {info.get('host')}) "
            f"since {info.get('since')} ({age_text}{stale}) for release {info.get('release')}{purpose}; wait for "
            f"that deploy to finish, or if it is no longer running, break the lock with {BREAK_HINT}")


def _parse(text: str) -> dict[str, Any] | None:
    try:
        info = json.loads(text)
    except ValueError:
        return None
    return info if isinstance(info, dict) and "release" in info else None


def read(state_dir: str) -> dict[str, Any] | None:
    """The lock's content, or None when there is no lock. A file that stays unparseable (not a lock written by
    this module) is reported as ``{"unreadable": <its first 200 characters>}``."""
    path = lock_path(state_dir)
    deadline = time.monotonic() + _READ_RETRY_S
    while True:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise LockError(f"cannot read deploy lock {path}: {exc}") from exc
        info = _parse(text)
        if info is not None:
            return info
        if time.monotonic() >= deadline:
            return {"unreadable": text[:200]}
        time.sleep(0.02)  # created but not yet written by the deploy that is taking it


def new_lock(holder: str, release: str, purpose: str | None = None, now: datetime.datetime | None = None,
             pid: int | None = None, host: str | None = None) -> dict[str, Any]:
    return {"holder": holder, "pid": os.getpid() if pid is None else pid,
            "host": socket.gethostname() if host is None else host, "since": utc_text(_utc_now(now)),
            "release": release, "purpose": purpose or ""}


def holds(info: dict[str, Any] | None, release: str, holder: str | None = None) -> bool:
    """Whether `info` is a lock taken for `release` (and by `holder`, when given)."""
    return (info is not None and info.get("release") == release
            and (holder is None or info.get("holder") == holder))


def acquire(state_dir: str, holder: str, release: str, purpose: str | None = None,
            now: datetime.datetime | None = None) -> dict[str, Any]:
    """Take the lock for `release` and return its content. Taking it again for the same release and holder returns
    the existing lock unchanged; any other lock raises LockHeld."""
    if not release:
        raise LockError("a release id is needed to take the deploy lock")
    path = lock_path(state_dir)
    info = new_lock(holder, release, purpose, now)
    try:
        os.makedirs(state_dir, mode=0o750, exist_ok=True)
    except OSError as exc:
        raise LockError(f"cannot create the state directory {state_dir}: {exc}") from exc
    for _ in range(3):  # a lock released between our attempt and our read of it is tried again
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            break
        except FileExistsError:
            current = read(state_dir)
            if current is None:
                continue
            if holds(current, release, holder):
                return current
            raise LockHeld(describe(current, path, now), current) from None
        except OSError as exc:
            raise LockError(f"cannot create deploy lock {path}: {exc}") from exc
    else:
        raise LockError(f"deploy lock {path} kept appearing and disappearing; try again")
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(info, sort_keys=True) + "\n")
            out.flush()
            os.fsync(out.fileno())
    except OSError as exc:
        os.unlink(path)
        raise LockError(f"cannot write deploy lock {path}: {exc}") from exc
    return info


def release(state_dir: str, release: str, now: datetime.datetime | None = None) -> dict[str, Any] | None:
    """Remove the lock if it was taken for `release`; return what was removed (None when there was no lock).
    A lock of another release raises LockHeld and stays."""
    path = lock_path(state_dir)
    current = read(state_dir)
    if current is None:
        return None
    if not holds(current, release):
        raise LockHeld(f"release {release} cannot release the lock: {describe(current, path, now)}", current)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"cannot remove deploy lock {path}: {exc}") from exc
    return current


def annotate(state_dir: str, release: str, run: dict[str, Any]) -> dict[str, Any]:
    """Add what the run holding the lock is doing (`run`: its services and the traffic to return them to) to the
    lock, so that playbooks/abort.yml can return the traffic without the run's help. Only the holder may."""
    path = lock_path(state_dir)
    current = read(state_dir)
    if not holds(current, release):
        raise LockHeld(f"release {release} does not hold the lock: "
                       f"{describe(current, path) if current else 'there is no lock'}", current or {})
    info = {**(current or {}), "run": run}
    handle, tmp_path = tempfile.mkstemp(dir=state_dir, prefix=".lock-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(json.dumps(info, sort_keys=True) + "\n")
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    return info


def break_lock(state_dir: str) -> dict[str, Any] | None:
    """Remove the lock whoever holds it; return what was removed (None when there was no lock)."""
    path = lock_path(state_dir)
    current = read(state_dir)
    if current is None:
        return None
    try:
        os.unlink(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LockError(f"cannot remove deploy lock {path}: {exc}") from exc
    return current
