"""xl_haproxy against a real HAProxy: parsing, planning, switching, refusing unsafe switches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
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
