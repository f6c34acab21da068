"""xl_analysis and the canary_analysis module: conditions, placeholders, measurements and whole analyses.

Analyses run against a small fake Prometheus on 127.0.0.1 (tests.support.servers.FakePrometheus) with an injected
clock and sleep, so count=3 interval=10 takes no time. The module test runs the real module through `ansible`.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import xl_analysis as analysis

from tests.support import ansible_cli
from tests.support.servers import FakePrometheus, free_port

REPO = Path(__file__).resolve().parents[2]
# The project venv: the checkout's own, else the one running these tests (a worktree shares the main venv).
VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else Path(sys.executable).parent

ERROR_RATIO = ('sum(rate(xl_http_requests_total{service="$service",colour="$colour",endpoint=~"/v1/.*",'
               'status=~"5.."}[$window])) / sum(rate(xl_http_requests_total{service="$service",colour="$colour",'
               'endpoint=~"/v1/.*"}[$window]))')
P95 = ('histogram_quantile(0.95, sum by (le) (rate(xl_http_request_duration_seconds_bucket{service="$service",'
       'colour="$colour"}[$window])))')


def rendered(template: str, colour: str, service: str = "asr", window: str = "1m") -> str:
    return analysis.render_query(template, {"service": service, "colour": colour, "window": window})


class FakeClock:
    """Wall-clock seconds that only move when the analysis sleeps."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run(prom: FakePrometheus, metrics: list[dict[str, Any]], clock: FakeClock | None = None,
        **kwargs: Any) -> dict[str, Any]:
    clock = clock or FakeClock()
    options: dict[str, Any] = {"service": "asr", "canary": "green", "baseline": "blue", "window": "1m",
                               "count": 3, "interval_s": 10.0, **kwargs}
    return analysis.run_analysis(prom.url, metrics, clock=clock, sleep=clock.sleep, **options)


def error_ratio(**extra: Any) -> dict[str, Any]:
    return {"name": "error-ratio", "query": ERROR_RATIO, "successCondition": "result <= 0.05", **extra}


# --- the condition language -----------------------------------------------------------------------------------

@pytest.mark.parametrize("condition, result, baseline, expected", [
    ("result <= 0.05", 0.01, None, True),
    ("result <= 0.05", 0.06, None, False),
    ("result <= baseline * 1.2 + 0.1", 1.2, 1.0, True),
    ("result <= baseline * 1.2 + 0.1", 1.8, 1.0, False),
    ("result < 3.0 and result <= baseline * 1.5", 2.0, 1.5, True),
    ("result < 3.0 and result <= baseline * 1.5", 3.5, 3.0, False),
    ("result > 10 or result == 0", 0.0, None, True),
    ("not (result > 0.5)", 0.2, None, True),
    ("0 <= result < 1e-3", 0.0005, None, True),
    ("0 <= result < 1e-3", 0.002, None, False),
    ("(result - baseline) / baseline <= 0.2", 1.1, 1.0, True),
    ("-result >= -1", 0.5, None, True),
    ("result != 7", 7.0, None, False),
])
def test_conditions_evaluate(condition: str, result: float, baseline: float | None, expected: bool) -> None:
    assert analysis.evaluate_condition(condition, result, baseline) is expected


@pytest.mark.parametrize("condition, message", [
    ("__import__('os').system('true') == 0", r"Call .* is not allowed"),
    ("__import__ < 1", r"the name '__import__' is not allowed"),
    ("result.real < 1", r"Attribute .* is not allowed"),
    ("result.__class__ == 1", r"Attribute .* is not allowed"),
    ("abs(result) < 1", r"Call .* is not allowed"),
    ("result < 'a'", r"the constant 'a' is not allowed"),
    ("'result' == 'result'", r"the constant 'result' is not allowed"),
    ("result < True", r"the constant True is not allowed"),
    ("result ** 2 < 1", r"the operator Pow is not allowed"),
    ("result // 2 < 1", r"the operator FloorDiv is not allowed"),
    ("result in [1, 2]", r"the operator In is not allowed"),
    ("[result][0] < 1", r"Subscript .* is not allowed"),
    ("(lambda: 1)() < 2", r"Call .* is not allowed"),
    ("result < 1 if result else result > 2", r"IfExp .* is not allowed"),
    ("(x := 1) < 2", r"NamedExpr .* is not allowed"),
    ("error_rate < 1", r"the name 'error_rate' is not allowed"),
    ("result", r"is a number, not a condition"),
    ("result * 2", r"is a number, not a condition"),
    ("(result < 1) + 1 < 3", r"'result < 1' is a condition where a number is expected"),
    ("result and result < 1", r"'result' is a number where a comparison is expected"),
    ("result <= 0.05; import os", r"is not a valid expression"),
    ("result <=", r"is not a valid expression"),
    ("", r"must be a non-empty string"),
])
def test_conditions_outside_the_language_are_refused(condition: str, message: str) -> None:
    with pytest.raises(analysis.AnalysisError, match=message) as error:
        analysis.parse_condition(condition)
    if condition:
        assert f"successCondition {condition!r}" in str(error.value)


