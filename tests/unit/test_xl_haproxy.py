"""xl_haproxy against a real HAProxy: parsing, planning, switching, refusing unsafe switches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
import xl_haproxy as hx

from tests.support.servers import FakeInstance, Haproxy, free_port

STATE_SAMPLE = """1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight \
srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state \
bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr \
srv_agent_addr srv_agent_port
3 be_asr 1 asr_blue 127.0.0.1 2 0 100 100 12 6 3 4 6 0 0 0 - 18001 - 0 0 - - 0
3 be_asr 2 asr_green 127.0.0.1 0 1 0 0 12 8 2 0 6 0 0 0 - 18002 - 0 0 - - 0
"""


def test_parse_servers_state_reads_weight_health_and_maintenance() -> None:
    servers = hx.parse_servers_state(STATE_SAMPLE)["be_asr"]
    assert servers["asr_blue"] == {"address": "127.0.0.1", "port": 18001, "weight": 100, "initial_weight": 100,
                                   "op_state": "RUNNING", "up": True, "maintenance": False, "draining": False}
    assert servers["asr_green"]["up"] is False
    assert servers["asr_green"]["maintenance"] is True
    assert hx.live_servers(servers) == ["asr_blue"]


def test_plan_raises_before_lowering_and_readies_servers_in_maintenance() -> None:
    servers = hx.parse_servers_state(STATE_SAMPLE)["be_asr"]
    commands = hx.plan_weights(servers, {"asr_blue": 0, "asr_green": 100})
    assert commands == ["set server {backend}/asr_green state ready", "set weight {backend}/asr_green 100",
                        "set weight {backend}/asr_blue 0"]


def test_plan_is_empty_when_weights_already_match() -> None:
    servers = hx.parse_servers_state(STATE_SAMPLE)["be_asr"]
    assert hx.plan_weights(servers, {"asr_blue": 100}) == []


@pytest.mark.parametrize("weights, message", [
    ({"asr_red": 10}, "unknown server"),
    ({"asr_blue": 300}, "must be an integer 0..256"),
    ({"asr_blue": -1}, "must be an integer 0..256"),
])
def test_plan_rejects_bad_input(weights: dict[str, int], message: str) -> None:
    servers = hx.parse_servers_state(STATE_SAMPLE)["be_asr"]
    with pytest.raises(hx.HaproxyError, match=message):
        hx.plan_weights(servers, weights)


def test_config_weights_reads_each_backend() -> None:
    text = """
global
    stats socket /x level admin
backend be_asr
    server asr_blue 127.0.0.1:18001 weight 100 check  # live
    server asr_green 127.0.0.1:18002 weight 0 check
backend be_tts
    server tts_blue 127.0.0.1:18011 check
"""
    assert hx.config_weights(text) == {"be_asr": {"asr_blue": 100, "asr_green": 0}, "be_tts": {"tts_blue": 1}}


def test_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(hx.HaproxyError, match="runtime socket"):
        hx.backend_state(str(tmp_path / "missing.sock"), "be_asr")


def test_switch_moves_weights_on_a_real_haproxy(tmp_path: Path) -> None:
    with FakeInstance() as blue, FakeInstance() as green, \
            Haproxy(tmp_path, {"s_blue": (blue.port, 100), "s_green": (green.port, 0)}) as proxy:
        hx.wait_until_up(proxy.socket, "be_test", ["s_blue", "s_green"], timeout=10)
        result = hx.apply_weights(proxy.socket, "be_test", {"s_green": 100, "s_blue": 0}, wait_up_timeout=10)
        assert result["changed"] is True
        assert result["before"] == {"s_blue": 100, "s_green": 0}
        assert result["after"] == {"s_blue": 0, "s_green": 100}
        state = hx.backend_state(proxy.socket, "be_test")
        assert hx.live_servers(state) == ["s_green"]
        again = hx.apply_weights(proxy.socket, "be_test", {"s_green": 100, "s_blue": 0})
        assert again["changed"] is False and again["commands"] == []


def test_check_mode_plans_without_changing(tmp_path: Path) -> None:
    with FakeInstance() as blue, FakeInstance() as green, \
            Haproxy(tmp_path, {"s_blue": (blue.port, 100), "s_green": (green.port, 0)}) as proxy:
        result = hx.apply_weights(proxy.socket, "be_test", {"s_green": 100, "s_blue": 0}, check_mode=True)
        assert result["changed"] is True
        assert result["after"] == {"s_blue": 0, "s_green": 100}
        assert hx.live_servers(hx.backend_state(proxy.socket, "be_test")) == ["s_blue"]


def test_switch_to_a_server_that_is_down_changes_nothing(tmp_path: Path) -> None:
    dead_port = free_port()  # nothing listens there
    with FakeInstance() as blue, Haproxy(tmp_path, {"s_blue": (blue.port, 100), "s_green": (dead_port, 0)}) as proxy:
        started = time.monotonic()
        with pytest.raises(hx.HaproxyError, match="never marked s_green"):
            hx.apply_weights(proxy.socket, "be_test", {"s_green": 100, "s_blue": 0}, wait_up_timeout=1.5)
        assert time.monotonic() - started < 10
        assert hx.live_servers(hx.backend_state(proxy.socket, "be_test")) == ["s_blue"]


def test_unknown_backend_is_named(tmp_path: Path) -> None:
    with FakeInstance() as blue, Haproxy(tmp_path, {"s_blue": (blue.port, 100)}) as proxy, \
            pytest.raises(hx.HaproxyError, match="be_nope"):
        hx.backend_state(proxy.socket, "be_nope")


def test_drain_wait_returns_when_nothing_is_in_flight(tmp_path: Path) -> None:
    with FakeInstance() as blue, Haproxy(tmp_path, {"s_blue": (blue.port, 100)}) as proxy:
        assert hx.wait_until_drained(proxy.socket, "be_test", ["s_blue"], timeout=5) == {"s_blue": 0}


def _keyed_haproxy(tmp_path: Path, entries: str) -> Haproxy:
    """HAProxy answering 200 with the client a request's X-Key maps to, 401 when the key is not in the map."""
    key_map = tmp_path / "keys.map"
    key_map.write_text(entries)
    return Haproxy(tmp_path, {}, frontend=[
        f"http-request set-var(txn.client) req.hdr(x-key),map({key_map})",
        'http-request return status 200 content-type text/plain lf-string "%[var(txn.client)]" '
        "if { var(txn.client) -m found }",
        "http-request return status 401",
    ])


