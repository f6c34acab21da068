# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deploy report's plot: each colour's share of the traffic weight (from the recorded steps) and its HTTP
error ratio (from Prometheus) over the run, drawn as one PNG.

Pure functions for the series, so the tests can check them without drawing; matplotlib is imported only to
draw, on the controller.
"""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

Series = dict[str, list[tuple[float, float]]]

ERROR_RATIO = (
    'sum by (colour) (rate(xl_http_requests_total{{service="{service}",endpoint=~"/v1/.*",status=~"5.."}}[{window}]))'
    ' / sum by (colour) (rate(xl_http_requests_total{{service="{service}",endpoint=~"/v1/.*"}}[{window}]))'
)


class PlotError(RuntimeError):
    """The plot cannot be made (bad report data, unusable Prometheus answer)."""


def timestamp(text: str) -> float:
    """Seconds since the epoch of a report time (2026-11-28T03:24:50Z)."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except (TypeError, ValueError) as exc:
        raise PlotError(f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ") from exc


def colour_of(server: str, colours: list[str]) -> str | None:
    """The colour in an HAProxy server name (<service>_<colour>[_<host>])."""
    parts = server.split("_")
    return next((part for part in parts[1:2] if part in colours), None)


def weight_shares(report: dict[str, Any], colours: list[str] | None = None) -> Series:
    """Each colour's share (percent) of the backend's weight after every step that set weights, starting with
    the traffic as it was (all on the old colour, or nothing before a first release) and held until the end."""
    colours = colours or ["blue", "green"]
    start, end = timestamp(report["started_at"]), timestamp(report["at"])
    origin = (report.get("from") or {}).get("colour") or ""
    shares: Series = {colour: [(start, 100.0 if colour == origin else 0.0)] for colour in colours}
    for step in report.get("steps", []):
        weights = step.get("weights") or {}
        if not weights:
            continue
        totals = dict.fromkeys(colours, 0)
        for server, weight in weights.items():
            colour = colour_of(server, colours)
            if colour:
                totals[colour] += int(weight)
        overall = sum(totals.values())
        at = timestamp(step["at"])
        for colour in colours:
            shares[colour].append((at, 100.0 * totals[colour] / overall if overall else 0.0))
    for colour in colours:
        shares[colour].append((end, shares[colour][-1][1]))
    return shares


def parse_matrix(answer: dict[str, Any], label: str = "colour") -> Series:
    """A Prometheus range answer as {label value: [(t, v), ...]}, NaN samples dropped (no requests, no ratio)."""
    if answer.get("status") != "success" or answer.get("data", {}).get("resultType") != "matrix":
        raise PlotError(f"not a successful range answer: {json.dumps(answer)[:200]}")
    series: Series = {}
    for item in answer["data"]["result"]:
        name = item.get("metric", {}).get(label, "")
        points = [(float(t), float(v)) for t, v in item.get("values", [])]
        series[name] = [(t, v) for t, v in points if not math.isnan(v)]
    return series


def error_ratios(prometheus_url: str, service: str, start: float, end: float, timeout: float = 10.0) -> Series:
    """Each colour's 5xx ratio over [start, end] as Prometheus saw it."""
    if not re.match(r"^[a-z][a-z0-9]*$", service):
        raise PlotError(f"service {service!r} is not a service name")
    step = max(1, int((end - start) / 200))
    query = ERROR_RATIO.format(service=service, window=f"{max(15, step * 4)}s")
    params = urllib.parse.urlencode({"query": query, "start": f"{start:.0f}", "end": f"{end:.0f}", "step": f"{step}s"})
    try:
        with urllib.request.urlopen(f"{prometheus_url.rstrip('/')}/api/v1/query_range?{params}",
                                    timeout=timeout) as response:
            return parse_matrix(json.loads(response.read()))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PlotError(f"Prometheus at {prometheus_url} did not answer the range query: {exc}") from exc


def render(shares: Series, errors: Series | None, title: str, dest: str, note: str = "") -> None:
    """Draw the weight shares (top) and error ratios (bottom) against minutes since the start, into a PNG."""
    # The Figure API with the Agg canvas, without pyplot and its layout engine: a third of the time per plot,
    # which a run with several services' reports notices.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    start = min(points[0][0] for points in shares.values() if points)
    colour_map = {"blue": "tab:blue", "green": "tab:green"}
    figure = Figure(figsize=(8, 5))
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True)
    figure.subplots_adjust(left=0.09, right=0.97, top=0.93, bottom=0.1, hspace=0.12)
    for colour, points in shares.items():
        top.step([(t - start) / 60 for t, _ in points], [v for _, v in points], where="post",
                 label=colour, color=colour_map.get(colour))
    top.set_ylabel("traffic weight (%)")
    top.set_ylim(-5, 105)
    top.legend(loc="center right")
    top.set_title(title)
    if errors and any(errors.values()):
        for colour, points in sorted(errors.items()):
            if points:
                bottom.plot([(t - start) / 60 for t, _ in points], [100 * v for _, v in points], label=colour,
                            color=colour_map.get(colour))
        bottom.legend(loc="upper right")
    if note or not errors:
        bottom.text(0.5, 0.5, note or "no error-ratio data", transform=bottom.transAxes, ha="center", va="center",
                    color="grey")
    bottom.set_ylabel("HTTP 5xx (%)")
    bottom.set_xlabel("minutes since the run started")
    figure.savefig(dest, format="png", dpi=100)
