"""xl_lock and the deploy_lock module: take, refuse, release, break, file mode, and a race between two threads.

The module test runs the real module through `ansible` on localhost against a lock in tmp_path.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import stat
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import xl_lock as lock

from tests.support import ansible_cli

REPO = Path(__file__).resolve().parents[2]
# The project venv: the checkout's own, else the one running these tests (a worktree shares the main venv).
VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else Path(sys.executable).parent
NOON = datetime.datetime(2026, 11, 28, 12, 0, 0, tzinfo=datetime.UTC)


def later(**delta: float) -> datetime.datetime:
    return NOON + datetime.timedelta(**delta)


def test_acquire_writes_the_lock_record(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    info = lock.acquire(str(state_dir), "alice", "r1", "deploy asr 1.1.0", now=NOON)
    assert info == {"holder": "alice", "pid": os.getpid(), "host": info["host"], "since": "2026-11-28T12:00:00Z",
                    "release": "r1", "purpose": "deploy asr 1.1.0"}
    assert info["host"]
    path = state_dir / "deploy.lock"
    assert json.loads(path.read_text()) == info
    assert lock.read(str(state_dir)) == info


def test_lock_file_mode_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o002)
    try:
        lock.acquire(str(tmp_path), "alice", "r1", now=NOON)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "deploy.lock").stat().st_mode) == 0o600


def test_second_acquire_fails_naming_holder_since_release_and_how_to_break(tmp_path: Path) -> None:
    first = lock.acquire(str(tmp_path), "alice", "r1", "deploy asr 1.1.0", now=NOON)
    with pytest.raises(lock.LockHeld) as error:
        lock.acquire(str(tmp_path), "bob", "r2", "deploy tts 2.0.0", now=later(minutes=5))
    message = str(error.value)
    assert message == (f"deploy lock {tmp_path}/deploy.lock is held by alice (pid {first['pid']} on "
                       f"{first['host']}) since 2026-11-28T12:00:00Z (5 min 0 s ago) for release r1 "
                       f"(deploy asr 1.1.0); wait for that deploy to finish, or if it is no longer running, break "
                       f"the lock with -e break_lock=true")
    assert error.value.holder == first
    assert lock.read(str(tmp_path)) == first  # untouched


def test_an_old_lock_is_called_possibly_stale_but_not_broken(tmp_path: Path) -> None:
    lock.acquire(str(tmp_path), "alice", "r1", now=NOON)
    with pytest.raises(lock.LockHeld, match=r"\(1 d 3 h ago; older than 1 h 0 min, so possibly left by a deploy "
                                            r"that died\)"):
        lock.acquire(str(tmp_path), "bob", "r2", now=later(days=1, hours=3))
    assert lock.read(str(tmp_path))["release"] == "r1"  # type: ignore[index]


def test_acquire_again_by_the_same_release_and_holder_changes_nothing(tmp_path: Path) -> None:
    first = lock.acquire(str(tmp_path), "alice", "r1", now=NOON)
    assert lock.acquire(str(tmp_path), "alice", "r1", now=later(minutes=1)) == first
    with pytest.raises(lock.LockHeld, match="held by alice"):
        lock.acquire(str(tmp_path), "bob", "r1", now=later(minutes=1))


def test_release_by_the_holder_removes_the_lock(tmp_path: Path) -> None:
    info = lock.acquire(str(tmp_path), "alice", "r1", now=NOON)
    assert lock.release(str(tmp_path), "r1") == info
    assert not (tmp_path / "deploy.lock").exists()
    assert lock.read(str(tmp_path)) is None
    assert lock.release(str(tmp_path), "r1") is None  # a missing lock is fine
    lock.acquire(str(tmp_path), "bob", "r2", now=NOON)  # and the next deploy may take it


def test_release_by_another_release_is_refused_and_keeps_the_lock(tmp_path: Path) -> None:
    info = lock.acquire(str(tmp_path), "alice", "r1", now=NOON)
    with pytest.raises(lock.LockHeld, match=r"^release r2 cannot release the lock: deploy lock .* is held by alice "
                                            r".* for release r1"):
        lock.release(str(tmp_path), "r2", now=later(seconds=30))
    assert lock.read(str(tmp_path)) == info


def test_break_removes_any_lock_and_returns_what_it_held(tmp_path: Path) -> None:
    assert lock.break_lock(str(tmp_path)) is None
    info = lock.acquire(str(tmp_path), "alice", "r1", now=NOON)
    assert lock.break_lock(str(tmp_path)) == info
    assert lock.read(str(tmp_path)) is None


def test_a_file_that_is_not_a_lock_record_is_held_and_can_be_broken(tmp_path: Path) -> None:
    (tmp_path / "deploy.lock").write_text("garbage")
    assert lock.read(str(tmp_path)) == {"unreadable": "garbage"}
    with pytest.raises(lock.LockHeld, match=r"exists but is not a lock record .* break it with -e break_lock=true"):
        lock.acquire(str(tmp_path), "alice", "r1")
    assert lock.break_lock(str(tmp_path)) == {"unreadable": "garbage"}
    assert lock.acquire(str(tmp_path), "alice", "r1")["release"] == "r1"


def test_two_threads_racing_for_the_lock_exactly_one_wins(tmp_path: Path) -> None:
    for attempt in range(20):
        state_dir = str(tmp_path / str(attempt))
        barrier = threading.Barrier(2)
        won: list[str] = []
        refused: list[lock.LockHeld] = []

        def take(release: str, state_dir: str = state_dir, barrier: threading.Barrier = barrier,
                 won: list[str] = won, refused: list[lock.LockHeld] = refused) -> None:
            barrier.wait()
            try:
                lock.acquire(state_dir, f"holder-{release}", release)
                won.append(release)
            except lock.LockHeld as exc:
                refused.append(exc)

        threads = [threading.Thread(target=take, args=(release,)) for release in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert len(won) == 1 and len(refused) == 1, (won, refused)
        assert refused[0].holder["release"] == won[0]  # the loser names the winner, never a half-written file
        assert lock.read(state_dir)["release"] == won[0]  # type: ignore[index]


# --- the module, run by ansible on localhost ------------------------------------------------------------------

def run_module(args: dict[str, Any], *options: str) -> dict[str, Any]:
    """Run the module on localhost through the real `ansible` CLI and return the host's result."""
    return ansible_cli.run_module("deploy_lock", args, *options)


