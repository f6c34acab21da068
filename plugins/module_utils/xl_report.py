# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deploy reports: one per service of a run, written once after the run's traffic decisions.

A report is the service's recorded event (steps with weights, gates, analyses, the abort if there was one) plus
what Prometheus saw during the run: requests per colour and status, and p95 latency per colour. Only identities,
weights, timings and measurements go in, never a configuration value, so no secret can.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

_SERVICE = re.compile(r"^[a-z][a-z0-9]*$")


class ReportError(RuntimeError):
    """A report cannot be assembled from what it was given."""


def _seconds(text: str) -> float:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError) as exc:
        raise ReportError(f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ") from exc


def window(started_at: str, ended: float) -> str:
    """The range the observed figures cover: the run plus half a minute, at least a minute."""
    return f"{max(int(ended - _seconds(started_at)) + 30, 60)}s"


def observed_queries(service: str, span: str) -> dict[str, str]:
    if not _SERVICE.match(service):
        raise ReportError(f"service {service!r} is not a service name")
    selector = f'service="{service}",endpoint=~"/v1/.*"'
    return {
        "requests": f"sum by (colour, status) (increase(xl_http_requests_total{{{selector}}}[{span}])) > 0",
        "p95_seconds": ("histogram_quantile(0.95, sum by (colour, le) "
                        f"(rate(xl_http_request_duration_seconds_bucket{{{selector}}}[{span}])))"),
    }


def settle_query(services: Sequence[str], ended: float) -> str:
    """1 once Prometheus has scraped every instance of `services` after `ended`: traffic a switch moved is only
    in Prometheus after its next scrape of every instance."""
    names = "|".join(service for service in services if _SERVICE.match(service))
    return f'min(timestamp(up{{job="xlerobot-services",service=~"{names}"}})) > bool {int(ended)}'


def query(prometheus_url: str, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    url = f"{prometheus_url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            answer = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ReportError(f"Prometheus at {prometheus_url} did not answer: {exc}") from exc
    result = (answer.get("data") or {}).get("result")
    if answer.get("status") != "success" or not isinstance(result, list):
        raise ReportError(f"Prometheus at {prometheus_url} answered {json.dumps(answer)[:200]}")
    return result


def wait_settled(prometheus_url: str, services: Sequence[str], ended: float, timeout: float,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait (at most `timeout` s) until Prometheus has scraped every instance of `services` since `ended`; once
    for the whole run, not once per service. A Prometheus that does not answer, or scrapes none of these services
    (an environment without monitoring, or another environment's Prometheus), has nothing to wait for: False at
    once rather than the whole timeout on the run's critical path."""
    deadline = clock() + timeout
    while True:
        try:
            values = [int(float(item["value"][1])) for item in query(prometheus_url, settle_query(services, ended), 5)]
        except (ReportError, KeyError, IndexError, ValueError):
            return False
        if values == [1]:
            return True
        if values == [] or clock() >= deadline:
            return False
        sleep(1.0)


def assemble(event: Mapping[str, Any], prometheus_url: str, ended: float) -> dict[str, Any]:
    """The report of one service: its event and what Prometheus saw during the run (empty when it could not
    answer, with the reason)."""
    span = window(str(event["started_at"]), ended)
    observed: dict[str, Any] = {"window": span, "prometheus": prometheus_url, "requests": [], "p95_seconds": []}
    try:
        for name, promql in observed_queries(str(event["service"]), span).items():
            observed[name] = query(prometheus_url, promql)
    except ReportError as exc:
        observed["error"] = str(exc)
    return {**event, "observed": observed}


def _cell(value: Any) -> str:
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Mapping[str, Any], plot_name: str) -> str:
    """The report as Markdown: the outcome, the plot, gates, timeline, analyses and the traffic observed."""
    source, to = report.get("from") or {}, report.get("to") or {}
    lines = [
        f"# Deploy report: {report['service']} {report.get('version', '')} ({report.get('strategy', '')}, "
        f"{report.get('action', '')})",
        "",
        "| | |",
        "|---|---|",
        f"| result | **{report.get('result', '')}**"
        + (f" at {_cell(report['step'])}" if report.get("step") else "") + " |",
        f"| release | `{report.get('release', '')}` |",
        f"| environment | {report.get('environment', '')} |",
        f"| image | `{report.get('digest', '')}` |",
        f"| from | {source.get('colour') or 'nothing live'} {source.get('version', '')} |",
        f"| to | {to.get('colour', '')} {to.get('version', '')} |",
        f"| started / ended (UTC) | {report.get('started_at', '')} / {report.get('at', '')} |",
    ]
    if report.get("reason"):
        lines.append(f"| reason | {_cell(report['reason'])} |")
    lines += ["", f"![traffic weight and HTTP 5xx ratio per colour over the run]({plot_name})", "", "## Gates", ""]
    gates = list(report.get("gates") or [])
    if report.get("checks"):
        gates += list(report["checks"])
    if gates:
        lines += ["| gate | type | passed | measured | threshold | seconds | host |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {_cell(gate.get('name'))} | {_cell(gate.get('type'))} | "
                  f"{'yes' if gate.get('passed') else '**no**'} | {_cell(gate.get('measured'))} | "
                  f"{_cell(gate.get('threshold'))} | {_cell(gate.get('seconds'))} | {_cell(gate.get('host'))} |"
                  for gate in gates]
    else:
        lines.append(report.get("gates_skipped") or "No gate ran in this run.")
    lines += ["", "## Timeline", "", "| step | at | spec | weights | analysis |", "|---|---|---|---|---|"]
    for step in report.get("steps") or []:
        weights = ", ".join(f"{name}={weight}" for name, weight in sorted((step.get("weights") or {}).items()))
        lines.append(f"| {step.get('step', '')} | {step.get('at', '')} | `{json.dumps(step.get('spec'))}` | "
                     f"{weights} | {(step.get('analysis') or {}).get('phase', '')} |")
    for step in report.get("steps") or []:
        analysis = step.get("analysis") or {}
        if not analysis.get("measurements"):
            continue
        lines += ["", f"### Analysis at step {step.get('step')}: {analysis.get('phase', '')}", "",
                  "| metric | at | new colour | old colour | outcome | condition |", "|---|---|---|---|---|---|"]
        lines += [f"| {_cell(m.get('metric'))} | {_cell(m.get('at'))} | {_cell(m.get('canary_value'))} | "
                  f"{_cell(m.get('baseline_value'))} | {_cell(m.get('outcome'))} | `{_cell(m.get('condition'))}` |"
                  for m in analysis["measurements"]]
    observed = report.get("observed") or {}
    lines += ["", f"## Traffic as Prometheus saw it (last {observed.get('window', '')})", ""]
    if observed.get("error"):
        lines.append(f"Not available: {_cell(observed['error'])}")
    lines += ["| colour | status | requests |", "|---|---|---|"]
    def colour_status(series: Mapping[str, Any]) -> tuple[str, str]:
        metric = series.get("metric") or {}
        return metric.get("colour", ""), metric.get("status", "")

    requests = sorted(observed.get("requests") or [], key=colour_status)
    for series in requests:
        metric = series.get("metric") or {}
        lines.append(f"| {metric.get('colour', '')} | {metric.get('status', '')} | "
                     f"{round(float(series['value'][1]), 1)} |")
    lines += ["", "| colour | p95 latency (s) |", "|---|---|"]
    for series in sorted(observed.get("p95_seconds") or [], key=lambda s: (s.get("metric") or {}).get("colour", "")):
        lines.append(f"| {(series.get('metric') or {}).get('colour', '')} | {series['value'][1]} |")
    return "\n".join(lines) + "\n"
