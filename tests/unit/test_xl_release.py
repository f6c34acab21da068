"""xl_release: the release engine's decisions, called directly (status, the traffic planner, steps and rounds,
rolling batches and the failure budget, analysis layering, the rollback's choices, the abort, the record)."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import xl_release as r

from plugins.filter import xl_engine

HOSTS = {"localhost": {"address": "127.0.0.1", "prefix": "xlt"}}
FLEET = {f"node{i}": {"address": f"127.0.0.1{i}", "prefix": f"xlr-node{i}"} for i in range(1, 5)}
GATES = [{"name": "liveness", "type": "liveness"}, {"name": "readiness", "type": "readiness"},
         {"name": "synthetic-transcription", "type": "transcription", "text": "Turn off the radio"}]
CATALOGUE = {
    "asr": {"image": "xlerobot/asr", "ports": {"blue": 18101, "green": 18102}, "gates": GATES, "stop_timeout": 60},
    "tts": {"image": "xlerobot/tts", "ports": {"blue": 18111, "green": 18112}, "gates": GATES[:2],
            "canary": {"analysis": {"metrics": [{"name": "p95-latency",
                                                 "successCondition": "result <= baseline + 0.25"}]}}},
    "llm": {"image": "xlerobot/llm", "ports": {"blue": 18121, "green": 18122}, "gates": GATES[:2]},
    "multimodal": {"image": "xlerobot/multimodal", "ports": {"blue": 18131, "green": 18132}, "gates": GATES[:2],
                   "calls": ["asr", "llm", "tts"],
                   "canary": {"steps": [{"setWeight": 20}, {"pause": {"duration": 10}}, {"analysis": {"window": "3m"}},
                                        {"setWeight": 100}]}},
}
DEFAULT_ANALYSIS = {"window": "1m", "count": 3, "interval": 10, "metrics": [
    {"name": "error-ratio", "query": "q1", "successCondition": "result <= 0.02"},
    {"name": "p95-latency", "query": "q2", "successCondition": "result <= baseline * 1.3 + 0.3"}]}
CANARY_STEPS = [{"setWeight": 5}, {"pause": {"duration": 10}}, {"analysis": {}}, {"setWeight": 20},
                {"pause": {"duration": 10}}, {"analysis": {}}, {"setWeight": 50}, {"pause": {"duration": 10}},
                {"analysis": {}}, {"setWeight": 100}]


def target(service: str, version: str = "1.1.0", digest: str = "sha256:new") -> dict[str, str]:
    return {"version": version, "digest": digest, "ref": f"reg/xlerobot/{service}@{digest}"}


def servers_state(service: str, weights: dict[str, int], up: bool = True, hosts: dict | None = None) -> dict:
    """HAProxy's servers of one backend as haproxy_traffic reports them."""
    names = {colour: r.servers(service, colour, list(hosts or HOSTS)) for colour in ("blue", "green")}
    return {name: {"weight": weights.get(colour, 0), "up": up, "maintenance": False, "draining": False}
            for colour, group in names.items() for name in group}


def instance(version: str, digest: str, service: str = "asr", drift: str | None = None, **extra: Any) -> dict:
    return {"exists": True, "running": True, "image": f"reg/xlerobot/{service}@{digest}", "digest": digest,
            "version": version, "release": f"r-{version}", "restart_count": 0, "unreachable": False, "why": "",
            "drift": drift, **extra}


def deploy_request(services: list[str], strategy: str = "bluegreen", hosts: dict | None = None, **extra: Any) -> dict:
    return {"entry": "deploy", "strategy": strategy, "release": "r-new", "services": services,
            "catalogue": CATALOGUE, "hosts": hosts or HOSTS, "colours": ["blue", "green"],
            "targets": {service: target(service) for service in services}, "golden_dir": "/g",
            "readback_url": "http://127.0.0.1:18080/v1/audio/transcriptions", "canary_steps": CANARY_STEPS,
            "canary_analysis": DEFAULT_ANALYSIS, "rolling_serial": "", "rolling_max_fail_percentage": "",
            "abort_scope": "run", "now": 1000.0, **extra}


def live_on_blue(services: list[str], idle: dict | None = None) -> dict:
    """Every service live on blue with 1.0.0; green holds `idle` (None: no instance)."""
    instances = {}
    for service in services:
        green = {"localhost": idle} if idle else {}
        instances[service] = {"blue": {"localhost": instance("1.0.0", "sha256:old", service,
                                                             drift="localhost: runs image old")},
                              "green": green}
    return {"servers": {r.backend(s): servers_state(s, {"blue": 100}) for s in services}, "instances": instances,
            "record": {}}


# --- names and the request -------------------------------------------------------------------------------------

def test_names_are_one_scheme() -> None:
    assert r.backend("asr") == "be_asr" and r.server("asr", "blue") == "asr_blue"
    assert r.servers("asr", "green", ["node1"], fleet=["node1", "node2"]) == ["asr_green_node1"]
    assert r.container("tts", "green", "xlt") == "xlt-tts-green"
    assert r.other_colour("blue") == "green" and r.other_colour("") == "blue"
    with pytest.raises(r.ReleaseError, match="must be lower-case"):
        r.backend("ASR")