def _client_of(proxy: Haproxy, key: str) -> str | int:
    answer = requests.get(f"http://127.0.0.1:{proxy.frontend_port}/", headers={"X-Key": key}, timeout=5)
    return answer.text if answer.status_code == 200 else answer.status_code


def test_parse_map_keeps_the_first_value_of_a_key() -> None:
    text = "0x55d1 aaa robot\n0x55d2 bbb dashboard\n0x55d3 aaa other\n\n"
    assert hx.parse_map(text) == {"aaa": "robot", "bbb": "dashboard"}


def test_plan_map_adds_before_it_deletes() -> None:
    commands = hx.plan_map({"old": "robot", "same": "dash", "moved": "a"}, {"new": "robot", "same": "dash",
                                                                          "moved": "b"})
    assert commands == ["set map {map} moved b", "add map {map} new robot", "del map {map} old"]
    assert hx.plan_map({"k": "v"}, {"k": "v"}) == []
    with pytest.raises(ValueError, match="without spaces"):
        hx.plan_map({}, {"a b": "robot"})


def test_sync_map_rotates_keys_on_a_running_haproxy(tmp_path: Path) -> None:
    key_map = str(tmp_path / "keys.map")
    with _keyed_haproxy(tmp_path, "old-key robot\nother-key dashboard\n") as proxy:
        assert _client_of(proxy, "old-key") == "robot"
        grace = hx.sync_map(proxy.socket, key_map, {"old-key": "robot", "new-key": "robot",
                                                    "other-key": "dashboard"})
        assert grace["changed"] and grace["added"] == ["robot"] and grace["removed"] == []
        assert _client_of(proxy, "old-key") == "robot" and _client_of(proxy, "new-key") == "robot"
        done = hx.sync_map(proxy.socket, key_map, {"new-key": "robot", "other-key": "dashboard"})
        assert done["removed"] == ["robot"] and done["after"] == 2
        assert _client_of(proxy, "old-key") == 401 and _client_of(proxy, "new-key") == "robot"
        assert _client_of(proxy, "other-key") == "dashboard"
        again = hx.sync_map(proxy.socket, key_map, {"new-key": "robot", "other-key": "dashboard"})
        assert again["changed"] is False


def test_sync_map_check_mode_and_unknown_map(tmp_path: Path) -> None:
    key_map = str(tmp_path / "keys.map")
    with _keyed_haproxy(tmp_path, "old-key robot\n") as proxy:
        planned = hx.sync_map(proxy.socket, key_map, {"new-key": "robot"}, check_mode=True)
        assert planned["changed"] and planned["added"] == ["robot"] and planned["removed"] == ["robot"]
        assert hx.map_entries(proxy.socket, key_map) == {"old-key": "robot"}
        with pytest.raises(hx.HaproxyError, match=r"no map loaded from .*elsewhere\.map"):
            hx.map_entries(proxy.socket, str(tmp_path / "elsewhere.map"))
