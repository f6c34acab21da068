# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Canary analysis: Prometheus metrics measured for the canary colour against conditions, Argo Rollouts style.

Plain functions over plain data, so the canary_analysis module stays a thin shell and pytest can exercise every
branch against a small fake Prometheus. Standard library only, because the analysis may run on any host that
reaches Prometheus.

A metric spec is a mapping from configuration::

    name:              error-ratio                  required, unique
    query:             PromQL with placeholders      required (see below)
    successCondition:  result <= 0.05                required (see below)
    failureLimit:      0                             optional, failed measurements tolerated (default 0)
    inconclusiveLimit: 2                             optional, inconclusive measurements tolerated (default 2)

Placeholders: PromQL is full of braces, so queries use ``$service``, ``$colour`` and ``$window`` (or
``${service}`` and so on, where a letter follows directly). ``$$`` is a literal ``$``; any other ``$`` (a regular
expression anchor such as ``endpoint=~"/v1/.*$"``) is left alone. An unknown ``$name`` is an error, so a typo
cannot silently produce a query that matches nothing. Service and colour must be plain label values (letters,
digits, ``_.:-``) and the window a Prometheus duration (``1m``, ``90s``, ``1h30m``)::

    sum(rate(xl_http_requests_total{service="$service",colour="$colour",status=~"5.."}[$window]))
      / sum(rate(xl_http_requests_total{service="$service",colour="$colour"}[$window]))