def test_request_errors_name_every_problem_at_once() -> None:
    errors = r.request_errors(entry="deploy", strategy="banana", version="latest", services=["asr", "nope"],
                              catalogue=CATALOGUE, hosts=[], abort_scope="everything")
    text = " ".join(errors)
    assert 'strategy "banana" is not available; choose one of bluegreen, canary, rolling' in text
    assert 'version "latest" is not a pinned image tag' in text
    assert "unknown service(s) ['nope']" in text and "no host in group 'speech'" in text
    assert 'abort_scope "everything" is not one of run, service' in text
    assert r.request_errors(entry="rollback", strategy="", version="", services=["asr"], catalogue=CATALOGUE,
                            hosts=["h"]) == []
    assert "no version given" in r.request_errors(entry="deploy", strategy="canary", version="", services=["asr"],
                                                  catalogue=CATALOGUE, hosts=["h"])[0]


# --- status -------------------------------------------------------------------------------------------------------

def test_status_reads_live_idle_split_and_already_live() -> None:
    hosts = ["localhost"]
    live = r.service_status("asr", colours=["blue", "green"], hosts=hosts,
                            servers_state=servers_state("asr", {"blue": 100}),
                            instances={"blue": {"localhost": instance("1.0.0", "sha256:old", drift="localhost: x")},
                                       "green": {"localhost": instance("1.1.0", "sha256:new")}})
    assert (live["state"], live["live_colour"], live["idle_colour"]) == ("live", "blue", "green")
    assert live["already_live"] is False and live["live_reasons"] == ["localhost: x"]
    assert live["idle_reusable"] is True and live["from_version"] == "1.0.0" and live["from_digest"] == "sha256:old"
    already = r.service_status("asr", colours=["blue", "green"], hosts=hosts,
                               servers_state=servers_state("asr", {"blue": 100}),
                               instances={"blue": {"localhost": instance("1.1.0", "sha256:new")}})
    assert already["already_live"] is True and already["idle_reusable"] is False
    new = r.service_status("asr", colours=["blue", "green"], hosts=hosts, servers_state=servers_state("asr", {}),
                           instances={})
    assert (new["state"], new["idle_colour"], new["live_reasons"]) == ("new", "blue", ["no colour takes traffic"])
    split = r.service_status("asr", colours=["blue", "green"], hosts=hosts,
                             servers_state=servers_state("asr", {"blue": 75, "green": 25}), instances={})
    assert split["state"] == "split" and split["already_live"] is False


def test_a_live_colour_missing_an_instance_on_one_host_is_not_already_live() -> None:
    hosts = list(FLEET)
    found = {host: instance("1.1.0", "sha256:new") for host in hosts[:3]}
    status = r.service_status("asr", colours=["blue", "green"], hosts=hosts,
                              servers_state=servers_state("asr", {"blue": 100}, hosts=FLEET), instances={"blue": found})
    assert status["already_live"] is False and status["live_reasons"] == ["node4: no instance"]


def test_summarise_instances_keeps_no_environment_and_names_the_drift() -> None:
    secret = "s3cr3t-token-value"  # noqa: S105 - a stand-in that must not come out again
    results = [
        {"item": {"service": "asr", "colour": "blue", "host": "localhost"}, "exists": True, "container": {
            "Config": {"Image": "reg/xlerobot/asr@sha256:old", "Labels": {"io.xlerobot.version": "1.0.0",
                                                                         "io.xlerobot.config": "cfg-1"},
                       "Env": [f"XL_GATEWAY_API_KEY={secret}"]}, "State": {"Running": True}, "RestartCount": 2}},
        {"item": {"service": "asr", "colour": "green", "host": "localhost"}, "exists": False},
        {"item": {"service": "asr", "colour": "green", "host": "node5"}, "unreachable": True, "msg": "ssh: timeout"},
    ]
    summary = r.summarise_instances(results, targets={"asr": target("asr")}, digests={"asr": "cfg-1"},
                                    secret_env={"XL_GATEWAY_API_KEY": secret})
    assert secret not in json.dumps(summary)
    blue = summary["asr"]["blue"]["localhost"]
    assert blue["version"] == "1.0.0" and blue["restart_count"] == 2 and blue["digest"] == "sha256:old"
    assert blue["drift"] == "localhost: runs image reg/xlerobot/asr@sha256:old"
    assert summary["asr"]["green"]["localhost"]["drift"] == "localhost: no instance"
    assert summary["asr"]["green"]["node5"]["unreachable"] and summary["asr"]["green"]["node5"]["why"] == "ssh: timeout"


# --- steps, rounds and analysis ---------------------------------------------------------------------------------

def test_steps_become_stages_of_beats_and_end_at_100() -> None:
    stages = r.parse_steps(CANARY_STEPS)
    assert [stage["setWeight"] for stage in stages] == [5, 20, 50, 100]
    assert stages[0]["beats"] == [{"pause": 10.0, "analysis": {}, "step": 3}] and stages[-1]["beats"] == []
    assert r.parse_steps([{"setWeight": 30}, {"pause": "2m"}])[-1] == {"setWeight": 100, "beats": []}
    two = r.parse_steps([{"setWeight": 10}, {"analysis": {"count": 1}}, {"pause": 5}, {"analysis": {}}])
    assert two[0]["beats"] == [{"pause": 0.0, "analysis": {"count": 1}, "step": 2},
                               {"pause": 5.0, "analysis": {}, "step": 4}]


