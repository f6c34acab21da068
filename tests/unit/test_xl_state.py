"""xl_state: live/previous bookkeeping, atomic writes, append-only history."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import xl_state as st

BLUE_1 = {"colour": "blue", "version": "1.0.0", "digest": "sha256:a", "image": "r/asr@sha256:a", "release": "r1"}
GREEN_2 = {"colour": "green", "version": "1.1.0", "digest": "sha256:b", "image": "r/asr@sha256:b", "release": "r2"}


def test_empty_directory_has_no_services(tmp_path: Path) -> None:
    assert st.load_state(str(tmp_path)) == {"services": {}}


def test_switch_moves_live_to_previous() -> None:
    state = st.next_state({"services": {}}, "asr", BLUE_1)
    assert state["services"]["asr"] == {"live": BLUE_1}
    state = st.next_state(state, "asr", GREEN_2)
    assert state["services"]["asr"] == {"live": GREEN_2, "previous": BLUE_1}


def test_recording_the_same_colour_keeps_the_previous() -> None:
    state = st.next_state(st.next_state({"services": {}}, "asr", BLUE_1), "asr", GREEN_2)
    again = st.next_state(state, "asr", {**GREEN_2, "release": "r3"})
    assert again["services"]["asr"]["previous"] == BLUE_1
    assert again["services"]["asr"]["live"]["release"] == "r3"


def test_a_new_image_on_the_same_colour_replaces_the_live_release() -> None:
    rolled = {**BLUE_1, "version": "1.1.0", "digest": "sha256:c", "image": "r/asr@sha256:c", "release": "r2"}
    state = st.next_state(st.next_state({"services": {}}, "asr", BLUE_1), "asr", rolled)
    assert state["services"]["asr"] == {"live": rolled, "previous": BLUE_1}


def test_unknown_keys_are_not_recorded() -> None:
    state = st.next_state({"services": {}}, "asr", {**BLUE_1, "token": "s3cret"})
    assert "token" not in state["services"]["asr"]["live"]


def test_save_is_atomic_and_not_world_readable(tmp_path: Path) -> None:
    state = st.next_state({"services": {}}, "asr", BLUE_1)
    st.save_state(str(tmp_path), state)
    path = tmp_path / st.STATE_FILE
    assert json.loads(path.read_text()) == state
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert [p.name for p in tmp_path.iterdir()] == [st.STATE_FILE]
    assert st.load_state(str(tmp_path)) == state


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / st.STATE_FILE).write_text("{not json")
    with pytest.raises(st.StateError, match="cannot read deploy state"):
        st.load_state(str(tmp_path))
    (tmp_path / st.STATE_FILE).write_text("[]")
    with pytest.raises(st.StateError, match="no 'services' mapping"):
        st.load_state(str(tmp_path))


def test_history_appends_and_filters(tmp_path: Path) -> None:
    st.append_history(str(tmp_path), {"service": "asr", "result": "success", "version": "1.0.0"})
    st.append_history(str(tmp_path), {"service": "tts", "result": "success", "version": "1.0.0"})
    st.append_history(str(tmp_path), {"service": "asr", "result": "aborted", "version": "1.1.0"})
    assert [e["version"] for e in st.read_history(str(tmp_path), "asr")] == ["1.0.0", "1.1.0"]
    assert len(st.read_history(str(tmp_path))) == 3
    assert os.stat(tmp_path / st.HISTORY_FILE).st_mode & 0o777 == 0o640


def test_corrupt_history_line_is_named(tmp_path: Path) -> None:
    (tmp_path / st.HISTORY_FILE).write_text('{"service": "asr"}\nnot json\n')
    with pytest.raises(st.StateError, match=r"history.jsonl:2"):
        st.read_history(str(tmp_path))