def test_module_acquires_refuses_releases_and_checks(tmp_path: Path) -> None:
    state_dir = str(tmp_path / "state")
    path = tmp_path / "state" / "deploy.lock"

    checked = run_module({"state_dir": state_dir, "state": "acquired", "release": "r1"}, "--check", "--diff")
    assert checked.get("failed") is not True, checked
    assert checked["changed"] is True
    assert checked["diff"]["before"] == {} and checked["diff"]["after"]["release"] == "r1"
    assert not path.exists()

    taken = run_module({"state_dir": state_dir, "state": "acquired", "release": "r1", "holder": "alice",
                        "purpose": "deploy asr 1.1.0"})
    assert taken.get("failed") is not True, taken
    assert taken["changed"] is True
    assert json.loads(path.read_text()) == taken["lock"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

    again = run_module({"state_dir": state_dir, "state": "acquired", "release": "r1", "holder": "alice"})
    assert again["changed"] is False, again

    refused = run_module({"state_dir": state_dir, "state": "acquired", "release": "r2", "holder": "bob"})
    assert refused.get("failed") is True
    assert re.match(r"deploy lock .*/deploy\.lock is held by alice \(pid \d+ on .*\) since \S+Z \(\d+ s ago\) for "
                    r"release r1 \(deploy asr 1\.1\.0\); .* -e break_lock=true$", refused["msg"]), refused["msg"]

    released = run_module({"state_dir": state_dir, "state": "released", "release": "r1"})
    assert released["changed"] is True, released
    assert released["previous"] == taken["lock"] and released["lock"] == {}
    assert not path.exists()