def test_a_condition_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(analysis.AnalysisError, match="must be a non-empty string, got 5"):
        analysis.parse_condition(5)


def test_baseline_in_a_condition_needs_a_baseline_value() -> None:
    with pytest.raises(analysis.AnalysisError, match="uses baseline but no baseline value"):
        analysis.evaluate_condition("result <= baseline", 1.0)


# --- placeholders and specs -----------------------------------------------------------------------------------

def test_placeholders_are_substituted_and_promql_braces_left_alone() -> None:
    query = analysis.render_query('sum(rate(x{service="$service",colour="${colour}",e=~"/v1/.*$"}[$window])) > $$1',
                                  {"service": "asr", "colour": "green", "window": "2m"})
    assert query == 'sum(rate(x{service="asr",colour="green",e=~"/v1/.*$"}[2m])) > $1'
    assert rendered(ERROR_RATIO, "blue").count('colour="blue"') == 2
    assert "$" not in rendered(ERROR_RATIO, "blue")


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(analysis.AnalysisError, match=r"unknown placeholder \$color .*known: \$service, \$colour"):
        analysis.render_query('x{colour="$color"}', {"service": "asr", "colour": "green", "window": "1m"})


@pytest.mark.parametrize("metrics, baseline, message", [
    ([], "blue", "at least one metric"),
    (["result < 1"], "blue", r"metrics\[0\] must be a mapping"),
    ([{"query": "up", "successCondition": "result > 0"}], "blue", r"metrics\[0\] needs 'name'"),
    ([{"name": "a", "successCondition": "result > 0"}], "blue", r"metrics\[0\] \(a\) needs 'query'"),
    ([{"name": "a", "query": "up", "successCondition": "result > 0"}, {"name": "b", "query": "up"}], "blue",
     r"metrics\[1\] \(b\) needs 'successCondition'"),
    ([{"name": "a", "query": "up", "successCondition": "result.x > 0"}], "blue",
     r"metrics\[0\] \(a\): successCondition 'result.x > 0': Attribute"),
    ([{"name": "a", "query": "up", "successCondition": "result > 0", "failurelimit": 1}], "blue",
     r"metrics\[0\] \(a\): unknown key\(s\) failurelimit"),
    ([{"name": "a", "query": "up", "successCondition": "result > 0", "failureLimit": -1}], "blue",
     r"metrics\[0\] \(a\)\.failureLimit must be a whole number >= 0"),
    ([{"name": "a", "query": "up", "successCondition": "result > 0", "inconclusiveLimit": "2"}], "blue",
     r"metrics\[0\] \(a\)\.inconclusiveLimit must be a whole number"),
    ([{"name": "a", "query": "up{c=\"$colur\"}", "successCondition": "result > 0"}], "blue",
     r"metrics\[0\] \(a\): unknown placeholder \$colur"),
    ([{"name": "a", "query": "up", "successCondition": "result > 0"}] * 2, "blue",
     r"metrics\[1\] \(a\): the name 'a' is used twice"),
    ([{"name": "a", "query": "up", "successCondition": "result <= baseline"}], None,
     r"metrics\[0\] \(a\): .* compares with the baseline, but no baseline colour"),
])
def test_bad_metric_specs_are_named(metrics: list[Any], baseline: str | None, message: str) -> None:
    with pytest.raises(analysis.AnalysisError, match=message):
        analysis.validate_metrics(metrics, baseline)