@pytest.mark.parametrize("steps, message", [
    ([], "non-empty list"),
    ([{"setWeight": 120}], "whole percentage 0..100"),
    ([{"setWeight": 5}, {"pause": {}}], "pause needs a duration"),
    ([{"promote": True}], "must be one of"),
    ([{"setWeight": 5, "pause": 3}], "must be one of"),
])
def test_bad_steps_are_named(steps: list, message: str) -> None:
    with pytest.raises(r.ReleaseError, match=message):
        r.parse_steps(steps, "services.asr.canary.steps")


def test_rounds_align_every_service_at_its_end_and_share_one_pause() -> None:
    stages = {"asr": r.parse_steps(CANARY_STEPS),
              "multimodal": r.parse_steps(CATALOGUE["multimodal"]["canary"]["steps"]),
              "new": [{"setWeight": 100, "beats": []}]}
    rounds = r.plan_rounds(stages, first_release=["new"])
    assert [round_["weights"] for round_ in rounds] == [{"asr": 5, "new": 100}, {"asr": 20},
                                                        {"asr": 50, "multimodal": 20}, {"asr": 100, "multimodal": 100}]
    assert rounds[2]["beats"] == [{"pause": 10.0, "analyses": {"asr": {}, "multimodal": {"window": "3m"}},
                                   "steps": {"asr": 9, "multimodal": 3}}]


def test_analysis_layers_merge_metrics_by_name() -> None:
    layered = r.layered_analysis(DEFAULT_ANALYSIS, CATALOGUE["tts"]["canary"]["analysis"], {"window": "30s"})
    assert layered["window"] == "30s" and layered["count"] == 3
    assert [m["name"] for m in layered["metrics"]] == ["error-ratio", "p95-latency"]
    assert layered["metrics"][1] == {"name": "p95-latency", "query": "q2",
                                     "successCondition": "result <= baseline + 0.25"}
    assert DEFAULT_ANALYSIS["metrics"][1]["successCondition"] == "result <= baseline * 1.3 + 0.3", "layers unchanged"
    with pytest.raises(r.ReleaseError, match="needs a name"):
        r.layered_analysis({"metrics": [{"query": "x"}]})


def test_a_service_that_calls_others_is_gated_after_them() -> None:
    readback = "http://127.0.0.1:18080/v1/audio/transcriptions"
    catalogue = {**CATALOGUE, "asr": {**CATALOGUE["asr"], "paths": ["/v1/audio/transcriptions"]},
                 "tts": {**CATALOGUE["tts"], "gates": [{"type": "speech", "text": "x"}]}}
    three = ["multimodal", "asr", "tts"]
    depends = r.gate_dependencies(three, catalogue, readback, [], "bluegreen")
    assert depends == {"multimodal": ["asr", "tts"], "asr": [], "tts": []}
    assert r.dependency_waves(three, depends) == {"multimodal": 1, "asr": 0, "tts": 0}
    assert r.gate_dependencies(three, catalogue, readback, [], "canary")["multimodal"] == []
    # A first release of speech recognition must be live before speech synthesis can be read back.
    first = r.gate_dependencies(three, catalogue, readback, ["asr"], "canary")
    assert first == {"multimodal": ["asr"], "asr": [], "tts": ["asr"]}
    assert r.dependency_waves(["multimodal"], {"multimodal": ["asr"]}) == {"multimodal": 0}
    with pytest.raises(r.ReleaseError, match="circle"):
        r.dependency_waves(["a", "b"], {"a": ["b"], "b": ["a"]})


# --- traffic ------------------------------------------------------------------------------------------------------

def test_the_traffic_planner() -> None:
    assert r.step_weights("asr", ["localhost"], ["blue", "green"], "green", 20) == {"asr_green": 20, "asr_blue": 80}
    assert r.restore_weights("asr", ["n1", "n2"], ["blue", "green"], "blue") == {
        "asr_blue_n1": 100, "asr_blue_n2": 100, "asr_green_n1": 0, "asr_green_n2": 0}
    assert r.drain_weights("asr", "blue", ["n2"], ["n1", "n2"]) == {"asr_blue_n2": 0}
    assert r.put_back_weights("asr", "blue", ["n2"], ["n1", "n2"], {"asr_blue_n2": 0}) == {"asr_blue_n2": 100}
    assert r.by_backend({"asr": {"asr_blue": 0}, "tts": {}}) == {"be_asr": {"asr_blue": 0}}
    with pytest.raises(r.ReleaseError, match="whole percentage"):
        r.step_weights("asr", ["h"], ["blue", "green"], "green", 101)


# --- rolling ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("serial, hosts, size", [("25%", 4, 1), ("50%", 4, 2), ("25%", 2, 1), ("2", 5, 2), (1, 4, 1)])
def test_batch_size(serial: Any, hosts: int, size: int) -> None:
    assert r.batch_size(serial, hosts) == size