Success conditions are a tiny expression language over ``result`` (the query's value for the canary colour) and
``baseline`` (the same query for the baseline colour): numbers, those two names, ``+ - * /``, unary ``-``,
comparisons (chains such as ``0 <= result < 1`` too), ``and``/``or``/``not`` and parentheses. The whole condition
must be a comparison or a combination of comparisons. Conditions are parsed with :mod:`ast` and walked node by
node; nothing is ever passed to ``eval``.

A measurement queries the canary (and the baseline, only when the condition mentions ``baseline``). It is
INCONCLUSIVE, never a pass, when a side has no series, a NaN or infinite value, or the condition divides by zero;
otherwise SUCCESSFUL or FAILED by the condition. A query returning several series is an error: it must aggregate
to one. The analysis is FAILED as soon as a metric's failures exceed its failureLimit, INCONCLUSIVE as soon as its
inconclusive measurements exceed its inconclusiveLimit (or when, after the last measurement, a metric never had a
successful one), and SUCCESSFUL otherwise.
"""

from __future__ import annotations

import ast
import datetime
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

SUCCESSFUL, FAILED, INCONCLUSIVE = "SUCCESSFUL", "FAILED", "INCONCLUSIVE"
DEFAULT_FAILURE_LIMIT = 0
DEFAULT_INCONCLUSIVE_LIMIT = 2
METRIC_KEYS = ("name", "query", "successCondition", "failureLimit", "inconclusiveLimit")
CONDITION_NAMES = ("result", "baseline")
MAX_CONDITION_LENGTH = 500
PLACEHOLDERS = ("service", "colour", "window")
LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:-]+")
DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")
_PLACEHOLDER = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[A-Za-z_][A-Za-z0-9_]*)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\})")
_COMPARE = {ast.Lt: lambda a, b: a < b, ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b,
            ast.GtE: lambda a, b: a >= b, ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b}
_ARITHMETIC = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b}

Query = Callable[[str, str, float], list[tuple[dict[str, str], float]]]


class AnalysisError(Exception):
    """Prometheus could not answer, a metric spec is malformed, or a query does not return one series.

    ``measurements`` holds what was measured before the error, so a failed run can still be reported.
    """

    def __init__(self, message: str, measurements: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.measurements = measurements or []


# --- Prometheus ------------------------------------------------------------------------------------------------

def _sample_value(text: Any) -> float:
    """Prometheus sends sample values as strings; "NaN", "+Inf" and "-Inf" are the non-finite spellings."""
    special = {"NaN": math.nan, "+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}
    if isinstance(text, str) and text in special:
        return special[text]
    return float(text)


def query_prometheus(base_url: str, promql: str, timeout: float = 10.0) -> list[tuple[dict[str, str], float]]:
    """Instant query; return (labels, value) per series (a scalar answer is one series without labels)."""
    endpoint = f"{base_url.rstrip('/')}/api/v1/query"
    url = f"{endpoint}?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as response:
            body = response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        # Prometheus answers 400/422/503 with its usual JSON error document; show its words when there are any.
        text = exc.read().decode(errors="replace")
        try:
            detail = json.loads(text).get("error") or text
        except (ValueError, AttributeError):
            detail = text
        raise AnalysisError(f"Prometheus {endpoint} answered HTTP {exc.code}: {str(detail).strip()[:300]} "
                            f"(query: {promql})") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AnalysisError(f"Prometheus {endpoint} cannot be reached: {reason}") from exc
    try:
        answer = json.loads(body)
    except ValueError as exc:
        raise AnalysisError(f"Prometheus {endpoint} did not answer JSON: {body.strip()[:200]!r}") from exc
    if not isinstance(answer, dict) or answer.get("status") != "success":
        detail = answer.get("error", answer) if isinstance(answer, dict) else answer
        raise AnalysisError(f"Prometheus {endpoint} query failed: {str(detail)[:300]} (query: {promql})")
    data = answer.get("data") or {}
    kind = data.get("resultType")
    try:
        if kind == "vector":
            return [(dict(series.get("metric") or {}), _sample_value(series["value"][1]))
                    for series in data.get("result") or []]
        if kind == "scalar":
            return [({}, _sample_value(data["result"][1]))]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise AnalysisError(f"Prometheus {endpoint} answered a malformed {kind}: {str(data)[:200]}") from exc
    raise AnalysisError(f"Prometheus {endpoint} answered a {kind} for an instant query; the query must return "
                        f"an instant vector or a scalar (wrap range selectors in a function such as rate()): "
                        f"{promql}")


# --- placeholders ----------------------------------------------------------------------------------------------

def placeholders(query: str) -> list[str]:
    """Names of the $placeholders in `query`, in order (``$$`` escapes excluded)."""
    return [match.group("named") or match.group("braced") for match in _PLACEHOLDER.finditer(query)
            if not match.group("escaped")]


def check_placeholders(query: str) -> None:
    unknown = [name for name in placeholders(query) if name not in PLACEHOLDERS]
    if unknown:
        raise AnalysisError(f"unknown placeholder ${unknown[0]} in the query (known: "
                            f"{', '.join('$' + name for name in PLACEHOLDERS)}; write $$ for a literal $)")


def render_query(query: str, values: Mapping[str, str | None]) -> str:
    """Substitute $service, $colour and $window; `values` must hold every placeholder the query uses."""
    check_placeholders(query)

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("named") or match.group("braced")
        if values.get(name) is None:
            raise AnalysisError(f"placeholder ${name} has no value")
        return str(values[name])
    return _PLACEHOLDER.sub(replace, query)


# --- success conditions ----------------------------------------------------------------------------------------

def _kind(node: ast.AST, condition: str) -> str:
    """'bool' or 'number' for an allowed node; AnalysisError naming the condition for anything else."""
    def refuse(what: str) -> AnalysisError:
        return AnalysisError(f"successCondition {condition!r}: {what} is not allowed (only numbers, result, "
                             f"baseline, + - * /, comparisons, and/or/not and parentheses)")

    def number(child: ast.AST) -> None:
        if _kind(child, condition) != "number":
            raise AnalysisError(f"successCondition {condition!r}: {ast.unparse(child)!r} is a condition where a "
                                f"number is expected")

    def boolean(child: ast.AST) -> None:
        if _kind(child, condition) != "bool":
            raise AnalysisError(f"successCondition {condition!r}: {ast.unparse(child)!r} is a number where a "
                                f"comparison is expected")

    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise refuse(f"the constant {node.value!r}")
        return "number"
    if isinstance(node, ast.Name):
        if node.id not in CONDITION_NAMES:
            raise refuse(f"the name {node.id!r}")
        return "number"
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _ARITHMETIC:
            raise refuse(f"the operator {type(node.op).__name__}")
        number(node.left)
        number(node.right)
        return "number"
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.op, ast.Not):
            boolean(node.operand)
            return "bool"
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            number(node.operand)
            return "number"
        raise refuse(f"the operator {type(node.op).__name__}")
    if isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in _COMPARE:
                raise refuse(f"the operator {type(op).__name__}")
        for operand in (node.left, *node.comparators):
            number(operand)
        return "bool"
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            boolean(value)
        return "bool"
    raise refuse(f"{type(node).__name__} ({ast.unparse(node)!r})")


def parse_condition(condition: Any) -> ast.Expression:
    """Parse and check a successCondition; AnalysisError naming it when it is not in the allowed language."""
    if not isinstance(condition, str) or not condition.strip():
        raise AnalysisError(f"successCondition must be a non-empty string, got {condition!r}")
    if len(condition) > MAX_CONDITION_LENGTH:
        raise AnalysisError(f"successCondition {condition[:60]!r}... is longer than {MAX_CONDITION_LENGTH} characters")
    try:
        tree = ast.parse(condition.strip(), mode="eval")
    except SyntaxError as exc:
        raise AnalysisError(f"successCondition {condition!r} is not a valid expression: {exc.msg}") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise AnalysisError(f"successCondition {condition!r} cannot be parsed: {exc}") from exc
    if _kind(tree.body, condition) != "bool":
        raise AnalysisError(f"successCondition {condition!r} is a number, not a condition (compare it, for "
                            f"example 'result <= 0.05')")
    return tree


def condition_names(condition: str) -> set[str]:
    return {node.id for node in ast.walk(parse_condition(condition)) if isinstance(node, ast.Name)}


def _evaluate(node: ast.AST, names: Mapping[str, float]) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(names[node.id])
    if isinstance(node, ast.BinOp):
        return _ARITHMETIC[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, names)
        if isinstance(node.op, ast.Not):
            return not operand
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            return all(_evaluate(value, names) for value in node.values)
        return any(_evaluate(value, names) for value in node.values)
    raise AnalysisError(f"cannot evaluate {type(node).__name__}")  # unreachable after parse_condition


def evaluate_condition(condition: str, result: float, baseline: float | None = None) -> bool:
    """Evaluate a successCondition. ZeroDivisionError propagates (the caller treats it as inconclusive)."""
    tree = parse_condition(condition)
    names = {"result": result}
    if baseline is not None:
        names["baseline"] = baseline
    elif "baseline" in condition_names(condition):
        raise AnalysisError(f"successCondition {condition!r} uses baseline but no baseline value was given")
    return bool(_evaluate(tree.body, names))


# --- metric specs ----------------------------------------------------------------------------------------------

def _limit(metric: Mapping[str, Any], key: str, default: int) -> int:
    value = metric.get(key, default)
    return default if value is None else int(value)


def validate_metrics(metrics: Sequence[Any], baseline: str | None = None) -> None:
    """Check every metric spec; messages name metrics[i] (and the metric's name when it has one)."""
    if not metrics:
        raise AnalysisError("metrics must list at least one metric")
    seen: set[str] = set()
    for index, metric in enumerate(metrics):
        where = f"metrics[{index}]"
        if not isinstance(metric, Mapping):
            raise AnalysisError(f"{where} must be a mapping, got {metric!r}")
        if metric.get("name"):
            where = f"metrics[{index}] ({metric['name']})"
        unknown = sorted(set(metric) - set(METRIC_KEYS))
        if unknown:
            raise AnalysisError(f"{where}: unknown key(s) {', '.join(map(str, unknown))} "
                                f"(allowed: {', '.join(METRIC_KEYS)})")
        for key in ("name", "query", "successCondition"):
            if not isinstance(metric.get(key), str) or not metric[key].strip():
                raise AnalysisError(f"{where} needs '{key}' (a non-empty string)")
        if metric["name"] in seen:
            raise AnalysisError(f"{where}: the name {metric['name']!r} is used twice")
        seen.add(metric["name"])
        for key in ("failureLimit", "inconclusiveLimit"):
            value = metric.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise AnalysisError(f"{where}.{key} must be a whole number >= 0, got {value!r}")
        try:
            check_placeholders(metric["query"])
            names = condition_names(metric["successCondition"])
        except AnalysisError as exc:
            raise AnalysisError(f"{where}: {exc}") from exc
        if "baseline" in names and not baseline:
            raise AnalysisError(f"{where}: successCondition {metric['successCondition']!r} compares with the "
                                f"baseline, but no baseline colour is given")


def validate_target(service: str, canary: str, baseline: str | None, window: str, count: int,
                    interval_s: float) -> None:
    for key, value in (("service", service), ("canary", canary), ("baseline", baseline)):
        if (value is not None or key != "baseline") and not (isinstance(value, str) and LABEL_VALUE.fullmatch(value)):
            raise AnalysisError(f"{key} {value!r} must be a plain label value (letters, digits, _ . : -)")
    if canary == baseline:
        raise AnalysisError(f"canary and baseline are both {canary!r}; compare two different colours")
    if not isinstance(window, str) or not DURATION.fullmatch(window):
        raise AnalysisError(f"window {window!r} must be a Prometheus duration such as 1m, 90s or 1h30m")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise AnalysisError(f"count must be a whole number >= 1, got {count!r}")
    if not interval_s >= 0:
        raise AnalysisError(f"interval must be >= 0 seconds, got {interval_s!r}")


# --- measurements and the analysis -----------------------------------------------------------------------------

def report_value(value: float | None) -> float | str | None:
    """A value as recorded: finite floats as they are, no data as None, non-finite ones as Prometheus spells them
    (so the record stays strict JSON)."""
    if value is None or math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "+Inf" if value > 0 else "-Inf"


def _one_value(query: Query, prometheus_url: str, promql: str, timeout: float, colour: str) -> float | None:
    series = query(prometheus_url, promql, timeout)
    if len(series) > 1:
        labels = "; ".join(json.dumps(labels, sort_keys=True) for labels, _ in series[:3])
        raise AnalysisError(f"the query for colour {colour} returned {len(series)} series ({labels}"
                            f"{'; ...' if len(series) > 3 else ''}); it must aggregate to one series, for "
                            f"example with sum(...): {promql}")
    return series[0][1] if series else None


def _unusable(side: str, colour: str | None, value: float | None) -> str | None:
    if value is None:
        return f"no data for the {side} (colour {colour})"
    if not math.isfinite(value):
        return f"the {side} (colour {colour}) value is {report_value(value)}"
    return None


def measure(metric: Mapping[str, Any], prometheus_url: str, service: str, canary: str, baseline: str | None,
            window: str, query: Query = query_prometheus, timeout: float = 10.0,
            at: str | None = None) -> dict[str, Any]:
    """One measurement of one metric: query, then SUCCESSFUL, FAILED or INCONCLUSIVE (with the reason)."""
    condition = metric["successCondition"]
    uses_baseline = "baseline" in condition_names(condition)
    values = {"service": service, "window": window}
    canary_value = _one_value(query, prometheus_url, render_query(metric["query"], {**values, "colour": canary}),
                              timeout, str(canary))
    baseline_value = None
    if uses_baseline:
        baseline_value = _one_value(query, prometheus_url,
                                    render_query(metric["query"], {**values, "colour": baseline}),
                                    timeout, str(baseline))
    record: dict[str, Any] = {"metric": metric["name"], "at": at, "canary_value": report_value(canary_value),
                              "baseline_value": report_value(baseline_value), "condition": condition}
    reason = _unusable("canary", canary, canary_value)
    if uses_baseline and not reason:
        reason = _unusable("baseline", baseline, baseline_value)
    if reason or canary_value is None:
        return {**record, "outcome": INCONCLUSIVE, "reason": reason}
    try:
        passed = evaluate_condition(condition, canary_value, baseline_value)
    except ZeroDivisionError:
        return {**record, "outcome": INCONCLUSIVE, "reason": "the condition divides by zero"}
    return {**record, "outcome": SUCCESSFUL if passed else FAILED}


def _values_text(record: Mapping[str, Any]) -> str:
    def shown(value: Any) -> str:
        return "no data" if value is None else str(value)
    text = f"canary {shown(record['canary_value'])}"
    if "baseline" in condition_names(record["condition"]):
        text += f", baseline {shown(record['baseline_value'])}"
    return text


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_analysis(prometheus_url: str, metrics: Sequence[Mapping[str, Any]], service: str, canary: str,
                 baseline: str | None, window: str = "1m", count: int = 3, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep,
                 query: Query = query_prometheus, timeout: float = 10.0) -> dict[str, Any]:
    """Take `count` rounds of measurements `interval_s` apart and decide the phase (see the module docstring).

    `clock` gives wall-clock seconds (each measurement's ``at`` is that time in UTC); `sleep` waits. Both are
    injectable so tests run without waiting. Errors (Prometheus unreachable, several series) raise AnalysisError
    carrying the measurements taken so far.
    """
    validate_target(service, canary, baseline, window, count, interval_s)
    validate_metrics(metrics, baseline)
    measurements: list[dict[str, Any]] = []
    failures = {metric["name"]: 0 for metric in metrics}
    inconclusives = {metric["name"]: 0 for metric in metrics}
    successes = {metric["name"]: 0 for metric in metrics}
    started = clock()
    for round_index in range(count):
        if round_index:
            sleep(max(0.0, started + round_index * interval_s - clock()))
        for metric in metrics:
            name = metric["name"]
            try:
                record = measure(metric, prometheus_url, service, canary, baseline, window, query=query,
                                 timeout=timeout, at=_utc(clock()))
            except AnalysisError as exc:
                raise AnalysisError(f"metric {name}: {exc}", measurements) from exc
            measurements.append(record)
            where = f"measurement {round_index + 1} of {count}"
            if record["outcome"] == SUCCESSFUL:
                successes[name] += 1
            elif record["outcome"] == FAILED:
                failures[name] += 1
                limit = _limit(metric, "failureLimit", DEFAULT_FAILURE_LIMIT)
                if failures[name] > limit:
                    return {"phase": FAILED, "measurements": measurements,
                            "message": f"metric {name} failed: {_values_text(record)} does not meet "
                                       f"{record['condition']!r} ({where}); {failures[name]} failed "
                                       f"measurement(s), failureLimit {limit}"}
            else:
                inconclusives[name] += 1
                limit = _limit(metric, "inconclusiveLimit", DEFAULT_INCONCLUSIVE_LIMIT)
                if inconclusives[name] > limit:
                    return {"phase": INCONCLUSIVE, "measurements": measurements,
                            "message": f"metric {name} is inconclusive: {record['reason']} ({_values_text(record)} "
                                       f"vs {record['condition']!r}, {where}); {inconclusives[name]} inconclusive "
                                       f"measurement(s), inconclusiveLimit {limit}"}
    never = [name for name, number in successes.items() if not number]
    if never:
        tally = ", ".join(f"{name}: {failures[name]} failed, {inconclusives[name]} inconclusive" for name in never)
        return {"phase": INCONCLUSIVE, "measurements": measurements,
                "message": f"no successful measurement of {', '.join(never)} in {count} round(s) ({tally}); "
                           f"a metric without a successful measurement never passes"}
    return {"phase": SUCCESSFUL, "measurements": measurements,
            "message": f"all {len(metrics)} metric(s) met their conditions over {count} measurement(s) "
                       f"({sum(failures.values())} failed, {sum(inconclusives.values())} inconclusive within limits)"}
