"""xl_plot, xl_report and deploy_report: weight shares from the recorded steps, error ratios from a Prometheus range
query, a real PNG drawn with matplotlib, and the reports of a run (JSON, Markdown, PNG) written once for all its
services."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import xl_plot as plot
import xl_report

from tests.support import ansible_cli
from tests.support.servers import FakePrometheus, Prometheus, free_port

CANARY = {
    "service": "asr", "version": "1.1.0", "strategy": "canary", "action": "deploy", "result": "success",
    "from": {"colour": "blue", "version": "1.0.0"},
    "started_at": "2026-11-28T03:00:00Z", "at": "2026-11-28T03:02:00Z",
    "steps": [
        {"step": 1, "at": "2026-11-28T03:00:30Z", "weights": {"asr_green": 25, "asr_blue": 75}},
        {"step": 2, "at": "2026-11-28T03:00:40Z", "spec": {"pause": {"duration": 10}}},
        {"step": 3, "at": "2026-11-28T03:01:00Z", "weights": {"asr_green": 60, "asr_blue": 40}},
        {"step": 4, "at": "2026-11-28T03:01:30Z", "weights": {"asr_green": 100, "asr_blue": 0}},
    ],
}
START = plot.timestamp(CANARY["started_at"])


def test_weight_shares_follow_the_steps_from_the_old_colour() -> None:
    shares = plot.weight_shares(CANARY)
    assert [(t - START, v) for t, v in shares["green"]] == [(0, 0), (30, 25), (60, 60), (90, 100), (120, 100)]
    assert [v for _, v in shares["blue"]] == [100, 75, 40, 0, 0]


def test_weight_shares_of_a_first_release_on_several_hosts() -> None:
    report = {**CANARY, "from": {"colour": "", "version": ""},
              "steps": [{"at": "2026-11-28T03:01:00Z", "weights": {"asr_blue_node1": 100, "asr_blue_node2": 100,
                                                                    "asr_green_node1": 0, "asr_green_node2": 0}}]}
    shares = plot.weight_shares(report)
    assert [v for _, v in shares["blue"]] == [0, 100, 100]
    assert [v for _, v in shares["green"]] == [0, 0, 0]


def test_a_bad_time_is_named() -> None:
    with pytest.raises(plot.PlotError, match="'yesterday' is not YYYY-MM-DDTHH:MM:SSZ"):
        plot.weight_shares({**CANARY, "at": "yesterday"})


def test_parse_matrix_drops_nan_and_refuses_errors() -> None:
    answer = {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": {"colour": "green"}, "values": [[1.0, "0.5"], [2.0, "NaN"], [3.0, "0"]]}]}}
    assert plot.parse_matrix(answer) == {"green": [(1.0, 0.5), (3.0, 0.0)]}
    with pytest.raises(plot.PlotError, match="not a successful range answer"):
        plot.parse_matrix({"status": "error", "error": "bad query"})


def test_error_ratios_ask_prometheus_for_the_service_over_the_run() -> None:
    with FakePrometheus() as prometheus:
        query = plot.ERROR_RATIO.format(service="asr", window="15s")
        prometheus.ranges[query] = [{"metric": {"colour": "green"}, "values": [[START + 60, "0.3"]]}]
        errors = plot.error_ratios(prometheus.url, "asr", START, START + 120)
    assert errors == {"green": [(START + 60, 0.3)]}
    assert prometheus.queries == [query]
    with pytest.raises(plot.PlotError, match="did not answer"):
        plot.error_ratios(f"http://127.0.0.1:{free_port()}", "asr", START, START + 120, timeout=2)
    with pytest.raises(plot.PlotError, match="is not a service name"):
        plot.error_ratios("http://127.0.0.1:1", 'asr"}', START, START + 120)


def test_render_draws_a_png(tmp_path: Path) -> None:
    dest = tmp_path / "plot.png"
    errors = {"green": [(START + 30 + i, 0.3 * math.sin(i / 10) ** 2) for i in range(60)]}
    plot.render(plot.weight_shares(CANARY), errors, "asr 1.1.0 canary", str(dest))
    data = dest.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_module_writes_every_service_s_report_and_says_what_is_missing(tmp_path: Path) -> None:
    events = [{**CANARY, "release": "r1", "gates": [{"name": "readiness", "type": "readiness", "passed": True,
                                                     "measured": "HTTP 200", "host": "localhost"}]},
              {**CANARY, "service": "tts", "release": "r1", "result": "aborted", "step": "gates",
               "reason": "bad | voice", "gates": []}]
    args = {"events": events, "prometheus_url": f"http://127.0.0.1:{free_port()}", "dest_dir": str(tmp_path),
            "settle_timeout": 0}
    checked = ansible_cli.run_module("deploy_report", args, "--check", python=ansible_cli.CONTROLLER_PYTHON)
    assert checked["changed"] is False and not list(tmp_path.iterdir())
    result = ansible_cli.run_module("deploy_report", args, python=ansible_cli.CONTROLLER_PYTHON)
    assert result["changed"] is True, result
    assert sorted(Path(name).name for name in result["files"]) == [
        "r1-asr.json", "r1-asr.md", "r1-asr.png", "r1-tts.json", "r1-tts.md", "r1-tts.png"]
    assert "did not answer" in result["problems"]["asr"] and (tmp_path / "r1-asr.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r1-asr.png").read_bytes().startswith(b"\x89PNG")
    markdown = (tmp_path / "r1-asr.md").read_text()
    assert "| readiness | readiness | yes | HTTP 200 |" in markdown and "](r1-asr.png)" in markdown
    assert "| reason | bad \\| voice |" in (tmp_path / "r1-tts.md").read_text()
    assert "No gate ran in this run." in (tmp_path / "r1-tts.md").read_text()
    broken = ansible_cli.run_module("deploy_report", {**args, "events": [{"service": "asr"}]},
                                    python=ansible_cli.CONTROLLER_PYTHON)
    assert broken["failed"] and "deploy report of asr: the event lacks ['release', 'started_at', 'at']" in broken["msg"]


def test_the_report_waits_for_a_scrape_only_where_prometheus_scrapes_the_services(tmp_path: Path) -> None:
    naps: list[float] = []

    def nap(seconds: float) -> None:
        naps.append(seconds)
        time.sleep(seconds)

    with Prometheus(tmp_path, {"service": "asr"}) as prometheus:
        # Scraped every second: a run that ends a second from now is settled after a scrape past that second.
        assert xl_report.wait_settled(prometheus.url, ["asr"], time.time() + 1, 15, sleep=nap) is True
        assert 1 <= len(naps) <= 10
        # No series of these services at all (nobody scrapes them): nothing to wait for.
        naps.clear()
        assert xl_report.wait_settled(prometheus.url, ["tts"], time.time(), 15, sleep=nap) is False
        assert naps == []
    # Nor for a Prometheus that does not answer.
    assert xl_report.wait_settled(f"http://127.0.0.1:{free_port()}", ["asr"], time.time(), 15, sleep=nap) is False
    assert naps == []