def test_rolling_settings_and_budget() -> None:
    assert r.rolling_settings({"rolling": {"serial": 1, "max_fail_percentage": 25}}) == {
        "serial": "1", "max_fail_percentage": 25}
    assert r.rolling_settings({"rolling": {"serial": 1}}, "50%", "10") == {"serial": "50%", "max_fail_percentage": 10}
    assert r.rolling_settings({}) == {"serial": "25%", "max_fail_percentage": 0}
    assert r.within_budget(1, 25, 4) and not r.within_budget(2, 25, 4) and not r.within_budget(1, 0, 5)
    with pytest.raises(r.ReleaseError, match="count"):
        r.batch_size("a lot", 4)
    assert r.rolling_batches(["a", "b", "c"], 2) == [["a", "b"], ["c"]]


def rolling_observed(unreachable: tuple[str, ...] = ()) -> dict:
    blue = {host: instance("1.0.0", "sha256:old", drift=f"{host}: runs image old") for host in FLEET}
    for host in unreachable:
        blue[host] = {**blue[host], "unreachable": True, "why": "timeout", "drift": f"{host}: unreachable"}
    return {"servers": {"be_asr": servers_state("asr", {"blue": 100}, hosts=FLEET)},
            "instances": {"asr": {"blue": blue}}, "record": {}}


def test_rolling_plans_batches_over_the_hosts_that_differ() -> None:
    plan = r.plan_deploy(deploy_request(["asr"], "rolling", FLEET), rolling_observed())
    entry = plan["services"]["asr"]
    assert entry["action"] == "rolling" and entry["rolling"]["batches"] == [["node1"], ["node2"], ["node3"], ["node4"]]
    assert [round_["batch"] for round_ in plan["rounds"]] == [{"asr": ["node1"]}, {"asr": ["node2"]},
                                                             {"asr": ["node3"]}, {"asr": ["node4"]}]
    assert plan["start"] == [] and "preflight_failure" not in entry
    refused = r.plan_deploy(deploy_request(["asr"], "rolling", FLEET), rolling_observed(("node4",)))
    assert refused["services"]["asr"]["preflight_failure"] == (
        "1 of 4 host(s) cannot be reached (max_fail_percentage 0): node4; no host was touched")


def test_a_rolling_batch_beyond_the_budget_fails_and_the_abort_puts_every_touched_host_back() -> None:
    request = deploy_request(["asr"], "rolling", FLEET, rolling_max_fail_percentage="25")
    plan = r.plan_deploy(request, rolling_observed())
    progress = r.new_progress(plan, 1000.0)
    failing = [{"service": "asr", "host": "node1", "passed": False, "msg": "gate 'x' failed", "results": []}]
    progress = r.note_rolling_gates(progress, plan, 0, {"asr": ["node1"]}, {}, failing, 1001.0)
    assert progress["asr"]["failure"] is None, "1 of 4 is within 25 %"
    assert r.rolling_put_back(plan, progress, 0)[0]["image"] == "reg/xlerobot/asr@sha256:old"
    progress = r.note_rolling_current(progress, {"asr": ["node2"]})
    failing[0]["host"] = "node2"
    progress = r.note_rolling_gates(progress, plan, 1, {"asr": ["node2"]}, {}, failing, 1002.0)
    assert progress["asr"]["failure"].startswith("2 of 4 host(s) failed (max_fail_percentage 25)")
    assert progress["asr"]["step"] == "batch 2/4 (node2)"
    assert r.abort_weights(plan, ["asr"]) == {}, "a drained batch stays out until its hosts are restored"
    restore = r.abort_instances(plan, progress, ["asr"])["restore"]
    assert [item["host"] for item in restore] == ["node2"]
    progress = r.note_abort(progress, plan, ["asr"], frozen=False, traffic=None, reason="", now=1003.0)
    message = r.failure_messages(plan, progress)[0]
    assert "rolling deploy of asr 1.1.0 aborted at step 'batch 2/4 (node2)'" in message
    assert "node1, node2 are back on 1.0.0; every blue server takes traffic again." in message


# --- deploy plans --------------------------------------------------------------------------------------------------

def test_bluegreen_plans_every_service_in_one_pass_in_dependency_waves() -> None:
    services = ["asr", "tts", "multimodal"]
    plan = r.plan_deploy(deploy_request(services), live_on_blue(services))
    assert plan["todo"] == services and plan["refusals"] == []
    assert [(item["service"], item["colour"]) for item in plan["start"]] == [
        ("asr", "green"), ("tts", "green"), ("multimodal", "green")]
    assert [(round_["gate"], round_["weights"]) for round_ in plan["rounds"]] == [
        (["asr", "tts"], {"asr": 100, "tts": 100}), (["multimodal"], {"multimodal": 100})]
    gate = plan["services"]["asr"]["gates"][0]
    assert gate["url"] == "http://127.0.0.1:18102" and gate["gates"][2]["audio"].startswith("/g/")
    assert gate["context"] == {"strategy": "bluegreen", "version": "1.1.0", "colour": "green", "host": "localhost"}
    assert plan["services"]["asr"]["restore"] == {"asr_blue": 100, "asr_green": 0}


