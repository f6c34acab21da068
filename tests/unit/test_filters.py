"""The naming filters: one scheme for containers, backends, servers and colours."""

from __future__ import annotations

import pytest
import xlerobot as f
from ansible.errors import AnsibleFilterError


def test_names() -> None:
    assert f.xl_backend("asr") == "be_asr"
    assert f.xl_server("asr", "blue") == "asr_blue"
    assert f.xl_server("asr", "blue", "node-1.example") == "asr_blue_node1example"
    assert f.xl_container("asr", "green", "xlt") == "xlt-asr-green"


def test_servers_and_weights() -> None:
    assert f.xl_servers("asr", "blue", ["localhost"]) == ["asr_blue"]
    assert f.xl_servers("asr", "blue", ["n1", "n2"]) == ["asr_blue_n1", "asr_blue_n2"]
    assert f.xl_servers("asr", "blue", ["n2"], fleet=["n1", "n2"]) == ["asr_blue_n2"]
    assert f.xl_servers("asr", "blue", ["n1"], fleet=["n1"]) == ["asr_blue"]
    assert f.xl_weights(["a", "b"], 100) == {"a": 100, "b": 100}


def test_live_colours() -> None:
    hosts = ["localhost"]
    assert f.xl_live_colours({"asr_blue": 100, "asr_green": 0}, "asr", ["blue", "green"], hosts) == ["blue"]
    assert f.xl_live_colours({"asr_blue": 0, "asr_green": 0}, "asr", ["blue", "green"], hosts) == []
    assert f.xl_live_colours({"asr_blue": 5, "asr_green": 95}, "asr", ["blue", "green"], hosts) == ["blue", "green"]


def test_other_colour() -> None:
    assert f.xl_other_colour("blue") == "green"
    assert f.xl_other_colour("green") == "blue"
    assert f.xl_other_colour("") == "blue"
    with pytest.raises(AnsibleFilterError, match="not one of"):
        f.xl_other_colour("red")


@pytest.mark.parametrize("bad", ["ASR", "asr-1", "", "1asr"])
def test_bad_names_are_refused(bad: str) -> None:
    with pytest.raises(AnsibleFilterError, match="must be lower-case"):
        f.xl_backend(bad)


def test_release_id() -> None:
    assert f.xl_release_id("1.1.0", "2026-11-28T10:20:30+00:00") == "20261128T102030Z-1.1.0"


def test_runtime_env_names_the_services_variables() -> None:
    assert f.xl_runtime_env({"beam_size": 3, "log_level": "DEBUG", "queue_timeout_s": 2.5}, "ASR") == {
        "ASR_BEAM_SIZE": "3", "ASR_QUEUE_TIMEOUT_S": "2.5", "XL_LOG_LEVEL": "DEBUG"}
    assert f.xl_runtime_env(None, "MM") == {} and f.xl_runtime_env({"flag": True}, "TTS") == {"TTS_FLAG": "true"}
    for bad, prefix in (({"Beam": 1}, "ASR"), ({}, "asr"), ([], "ASR")):
        with pytest.raises(AnsibleFilterError):
            f.xl_runtime_env(bad, prefix)
