"""The release engine's thin Ansible faces against real parts: one runtime-API batch over several backends of a
real HAProxy (read back, undone, refused after an abort request), the weights written into its configuration,
warm checks and gates side by side against real HTTP servers, the pause an abort cuts short, playbooks/abort.yml's
module, the fast rollback module, the batched record and the lock's annotation."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import xl_gates
import xl_haproxy as hx
import xl_lock
import xl_release
import xl_state

from tests.support import ansible_cli
from tests.support.servers import FakeInstance, Haproxy, free_port

CONTROLLER = ansible_cli.CONTROLLER_PYTHON


def _two_services(tmp_path: Path, blue: FakeInstance, green: FakeInstance) -> Haproxy:
    return Haproxy(tmp_path, {}, backends={
        "be_asr": {"asr_blue": (blue.port, 100), "asr_green": (green.port, 0)},
        "be_tts": {"tts_blue": (blue.port, 100), "tts_green": (green.port, 0)}})


def _weights(proxy: Haproxy) -> dict[str, dict[str, int]]:
    return {name: {srv: state["weight"] for srv, state in servers.items()}
            for name, servers in hx.all_backends_state(proxy.socket, ["be_asr", "be_tts"]).items()}


def _up(proxy: Haproxy) -> None:
    for backend, names in (("be_asr", ["asr_blue", "asr_green"]), ("be_tts", ["tts_blue", "tts_green"])):
        hx.wait_until_up(proxy.socket, backend, names, timeout=10)


def test_a_batch_moves_every_backend_in_one_call_and_persists_the_weights(tmp_path: Path) -> None:
    with FakeInstance() as blue, FakeInstance() as green, _two_services(tmp_path, blue, green) as proxy:
        _up(proxy)
        batch = {"be_asr": {"asr_blue": 0, "asr_green": 100}, "be_tts": {"tts_blue": 0, "tts_green": 100}}
        planned = hx.apply_batch(proxy.socket, batch, check_mode=True)
        assert planned["changed"] and _weights(proxy)["be_asr"] == {"asr_blue": 100, "asr_green": 0}
        moved = hx.apply_batch(proxy.socket, batch, wait_up_timeout=5)
        assert moved["changed"] and _weights(proxy) == batch
        assert moved["commands"][-1].endswith(" 0"), "lowering comes last, across the whole batch"
        assert hx.apply_batch(proxy.socket, batch)["changed"] is False
        assert hx.persist_weights(str(proxy.config), batch) is True
        persisted = hx.config_weights(proxy.config.read_text())
        assert persisted["be_asr"] == {"asr_blue": 0, "asr_green": 100} and persisted["be_tts"]["tts_green"] == 100
        assert hx.persist_weights(str(proxy.config), batch) is False


def test_a_batch_to_a_server_that_is_down_changes_nothing(tmp_path: Path) -> None:
    with FakeInstance() as blue, Haproxy(tmp_path, {}, backends={
            "be_asr": {"asr_blue": (blue.port, 100), "asr_green": (free_port(), 0)},
            "be_tts": {"tts_blue": (blue.port, 100), "tts_green": (blue.port, 0)}}) as proxy:
        hx.wait_until_up(proxy.socket, "be_tts", ["tts_green"], timeout=10)
        with pytest.raises(hx.HaproxyError, match="never marked be_asr/asr_green"):
            hx.apply_batch(proxy.socket, {"be_asr": {"asr_green": 100, "asr_blue": 0},
                                          "be_tts": {"tts_green": 100, "tts_blue": 0}}, wait_up_timeout=1)
        assert _weights(proxy) == {"be_asr": {"asr_blue": 100, "asr_green": 0}, "be_tts": {"tts_blue": 100,
                                                                                           "tts_green": 0}}
        with pytest.raises(hx.HaproxyError, match=r"\['be_nope'\] do not exist"):
            hx.apply_batch(proxy.socket, {"be_nope": {"x": 1}})


def test_the_module_refuses_to_move_traffic_once_the_run_was_aborted(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with FakeInstance() as blue, FakeInstance() as green, _two_services(tmp_path, blue, green) as proxy:
        _up(proxy)
        args = {"socket": proxy.socket, "batch": {"be_asr": {"asr_blue": 90, "asr_green": 10}},
                "state_dir": str(state_dir), "release": "r1", "config_file": str(proxy.config)}
        moved = ansible_cli.run_module("haproxy_traffic", args)
        assert moved["changed"] and moved["backends"]["be_asr"]["weights"] == {"asr_blue": 90, "asr_green": 10}
        assert hx.config_weights(proxy.config.read_text())["be_asr"] == {"asr_blue": 90, "asr_green": 10}
        xl_release.request_abort(str(state_dir), "r1", "alice")
        refused = ansible_cli.run_module("haproxy_traffic", {**args, "batch": {"be_asr": {"asr_blue": 50,
                                                                                         "asr_green": 50}}})
        assert refused["failed"] and "the run was aborted by alice" in refused["msg"]
        assert _weights(proxy)["be_asr"] == {"asr_blue": 90, "asr_green": 10}


def test_gate_targets_run_side_by_side_and_a_warm_check_compares_version_and_digest() -> None:
    with FakeInstance() as good, FakeInstance() as other:
        other.about = {**other.about, "image": "reg/xlerobot/asr@sha256:else"}
        version = [{"name": "warm-version", "type": "version", "version": "1.0.0", "digest": "sha256:old"}]
        targets = [{"service": "asr", "host": "h1", "url": good.url, "gates": version, "context": {}},
                   {"service": "tts", "host": "h1", "url": other.url, "gates": version, "context": {}}]
        results = xl_gates.run_targets(targets, concurrency=2)
        assert [(r["service"], r["passed"]) for r in results] == [("asr", True), ("tts", False)]
        assert "runs image reg/xlerobot/asr@sha256:else, the record says sha256:old" in results[1]["msg"]
        good.ready = False
        slow = [{"service": "asr", "host": "h1", "url": good.url, "context": {},
                 "gates": [{"name": "readiness", "type": "readiness", "timeout": 30, "interval": 0.1}]}]
        started = time.monotonic()
        stopped = xl_gates.run_targets(
            slow, stop=lambda: "aborted by bob" if time.monotonic() - started > 0.5 else None)
        assert stopped[0]["passed"] is False and stopped[0]["msg"] == "aborted by bob"
        assert time.monotonic() - started < 5


def test_the_pause_ends_at_once_when_the_run_is_aborted(tmp_path: Path) -> None:
    args = {"seconds": 30, "state_dir": str(tmp_path), "release": "r1", "poll": 0.05}
    threading.Timer(1.0, xl_release.request_abort, (str(tmp_path), "r1", "carol", "latency")).start()
    started = time.monotonic()
    result = ansible_cli.run_module("release_pause", args)
    assert result["failed"] and "the run was aborted by carol" in result["msg"] and "latency" in result["msg"]
    assert time.monotonic() - started < 10
    other = ansible_cli.run_module("release_pause", {**args, "seconds": 0.5, "release": "r2"})
    assert not other.get("failed") and other["waited"] >= 0.5


def test_abort_returns_the_running_run_s_traffic_and_leaves_its_request(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    args = {"state_dir": str(state_dir), "by": "dave", "reason": "p95"}
    with FakeInstance() as blue, FakeInstance() as green, _two_services(tmp_path, blue, green) as proxy:
        _up(proxy)
        nothing = ansible_cli.run_module("release_abort", {**args, "socket": proxy.socket})
        assert nothing["changed"] is False and "nothing to abort" in nothing["message"]
        xl_lock.acquire(str(state_dir), "ci", "r7", "canary deploy of asr,tts 1.1.0")
        xl_lock.annotate(str(state_dir), "r7", {"services": ["asr", "tts"], "strategy": "canary", "restore": {
            "be_asr": {"asr_blue": 100, "asr_green": 0}, "be_tts": {"tts_blue": 100, "tts_green": 0}}})
        hx.apply_batch(proxy.socket, {"be_asr": {"asr_blue": 80, "asr_green": 20},
                                      "be_tts": {"tts_blue": 80, "tts_green": 20}})
        checked = ansible_cli.run_module("release_abort", {**args, "socket": proxy.socket}, "--check")
        assert checked["changed"] and checked["message"].startswith("would stop r7")
        assert xl_release.abort_requested(str(state_dir), "r7") is None
        result = ansible_cli.run_module("release_abort", {**args, "socket": proxy.socket,
                                                          "config_file": str(proxy.config)})
        assert result["changed"] and result["release"] == "r7" and result["run"]["services"] == ["asr", "tts"]
        assert _weights(proxy) == {"be_asr": {"asr_blue": 100, "asr_green": 0},
                                   "be_tts": {"tts_blue": 100, "tts_green": 0}}
        assert hx.config_weights(proxy.config.read_text())["be_tts"] == {"tts_blue": 100, "tts_green": 0}
        request = xl_release.abort_requested(str(state_dir), "r7")
        assert request and request["by"] == "dave" and request["reason"] == "p95"


def _record(state_dir: Path) -> None:
    live = {"colour": "green", "version": "1.1.0", "digest": "sha256:new", "image": "reg/xlerobot/asr@sha256:new",
            "release": "r2"}
    previous = {"colour": "blue", "version": "1.0.0", "digest": "sha256:old", "image": "reg/xlerobot/asr@sha256:old",
                "release": "r1"}
    state_dir.mkdir(parents=True, exist_ok=True)
    (state_dir / "state.json").write_text(json.dumps({"services": {"asr": {"live": live, "previous": previous}}}))


def test_the_fast_rollback_switches_a_warm_colour_back_and_leaves_a_cold_one_to_the_gates(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    _record(state_dir)
    with FakeInstance() as blue, FakeInstance() as green, Haproxy(tmp_path, {}, backends={
            "be_asr": {"asr_blue": (blue.port, 0), "asr_green": (green.port, 100)}}) as proxy:
        hx.wait_until_up(proxy.socket, "be_asr", ["asr_blue", "asr_green"], timeout=10)
        args = {"state_dir": str(state_dir), "socket": proxy.socket, "config_file": str(proxy.config),
                "hosts": {"localhost": {"address": "127.0.0.1"}}, "release": "r3", "environment": "test"}
        checked = ansible_cli.run_module("release_rollback", args, "--check")
        assert checked["switched"] == ["asr"] and "would switch back to the warm blue" in checked["lines"][0]
        assert _weights_of(proxy) == {"asr_blue": 0, "asr_green": 100}
        # One /version answer lost on a busy host is asked again, not sent down the gated path.
        blue.version_failures = 1
        result = ansible_cli.run_module("release_rollback", args)
        assert result["switched"] == ["asr"] and result["remaining"] == {} and result["lock_kept"] is False
        assert blue.version_failures == 0
        assert _weights_of(proxy) == {"asr_blue": 100, "asr_green": 0}
        assert hx.config_weights(proxy.config.read_text())["be_asr"] == {"asr_blue": 100, "asr_green": 0}
        state = xl_state.load_state(str(state_dir))["services"]["asr"]
        assert (state["live"]["colour"], state["previous"]["colour"]) == ("blue", "green")
        event = xl_state.read_history(str(state_dir))[-1]
        assert (event["action"], event["result"], event["gates"]) == ("rollback", "success", [])
        assert event["checks"][0]["name"] == "warm-version" and event["checks"][0]["passed"] is True
        assert xl_lock.read(str(state_dir)) is None
        # Back the other way, but green now answers another version: it is left to the gated path.
        green.about = {**green.about, "version": "0.9.0", "image": "reg/xlerobot/asr@sha256:new"}
        cold = ansible_cli.run_module("release_rollback", {**args, "release": "r4"})
        assert cold["switched"] == [] and "answers version '0.9.0'" in cold["remaining"]["asr"]
        assert cold["lock_kept"] is True and xl_lock.read(str(state_dir))["release"] == "r4"
        assert _weights_of(proxy) == {"asr_blue": 100, "asr_green": 0}


def _weights_of(proxy: Haproxy) -> dict[str, int]:
    return {srv: state["weight"] for srv, state in hx.backend_state(proxy.socket, "be_asr").items()}


def test_the_fast_rollback_refuses_an_unknown_service_and_a_held_lock(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    _record(state_dir)
    args = {"state_dir": str(state_dir), "socket": str(tmp_path / "none.sock"), "hosts": {"localhost": {}},
            "release": "r5", "services": ["nope"]}
    unknown = ansible_cli.run_module("release_rollback", args)
    assert unknown["failed"] and "no release of ['nope'] is recorded" in unknown["msg"]
    xl_lock.acquire(str(state_dir), "eve", "r-other", "canary deploy")
    held = ansible_cli.run_module("release_rollback", {**args, "services": ["asr"]})
    assert held["failed"] and "r-other" in held["msg"] and "break_lock=true" in held["msg"]


def test_a_run_records_every_service_once(tmp_path: Path) -> None:
    live = {"colour": "green", "version": "1.1.0", "digest": "sha256:b", "image": "r/asr@sha256:b", "release": "r2"}
    events = [{"service": "asr", "result": "success"}, {"service": "tts", "result": "aborted"}]
    result = xl_state.record_run(str(tmp_path), {"asr": live}, events)
    assert result["changed"] and result["after"]["asr"]["live"]["colour"] == "green" and result["after"]["tts"] == {}
    assert [event["service"] for event in xl_state.read_history(str(tmp_path))] == ["asr", "tts"]
    assert xl_state.record_run(str(tmp_path), {}, [], check_mode=True)["changed"] is False


def test_the_lock_carries_the_run_for_the_abort_and_only_its_holder_annotates_it(tmp_path: Path) -> None:
    xl_lock.acquire(str(tmp_path), "ci", "r1", "deploy")
    annotated = xl_lock.annotate(str(tmp_path), "r1", {"services": ["asr"]})
    assert xl_lock.read(str(tmp_path)) == annotated and annotated["run"] == {"services": ["asr"]}
    assert (tmp_path / xl_lock.LOCK_FILE).stat().st_mode & 0o777 == 0o600
    with pytest.raises(xl_lock.LockHeld, match="does not hold the lock"):
        xl_lock.annotate(str(tmp_path), "r2", {})