@pytest.mark.parametrize("target, message", [
    ({"service": 'asr"} or vector(1) #'}, "service .* must be a plain label value"),
    ({"canary": "blue"}, "canary and baseline are both 'blue'"),
    ({"window": "5 minutes"}, "must be a Prometheus duration"),
    ({"count": 0}, "count must be a whole number >= 1"),
    ({"interval_s": -1.0}, "interval must be >= 0"),
])
def test_bad_targets_are_refused(target: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {"service": "asr", "canary": "green", "baseline": "blue", "window": "1m", "count": 3,
                            "interval_s": 10.0, **target}
    with pytest.raises(analysis.AnalysisError, match=message):
        analysis.validate_target(**args)


# --- Prometheus -----------------------------------------------------------------------------------------------

def test_query_returns_labels_and_values_with_prometheus_spellings() -> None:
    with FakePrometheus() as prom:
        prom.answer("one", 0.25)
        prom.answer("specials", ["NaN", "+Inf", "-Inf"])
        assert analysis.query_prometheus(prom.url, "one") == [({}, 0.25)]
        values = [value for _, value in analysis.query_prometheus(prom.url + "/", "specials")]
        assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf
        assert analysis.query_prometheus(prom.url, "absent") == []
    assert prom.queries == ["one", "specials", "absent"]


def test_unreachable_prometheus_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(analysis.AnalysisError, match=re.escape(f"Prometheus {url}/api/v1/query cannot be reached")):
        analysis.query_prometheus(url, "up", timeout=2)


def test_prometheus_error_answer_names_the_url_and_reason() -> None:
    with FakePrometheus() as prom:
        prom.status = 503
        with pytest.raises(analysis.AnalysisError, match=re.escape(f"Prometheus {prom.url}/api/v1/query answered "
                                                                   f"HTTP 503: fake failure (query: up)")):
            analysis.query_prometheus(prom.url, "up")


# --- analyses -------------------------------------------------------------------------------------------------

def test_healthy_canary_passes_without_sleeping() -> None:
    clock = FakeClock()
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), 0.01)
        prom.answer(rendered(P95, "green"), 1.1)
        prom.answer(rendered(P95, "blue"), 1.0)
        result = run(prom, [error_ratio(), {"name": "p95", "query": P95,
                                            "successCondition": "result < 3.0 and result <= baseline * 1.2"}],
                     clock=clock)
    assert result["phase"] == analysis.SUCCESSFUL, result["message"]
    assert clock.sleeps == [10.0, 10.0]
    assert [m["metric"] for m in result["measurements"]] == ["error-ratio", "p95"] * 3
    assert all(m["outcome"] == analysis.SUCCESSFUL for m in result["measurements"])
    first, second = result["measurements"][:2]
    assert first == {"metric": "error-ratio", "at": "2027-01-15T08:00:00Z", "canary_value": 0.01,
                     "baseline_value": None, "outcome": "SUCCESSFUL", "condition": "result <= 0.05"}
    assert second["baseline_value"] == 1.0 and second["canary_value"] == 1.1
    assert result["measurements"][4]["at"] == "2027-01-15T08:00:20Z"
    # The error-ratio condition does not mention baseline, so the baseline colour is never asked for it.
    assert rendered(ERROR_RATIO, "blue") not in prom.queries
    assert prom.queries.count(rendered(P95, "blue")) == 3


def test_sleeps_only_what_is_left_of_the_interval() -> None:
    clock = FakeClock()

    def slow_query(url: str, promql: str, timeout: float) -> list[tuple[dict[str, str], float]]:
        clock.now += 4.0
        return [({}, 0.0)]

    result = analysis.run_analysis("http://prometheus.invalid", [error_ratio()], "asr", "green", None, count=3,
                                   interval_s=10.0, clock=clock, sleep=clock.sleep, query=slow_query)
    assert result["phase"] == analysis.SUCCESSFUL
    assert clock.sleeps == [6.0, 6.0]


