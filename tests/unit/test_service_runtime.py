"""xl_service.runtime: the runtime file overlays the environment, only reloadable fields may change, a refused
file leaves the settings as they were, and a restart applies the same rule."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from xl_service.runtime import NO_FILE, LiveSettings, RuntimeFileError, read_runtime_file
from xl_service.settings import SettingsError, env_int


@dataclass(frozen=True)
class FakeSettings:
    RUNTIME_ENV: ClassVar[dict[str, str]] = {"T_BEAM": "beam_size"}
    beam_size: int
    threads: int
    log_level: str

    @classmethod
    def from_env(cls) -> FakeSettings:
        return cls(beam_size=env_int("T_BEAM", 1, minimum=1), threads=env_int("T_THREADS", 2, minimum=1),
                   log_level=os.environ.get("XL_LOG_LEVEL", "INFO"))


@pytest.fixture()
def environ() -> Iterator[Any]:
    names = ("T_BEAM", "T_THREADS", "XL_LOG_LEVEL")
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    os.environ["T_THREADS"] = "4"
    yield os.environ
    # LiveSettings edits the process environment itself: put it back for the tests after this one.
    for name in names:
        os.environ.pop(name, None)
    os.environ.update(saved)


def write(path: Path, version: str, **env: object) -> None:
    path.write_text(json.dumps({"version": version, "env": env}))


def test_without_a_file_the_container_environment_rules(environ: Any, tmp_path: Path) -> None:
    live = LiveSettings(FakeSettings.from_env, str(tmp_path / "absent.json"))
    assert live.start() == FakeSettings(1, 4, "INFO")
    assert live.version == NO_FILE and live.beam_size == 1
    assert LiveSettings(FakeSettings.from_env, None).reload() is False


def test_a_reload_applies_reloadable_fields_and_the_log_level(environ: Any, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime.json"
    write(runtime, "cfg-1", T_BEAM="2")
    live = LiveSettings(FakeSettings.from_env, str(runtime))
    live.start()
    assert (live.version, live.beam_size) == ("cfg-1", 2)
    write(runtime, "cfg-2", T_BEAM=5, XL_LOG_LEVEL="DEBUG")
    assert live.reload() is True
    assert live.current == FakeSettings(5, 4, "DEBUG") and live.version == "cfg-2"
    assert live.describe() == {"version": "cfg-2", "error": None, "reloadable": {"beam_size": 5, "log_level": "DEBUG"},
                               "reloads": {"applied": 1, "refused": 0}}
    # A key dropped from the file returns to the container's value (here: none, so the default).
    write(runtime, "cfg-3")
    assert live.reload() and live.current == FakeSettings(1, 4, "INFO") and "T_BEAM" not in environ


@pytest.mark.parametrize(("content", "message"), [
    ({"version": "bad", "env": {"T_THREADS": "8"}}, "T_THREADS: not a runtime setting of this service"),
    ({"version": "bad", "env": {"T_BEAM": "0"}}, "T_BEAM=0 is below the minimum 1"),
    ({"version": "bad", "env": ["T_BEAM"]}, "'env' must map variable names to plain values"),
    ("{not json", "runtime file"),
])
def test_a_refused_file_changes_nothing(environ: Any, tmp_path: Path, content: object, message: str) -> None:
    runtime = tmp_path / "runtime.json"
    write(runtime, "good", T_BEAM="3")
    live = LiveSettings(FakeSettings.from_env, str(runtime))
    live.start()
    runtime.write_text(content if isinstance(content, str) else json.dumps(content))
    assert live.reload() is False
    assert live.current == FakeSettings(3, 4, "INFO") and live.version == "good"
    assert live.error is not None and message in live.error
    assert environ["T_BEAM"] == "3" and environ["T_THREADS"] == "4", "the environment is as it was"
    assert live.describe()["reloads"] == {"applied": 0, "refused": 1}


def test_a_restart_refuses_what_a_reload_would(environ: Any, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime.json"
    write(runtime, "cfg-1", T_THREADS="8")
    with pytest.raises(RuntimeFileError, match="T_THREADS: not a runtime setting"):
        LiveSettings(FakeSettings.from_env, str(runtime)).start()
    write(runtime, "cfg-1", T_BEAM="none")
    with pytest.raises(SettingsError, match="T_BEAM='none' is not an integer"):
        LiveSettings(FakeSettings.from_env, str(runtime)).start()


def test_read_runtime_file_turns_values_into_environment_text(tmp_path: Path) -> None:
    runtime = tmp_path / "runtime.json"
    runtime.write_text(json.dumps({"env": {"A": True, "B": 2.5}}))
    assert read_runtime_file(str(runtime)) == ("unversioned", {"A": "true", "B": "2.5"})
    assert read_runtime_file(str(tmp_path / "none.json")) == (NO_FILE, {})


@dataclass(frozen=True)
class EntangledSettings:
    """A runtime variable that also moves a field needing a restart: the field check still refuses it."""
    RUNTIME_ENV: ClassVar[dict[str, str]] = {"T_BEAM": "beam_size"}
    beam_size: int
    threads: int

    @classmethod
    def from_env(cls) -> EntangledSettings:
        beam = env_int("T_BEAM", 1, minimum=1)
        return cls(beam_size=beam, threads=beam * 2)


def test_a_runtime_variable_that_moves_another_field_is_refused(environ: Any, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime.json"
    write(runtime, "cfg-1", T_BEAM="2")
    with pytest.raises(RuntimeFileError, match="threads cannot change while running"):
        LiveSettings(EntangledSettings.from_env, str(runtime)).start()


SAMPLE_VALUES = {"beam_size": "3", "queue_timeout_s": "7.5", "max_tokens": "17", "temperature": "0.7", "top_p": "0.5"}


@pytest.mark.parametrize("module", ["xl_asr.settings", "xl_tts.settings", "xl_llm.settings",
                                    "xl_multimodal.settings"])
def test_each_runtime_variable_moves_its_own_field_only(module: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_class = importlib.import_module(module).Settings
    base = settings_class.from_env()
    for variable, field_name in settings_class.RUNTIME_ENV.items():
        with monkeypatch.context() as patch:
            patch.setenv(variable, SAMPLE_VALUES[field_name])
            moved = settings_class.from_env()
        assert getattr(moved, field_name) != getattr(base, field_name), f"{variable} does not set {field_name}"
        others = [f.name for f in dataclasses.fields(base) if f.name != field_name
                  and getattr(base, f.name) != getattr(moved, f.name)]
        assert others == [], f"{variable} also moves {others}"