def test_a_warm_idle_colour_is_reused_and_an_already_live_service_is_left_alone() -> None:
    observed = live_on_blue(["asr"], idle=instance("1.1.0", "sha256:new"))
    observed["instances"]["tts"] = {"blue": {"localhost": instance("1.1.0", "sha256:new", "tts")}}
    observed["servers"]["be_tts"] = servers_state("tts", {"blue": 100})
    plan = r.plan_deploy(deploy_request(["asr", "tts"]), observed)
    assert plan["services"]["asr"]["action"] == "reuse" and plan["start"] == []
    assert plan["services"]["tts"]["action"] == "none" and plan["todo"] == ["asr"]
    assert "tts 1.1.0 (sha256:new) is already live on blue; nothing to do." in r.summary_lines(plan)


def test_a_redeploy_of_the_live_version_says_what_made_its_instances_not_the_target() -> None:
    observed = live_on_blue(["asr"])
    observed["instances"]["asr"]["blue"]["localhost"] = instance(
        "1.1.0", "sha256:new", drift="localhost: started with settings cfg-old, the configuration asks for cfg-new")
    plan = r.plan_deploy(deploy_request(["asr"]), observed)
    assert plan["services"]["asr"]["action"] == "start"
    [line] = r.summary_lines(plan, check_mode=True)
    assert line.startswith("asr 1.1.0: would start green instances on localhost")
    assert line.endswith("(the live instances are not the target: localhost: started with settings cfg-old, the "
                         "configuration asks for cfg-new)")
    # An upgrade needs no such words: the version says it.
    upgrade = r.plan_deploy(deploy_request(["asr"]), live_on_blue(["asr"]))
    assert "not the target" not in r.summary_lines(upgrade, check_mode=True)[0]


def test_split_traffic_refuses_the_whole_run_before_anything_changes() -> None:
    observed = live_on_blue(["asr", "tts"])
    observed["servers"]["be_tts"] = servers_state("tts", {"blue": 75, "green": 25})
    plan = r.plan_deploy(deploy_request(["asr", "tts"]), observed)
    assert plan["refusals"] and "service tts: both colours take traffic" in plan["refusals"][0]


def test_a_canary_of_four_services_advances_together() -> None:
    services = ["asr", "tts", "llm", "multimodal"]
    plan = r.plan_deploy(deploy_request(services, "canary"), live_on_blue(services))
    assert plan["rounds"][0]["gate"] == services, "every service gated together"
    assert [round_["weights"] for round_ in plan["rounds"]] == [
        {"asr": 5, "tts": 5, "llm": 5}, {"asr": 20, "tts": 20, "llm": 20},
        {"asr": 50, "tts": 50, "llm": 50, "multimodal": 20}, {"asr": 100, "tts": 100, "llm": 100, "multimodal": 100}]
    assert [beat["pause"] for round_ in plan["rounds"] for beat in round_["beats"]] == [10.0, 10.0, 10.0]
    progress = r.new_progress(plan, 1000.0)
    analyses = r.beat_analyses(plan, progress, plan["rounds"][2]["beats"][0], DEFAULT_ANALYSIS, CATALOGUE)
    assert [(a["service"], a["canary"], a["baseline"], a["window"]) for a in analyses] == [
        ("asr", "green", "blue", "1m"), ("tts", "green", "blue", "1m"), ("llm", "green", "blue", "1m"),
        ("multimodal", "green", "blue", "3m")]
    assert analyses[1]["metrics"][1]["successCondition"] == "result <= baseline + 0.25"


# --- the progress: each service's own, and the abort -----------------------------------------------------------

def test_a_second_service_failing_its_gates_keeps_its_own_record() -> None:
    services = ["asr", "tts", "llm"]
    plan = r.plan_deploy(deploy_request(services), live_on_blue(services))
    progress = r.new_progress(plan, 1000.0)
    results = [{"service": s, "host": "localhost", "passed": s != "tts",
                "results": [{"name": f"{s}-gate", "passed": s != "tts"}],
                **({"msg": "gate 'readiness' failed for service tts"} if s == "tts" else {})} for s in services]
    progress = r.note_gates(progress, results)
    assert r.failed(progress) == ["tts"]
    assert [g["name"] for g in progress["asr"]["gates"]] == ["asr-gate"]
    assert [g["name"] for g in progress["tts"]["gates"]] == ["tts-gate"]
    # abort_scope=run: every service returns; the others name the one that failed.
    run_scope = r.abort_services(plan, progress, "run")
    assert run_scope == services
    assert r.by_backend(r.abort_weights(plan, run_scope)) == {
        "be_asr": {"asr_blue": 100, "asr_green": 0}, "be_tts": {"tts_blue": 100, "tts_green": 0},
        "be_llm": {"llm_blue": 100, "llm_green": 0}}
    aborted = r.note_abort(progress, plan, run_scope, frozen=False, traffic=None, reason="", now=1001.0)
    assert aborted["asr"]["failure"].startswith("the run was aborted because tts failed")
    record = r.run_record(plan, aborted, environment="test", started_at="x", now=1002.0, scale_down_delay=300)
    assert [e["result"] for e in record["events"]] == ["aborted"] * 3 and record["live"] == {}
    assert [e["gates"][0]["name"] for e in record["events"]] == ["asr-gate", "tts-gate", "llm-gate"]
    # abort_scope=service: only tts returns; asr and llm carry on and go live.
    only = r.abort_services(plan, progress, "service")
    assert only == ["tts"]
    progress = r.note_abort(progress, plan, only, frozen=False, traffic=None, reason="", now=1001.0)
    assert r.active(plan, progress) == ["asr", "llm"]
    assert r.round_weights(plan, progress, plan["rounds"][0]) == {
        "asr": {"asr_green": 100, "asr_blue": 0}, "llm": {"llm_green": 100, "llm_blue": 0}}
    progress = r.note_weights(progress, plan["rounds"][0], {"backends": {
        "be_asr": {"weights": {"asr_blue": 0, "asr_green": 100}}, "be_llm": {"weights": {"llm_blue": 0,
                                                                                        "llm_green": 100}}}},
        ["asr", "llm"], 1002.0)
    record = r.run_record(plan, progress, environment="test", started_at="x", now=1003.0, scale_down_delay=300)
    assert {e["service"]: e["result"] for e in record["events"]} == {"asr": "success", "tts": "aborted",
                                                                     "llm": "success"}
    assert set(record["live"]) == {"asr", "llm"} and record["live"]["asr"]["colour"] == "green"
    assert record["events"][1]["steps"] == [], "tts's record holds no other service's timeline"
    assert record["events"][0]["steps"][0]["weights"] == {"asr_blue": 0, "asr_green": 100}
    assert r.failure_messages(plan, progress) == [
        "bluegreen deploy of tts 1.1.0 aborted at step 'gates': gate 'readiness' failed for service tts. Traffic "
        "stays on blue (1.0.0); the green instance was removed."]