def test_failing_error_ratio_stops_at_the_first_failure_with_failure_limit_0() -> None:
    clock = FakeClock()
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), 0.12)
        result = run(prom, [error_ratio()], clock=clock)
    assert result["phase"] == analysis.FAILED
    assert [m["outcome"] for m in result["measurements"]] == ["FAILED"]
    assert clock.sleeps == []
    assert result["message"] == ("metric error-ratio failed: canary 0.12 does not meet 'result <= 0.05' "
                                 "(measurement 1 of 3); 1 failed measurement(s), failureLimit 0")


def test_failure_limit_1_tolerates_one_failure_and_fails_at_the_second() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), 0.12, 0.01, 0.09)
        result = run(prom, [error_ratio(failureLimit=1)], count=5)
    assert result["phase"] == analysis.FAILED
    assert [m["outcome"] for m in result["measurements"]] == ["FAILED", "SUCCESSFUL", "FAILED"]
    assert "(measurement 3 of 5); 2 failed measurement(s), failureLimit 1" in result["message"]


def test_one_failure_within_the_limit_still_passes() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), 0.12, 0.01)
        result = run(prom, [error_ratio(failureLimit=1)])
    assert result["phase"] == analysis.SUCCESSFUL
    assert "1 failed" in result["message"]


def test_no_data_is_inconclusive_after_the_limit_and_never_a_pass() -> None:
    with FakePrometheus() as prom:  # nothing answered: every query returns no series
        result = run(prom, [error_ratio()], count=5)
    assert result["phase"] == analysis.INCONCLUSIVE
    assert [m["outcome"] for m in result["measurements"]] == ["INCONCLUSIVE"] * 3  # default inconclusiveLimit 2
    assert result["measurements"][0]["reason"] == "no data for the canary (colour green)"
    assert result["measurements"][0]["canary_value"] is None
    assert result["message"] == ("metric error-ratio is inconclusive: no data for the canary (colour green) "
                                 "(canary no data vs 'result <= 0.05', measurement 3 of 5); 3 inconclusive "
                                 "measurement(s), inconclusiveLimit 2")


def test_no_data_within_the_limit_still_never_passes() -> None:
    with FakePrometheus() as prom:
        result = run(prom, [error_ratio()], count=2)
    assert result["phase"] == analysis.INCONCLUSIVE
    assert result["message"].startswith("no successful measurement of error-ratio in 2 round(s) "
                                        "(error-ratio: 0 failed, 2 inconclusive)")


def test_missing_data_at_the_start_is_tolerated() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), None, None, 0.0)
        result = run(prom, [error_ratio()], count=4)
    assert result["phase"] == analysis.SUCCESSFUL
    assert [m["outcome"] for m in result["measurements"]] == ["INCONCLUSIVE"] * 2 + ["SUCCESSFUL"] * 2


def test_nan_is_inconclusive_and_recorded_as_prometheus_spells_it() -> None:
    # 0/0: a colour that served no request in the window has a NaN error ratio.
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), "NaN")
        result = run(prom, [error_ratio(inconclusiveLimit=0)])
    assert result["phase"] == analysis.INCONCLUSIVE
    assert result["measurements"] == [{"metric": "error-ratio", "at": "2027-01-15T08:00:00Z", "canary_value": "NaN",
                                       "baseline_value": None, "outcome": "INCONCLUSIVE",
                                       "condition": "result <= 0.05",
                                       "reason": "the canary (colour green) value is NaN"}]
    assert "1 inconclusive measurement(s), inconclusiveLimit 0" in result["message"]
    json.dumps(result, allow_nan=False)  # the record is strict JSON


def test_infinite_baseline_is_inconclusive() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(P95, "green"), 1.0)
        prom.answer(rendered(P95, "blue"), "+Inf")
        result = run(prom, [{"name": "p95", "query": P95, "successCondition": "result <= baseline * 1.2",
                             "inconclusiveLimit": 0}])
    assert result["phase"] == analysis.INCONCLUSIVE
    assert result["measurements"][0]["reason"] == "the baseline (colour blue) value is +Inf"


def test_latency_regression_against_the_baseline_fails() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(P95, "green"), 1.8)
        prom.answer(rendered(P95, "blue"), 1.0)
        result = run(prom, [{"name": "p95-latency", "query": P95, "successCondition": "result <= baseline * 1.2"}])
    assert result["phase"] == analysis.FAILED
    measurement = result["measurements"][0]
    assert (measurement["canary_value"], measurement["baseline_value"]) == (1.8, 1.0)
    assert result["message"] == ("metric p95-latency failed: canary 1.8, baseline 1.0 does not meet "
                                 "'result <= baseline * 1.2' (measurement 1 of 3); 1 failed measurement(s), "
                                 "failureLimit 0")


def test_division_by_a_zero_baseline_is_inconclusive() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), 0.02)
        prom.answer(rendered(ERROR_RATIO, "blue"), 0.0)
        result = run(prom, [error_ratio(successCondition="result / baseline <= 2", inconclusiveLimit=0)])
    assert result["phase"] == analysis.INCONCLUSIVE
    assert result["measurements"][0]["reason"] == "the condition divides by zero"


def test_several_series_are_an_error() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), [0.01, 0.02])
        with pytest.raises(analysis.AnalysisError, match=r"metric error-ratio: the query for colour green returned "
                                                         r"2 series .* it must aggregate to one series"):
            run(prom, [error_ratio()])


def test_prometheus_going_away_mid_analysis_keeps_the_measurements() -> None:
    clock = FakeClock()
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), 0.01)
        url = prom.url

        def stop_after_first(seconds: float) -> None:
            clock.sleep(seconds)
            prom.server.shutdown()
            prom.server.server_close()

        with pytest.raises(analysis.AnalysisError, match=re.escape(f"Prometheus {url}/api/v1/query cannot be "
                                                                   f"reached")) as error:
            analysis.run_analysis(url, [error_ratio()], "asr", "green", "blue", count=3, interval_s=10.0,
                                  clock=clock, sleep=stop_after_first, timeout=2)
    assert [m["outcome"] for m in error.value.measurements] == ["SUCCESSFUL"]


# --- the module, run by ansible on localhost ------------------------------------------------------------------

def run_module(module: str, args: dict[str, Any], *options: str) -> dict[str, Any]:
    """Run the module on localhost through the real `ansible` CLI and return the host's result."""
    return ansible_cli.run_module(module, args, *options)


def test_module_passes_fails_with_the_result_and_validates_in_check_mode() -> None:
    with FakePrometheus() as prom:
        prom.answer(rendered(ERROR_RATIO, "green"), 0.01)
        prom.answer(rendered(P95, "green"), 1.8)
        prom.answer(rendered(P95, "blue"), 1.0)
        base = {"prometheus_url": prom.url, "service": "asr", "canary": "green", "baseline": "blue", "count": 2,
                "interval": 0.1}
        passed = run_module("canary_analysis", {**base, "metrics": [error_ratio()]})
        assert passed.get("failed") is not True, passed
        assert passed["changed"] is False
        assert passed["phase"] == "SUCCESSFUL"
        assert [m["canary_value"] for m in passed["measurements"]] == [0.01, 0.01]

        failed = run_module("canary_analysis", {**base, "metrics": [
            error_ratio(), {"name": "p95", "query": P95, "successCondition": "result <= baseline * 1.2"}]})
        assert failed.get("failed") is True, failed
        assert failed["changed"] is False
        assert failed["phase"] == "FAILED"
        assert failed["msg"].startswith("canary analysis of asr green: FAILED: metric p95 failed: canary 1.8, "
                                        "baseline 1.0 does not meet 'result <= baseline * 1.2'")
        assert [m["outcome"] for m in failed["measurements"]] == ["SUCCESSFUL", "FAILED"]

        asked = len(prom.queries)
        checked = run_module("canary_analysis", {**base, "metrics": [error_ratio()]}, "--check")
        assert checked.get("failed") is not True, checked
        assert checked["measurements"] == []
        bad = run_module("canary_analysis", {**base, "metrics": [error_ratio(successCondition="os.system(1)")]},
                         "--check")
        assert bad.get("failed") is True
        assert bad["msg"].startswith("canary analysis of asr green: metrics[0] (error-ratio): successCondition "
                                     "'os.system(1)': Call")
        assert len(prom.queries) == asked  # check mode sends no query