def test_a_failed_analysis_names_the_step_of_the_service_own_list() -> None:
    plan = r.plan_deploy(deploy_request(["asr"], "canary"), live_on_blue(["asr"]))
    beat = next(beat for round_ in plan["rounds"] for beat in round_["beats"] if beat["analyses"])
    assert beat["steps"] == {"asr": 3}
    results = xl_engine.xl_release_results([{"service": "asr", "phase": "FAILED", "message": "error-ratio failed"}],
                                           beat, 1)
    progress = r.note_analyses(r.new_progress(plan, 1000.0), results, 1001.0)
    assert progress["asr"]["step"] == "step 3 (analysis, round 1)"
    aborted = r.note_abort(progress, plan, ["asr"], frozen=False, traffic=None, reason="", now=1002.0)
    assert r.failure_messages(plan, aborted)[0].startswith(
        "canary deploy of asr 1.1.0 aborted at step 'step 3 (analysis, round 1)': canary analysis of asr: FAILED: "
        "error-ratio failed.")


def test_an_abort_records_the_returned_traffic_in_the_timeline_and_a_freeze_the_weights_left() -> None:
    plan = r.plan_deploy(deploy_request(["asr"], "canary"), live_on_blue(["asr"]))
    progress = r.note_failure(r.new_progress(plan, 1000.0), ["asr"], "analysis at round 1", "error-ratio failed")
    traffic = {"backends": {"be_asr": {"changed": True, "weights": {"asr_blue": 100, "asr_green": 0}}}}
    aborted = r.note_abort(progress, plan, ["asr"], frozen=False, traffic=traffic, reason="", now=1005.0)
    assert aborted["asr"]["timeline"][-1]["weights"] == {"asr_blue": 100, "asr_green": 0}
    assert aborted["asr"]["traffic_restored"] is True
    frozen = r.note_abort(progress, plan, ["asr"], frozen=True, traffic=None, reason="", now=1005.0,
                          weights_left={"be_asr": {"weights": {"asr_blue": 95, "asr_green": 5}}})
    event = r.run_record(plan, frozen, environment="t", started_at="x", now=1006.0, scale_down_delay=0)["events"][0]
    assert event["result"] == "frozen" and event["weights_left"] == {"asr_blue": 95, "asr_green": 5}
    assert "Frozen (rollback=false)" in r.failure_messages(plan, frozen)[0]
    assert r.retire_now(plan, frozen, 0) == [], "a failed service keeps its live colour"


def test_restarts_since_the_gates_are_a_crash() -> None:
    plan = r.plan_deploy(deploy_request(["asr"], "canary"), live_on_blue(["asr"]))
    baseline = r.restart_baseline([{"item": {"service": "asr", "host": "localhost"}, "exists": True,
                                    "container": {"RestartCount": 0}}])
    restarted = r.restarted_instances(plan, baseline, [{"item": {"service": "asr", "host": "localhost"},
                                                        "exists": True, "container": {"RestartCount": 2}}])
    assert restarted == {"asr": ["localhost (restarted 2 time(s))"]}
    progress = r.note_restarts(r.new_progress(plan, 1.0), plan, restarted, "xlt")
    assert "instance xlt-asr-green of version 1.1.0" in progress["asr"]["failure"]
    assert "crashed while taking traffic" in progress["asr"]["failure"]


# --- rollback -----------------------------------------------------------------------------------------------------

def rollback_request(services: list[str], **extra: Any) -> dict:
    return {**deploy_request(services), "entry": "rollback", "targets": {}, "registry": "reg", **extra}


def rollback_observed(services: list[str], up: bool = True) -> dict:
    record = {service: {"live": {"colour": "green", "version": "1.1.0", "digest": "sha256:new"},
                        "previous": {"colour": "blue", "version": "1.0.0", "digest": "sha256:old",
                                     "image": f"reg/xlerobot/{service}@sha256:old"}} for service in services}
    return {"servers": {r.backend(s): {**servers_state(s, {"green": 100}),
                                       **{n: {"weight": 0, "up": up, "maintenance": False}
                                          for n in r.servers(s, "blue", ["localhost"])}} for s in services},
            "record": record, "history": {}, "instances": None, "checks": None}


def test_rollback_checks_warm_colours_then_switches_them_in_one_batch() -> None:
    services = ["asr", "tts", "llm", "multimodal"]
    first = r.plan_rollback(rollback_request(services), rollback_observed(services))
    assert [check["service"] for check in first["checks"]] == services
    assert first["checks"][0]["gates"] == [{"name": "warm-version", "type": "version", "version": "1.0.0",
                                            "digest": "sha256:old", "timeout": 2}]
    assert {entry["action"] for entry in first["services"].values()} == {"check"}
    observed = {**rollback_observed(services), "checks": [{"service": s, "host": "localhost", "passed": True}
                                                          for s in services]}
    plan = r.plan_rollback(rollback_request(services), observed)
    assert set(plan["fast"]) == set(services) and plan["start"] == [] and plan["rounds"] == []
    assert r.by_backend(plan["fast"])["be_asr"] == {"asr_blue": 100, "asr_green": 0}
    progress = r.new_progress(plan, 1.0)
    record = r.run_record(plan, progress, environment="t", started_at="x", now=2.0, scale_down_delay=300)
    event = record["events"][0]
    assert (event["action"], event["result"], event["reused_warm_instance"]) == ("rollback", "success", True)
    assert event["gates"] == [] and "gates_skipped" in event
    assert record["live"]["asr"] == {"colour": "blue", "version": "1.0.0", "digest": "sha256:old",
                                     "image": "reg/xlerobot/asr@sha256:old", "release": "r-new", "at": r.utc_text(2.0),
                                     "retire_previous_after": 302}


def test_a_warm_colour_that_does_not_answer_as_recorded_is_rolled_back_with_gates() -> None:
    observed = {**rollback_observed(["asr"]), "checks": [{"service": "asr", "passed": False,
                                                          "msg": "the instance answers version '0.9'"}]}
    plan = r.plan_rollback(rollback_request(["asr"]), observed)
    assert plan["services"]["asr"]["action"] == "deploy" and plan["deploy"]["asr"]["digest"] == "sha256:old"
    assert "answers version '0.9'" in plan["services"]["asr"]["why_gated"]
    observed["instances"] = {"asr": {"green": {"localhost": instance("1.1.0", "sha256:new", drift="x")}}}
    gated = r.plan_rollback(rollback_request(["asr"]), observed)
    assert gated["services"]["asr"]["action"] == "start" and gated["start"][0]["image"] == "reg/xlerobot/asr@sha256:old"
    assert gated["rounds"][0]["gate"] == ["asr"] and gated["todo"] == ["asr"]
    down = r.plan_rollback(rollback_request(["asr"]), rollback_observed(["asr"], up=False))
    assert down["checks"] == [] and "the warm colour is gone" in down["services"]["asr"]["why_gated"]


def test_rollback_refuses_with_nothing_to_return_to_and_restores_a_split() -> None:
    observed = rollback_observed(["asr", "tts"])
    del observed["record"]["tts"]["previous"]
    observed["servers"]["be_asr"] = servers_state("asr", {"blue": 40, "green": 60})
    plan = r.plan_rollback(rollback_request(["asr", "tts"], state_dir="/s"), observed)
    assert plan["refusals"] == ["service tts: no previous release recorded in /s; nothing was changed."]
    assert plan["services"]["asr"]["action"] == "restore" and plan["fast"]["asr"] == {"asr_green": 100, "asr_blue": 0}
    assert [item["colour"] for item in r.restore_removals(plan)] == ["blue"]
    named = r.plan_rollback(rollback_request(["asr"], to_version="0.5.0", state_dir="/s"), rollback_observed(["asr"]))
    assert "no successful release of version 0.5.0 in the history" in named["refusals"][0]


def test_restore_only_never_switches_to_an_older_release() -> None:
    plan = r.plan_rollback(rollback_request(["asr"], restore_only=True), rollback_observed(["asr"]))
    assert plan["todo"] == [] and plan["checks"] == []


# --- the abort request --------------------------------------------------------------------------------------------

def test_abort_requests_concern_only_their_release(tmp_path: Path) -> None:
    assert r.abort_requested(str(tmp_path), "r1") is None
    request = r.request_abort(str(tmp_path), "r1", "alice", "p95", now=0.0)
    assert request == {"release": "r1", "by": "alice", "reason": "p95", "at": "1970-01-01T00:00:00Z"}
    assert (tmp_path / r.ABORT_FILE).stat().st_mode & 0o777 == 0o600
    assert r.abort_requested(str(tmp_path), "r1") == request and r.abort_requested(str(tmp_path), "r2") is None
    assert r.abort_message(request) == "aborted by alice at 1970-01-01T00:00:00Z (playbooks/abort.yml): p95"
    assert r.clear_abort(str(tmp_path), keep_release="r1") is False
    assert r.clear_abort(str(tmp_path)) is True and r.abort_requested(str(tmp_path), "r1") is None


def test_the_traffic_guard_serialises_moves(tmp_path: Path) -> None:
    order: list[str] = []

    def hold() -> None:
        with r.traffic_guard(str(tmp_path)):
            order.append("first in")
            time.sleep(0.3)
            order.append("first out")

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.1)
    with r.traffic_guard(str(tmp_path)):
        order.append("second in")
    thread.join()
    assert order == ["first in", "first out", "second in"]


def test_the_lock_annotation_returns_every_service_of_the_run() -> None:
    services = ["asr", "tts"]
    plan = r.plan_deploy(deploy_request(services, "canary"), live_on_blue(services))
    annotation = r.run_annotation(copy.deepcopy(plan))
    assert annotation["services"] == services and annotation["strategy"] == "canary"
    assert annotation["restore"] == {"be_asr": {"asr_blue": 100, "asr_green": 0},
                                     "be_tts": {"tts_blue": 100, "tts_green": 0}}
    assert r.final_weights(plan) == {"be_asr": {"asr_green": 100, "asr_blue": 0},
                                     "be_tts": {"tts_green": 100, "tts_blue": 0}}


def test_a_first_release_that_other_gates_read_back_through_goes_live_first() -> None:
    catalogue = {**CATALOGUE, "asr": {**CATALOGUE["asr"], "paths": ["/v1/audio/transcriptions"]},
                 "tts": {**CATALOGUE["tts"], "gates": [{"name": "synthetic-speech", "type": "speech", "text": "x"}]}}
    empty = {"servers": {}, "instances": {}, "record": {}}
    first = r.plan_deploy({**deploy_request(["asr", "tts"]), "catalogue": catalogue}, empty)
    assert [(round_["gate"], round_["weights"]) for round_ in first["rounds"]] == [
        (["asr"], {"asr": 100}), (["tts"], {"tts": 100})]
    observed = live_on_blue(["tts"])
    canary = r.plan_deploy({**deploy_request(["asr", "tts"], "canary"), "catalogue": catalogue}, observed)
    assert [(round_.get("gate"), round_["weights"]) for round_ in canary["rounds"]] == [
        (["asr"], {"asr": 100}), (["tts"], {"tts": 5}), (None, {"tts": 20}), (None, {"tts": 50}),
        (None, {"tts": 100})]
    assert [round_["index"] for round_ in canary["rounds"]] == [0, 1, 2, 3, 4]


def test_a_live_colour_removed_from_every_host_is_a_first_release() -> None:
    # playbooks/teardown.yml removes the instances; HAProxy's persisted configuration still weighs blue at 100.
    catalogue = {**CATALOGUE, "asr": {**CATALOGUE["asr"], "paths": ["/v1/audio/transcriptions"]},
                 "tts": {**CATALOGUE["tts"], "gates": [{"name": "synthetic-speech", "type": "speech", "text": "x"}]}}
    gone = {"exists": False, "running": False, "unreachable": False, "drift": "localhost: no instance"}
    observed = {"servers": {r.backend(s): servers_state(s, {"blue": 100}, up=False) for s in ("asr", "tts")},
                "instances": {s: {"blue": {"localhost": gone}, "green": {"localhost": gone}} for s in ("asr", "tts")},
                "record": {}}
    status = r.service_status("asr", colours=["blue", "green"], hosts=["localhost"],
                              servers_state=observed["servers"]["be_asr"], instances=observed["instances"]["asr"])
    assert (status["state"], status["live_colour"], status["idle_colour"]) == ("new", "", "blue")
    assert status["live_reasons"] == ["no instance of blue, the colour HAProxy sends traffic to, on any host"]
    plan = r.plan_deploy({**deploy_request(["asr", "tts"]), "catalogue": catalogue}, observed)
    assert [(round_["gate"], round_["weights"]) for round_ in plan["rounds"]] == [
        (["asr"], {"asr": 100}), (["tts"], {"tts": 100})], "the read-back's judge goes live before tts is gated"
    # One host not reached, or not inspected, proves nothing: the colour stays live.
    unreached = {**gone, "unreachable": True, "drift": "localhost: unreachable"}
    kept = r.service_status("asr", colours=["blue", "green"], hosts=["localhost"],
                            servers_state=observed["servers"]["be_asr"], instances={"blue": {"localhost": unreached}})
    assert kept["state"] == "live" and kept["live_colour"] == "blue"
    assert r.service_status("asr", colours=["blue", "green"], hosts=["localhost"],
                            servers_state=observed["servers"]["be_asr"], instances={})["state"] == "live"
    progress = r.note_weights(r.new_progress(plan, 1000.0), plan["rounds"][0], {"backends": {}}, ["asr", "tts"], 1001.0)
    assert "asr 1.1.0 is live on blue; nothing was serving (no instance of blue, where HAProxy sent the traffic, " \
           "on any host)." in r.summary_lines(plan, progress, False, 300)
