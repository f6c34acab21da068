#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: canary_analysis
short_description: Judge a canary colour against Prometheus metrics, Argo Rollouts style
description:
  - Takes O(count) rounds of measurements O(interval) seconds apart. Each round runs every metric's PromQL
    instant query for the O(canary) colour (and for the O(baseline) colour when the metric's condition mentions
    C(baseline)) and evaluates the metric's C(successCondition).
  - A measurement with no series, or a NaN or infinite value, is inconclusive, never a pass. The analysis fails
    as soon as a metric's failed measurements exceed its C(failureLimit), and is inconclusive as soon as its
    inconclusive measurements exceed its C(inconclusiveLimit) or when a metric never had a successful
    measurement. The task fails unless the phase is C(SUCCESSFUL), and returns the measurements either way.
  - With O(analyses), judges several services side by side (each its own canary and baseline, metrics, window,
    count and interval); a phase other than C(SUCCESSFUL) is then a result, not a failed task, so the caller judges
    all of them together.
  - Only reads from Prometheus, so the module never reports a change.
options:
  prometheus_url:
    description: Base URL of Prometheus, for example C(http://127.0.0.1:9090).
    type: str
    required: true
  service:
    description: Service name, substituted for C($service) in queries (one analysis; see O(analyses)).
    type: str
  canary:
    description: Colour under analysis, substituted for C($colour) in the canary's queries.
    type: str
  baseline:
    description:
      - Colour to compare with, substituted for C($colour) in the baseline's queries.
      - Required when a C(successCondition) mentions C(baseline).
    type: str
  metrics:
    description:
      - Metric specs. Each has C(name), C(query) (PromQL with the placeholders C($service), C($colour) and
        C($window); C($$) is a literal C($)) and C(successCondition), and optionally C(failureLimit) (default 0)
        and C(inconclusiveLimit) (default 2).
      - C(successCondition) is an expression over C(result) (the canary value) and C(baseline) (the baseline
        value) with numbers, C(+ - * /), comparisons, C(and), C(or), C(not) and parentheses, for example
        C(result <= baseline * 1.2 + 0.1). Nothing else is accepted.
      - A query must aggregate to one series (for example with C(sum) or C(histogram_quantile)).
    type: list
    elements: dict
  analyses:
    description:
      - Several analyses run side by side, each a mapping with C(service), C(canary), C(metrics) and optionally
        C(baseline), C(window), C(count) and C(interval) (defaults as for one analysis). Mutually exclusive with
        O(service).
    type: list
    elements: dict
  state_dir:
    description:
      - With O(release), the deploy state directory where C(playbooks/abort.yml) leaves an abort request; the
        analysis stops between measurements once one is there for O(release).
    type: path
  release:
    description: Release id of the run the analysis belongs to (see O(state_dir)).
    type: str
  window:
    description: Range substituted for C($window), a Prometheus duration.
    type: str
    default: 1m
  count:
    description: Number of measurement rounds.
    type: int
    default: 3
  interval:
    description: Seconds between the starts of two rounds.
    type: float
    default: 10
  timeout:
    description: Seconds to wait for each Prometheus answer.
    type: float
    default: 10
attributes:
  check_mode:
    support: full
    details: In check mode no query is sent; the metric specs and conditions are only validated.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: Never changes anything; the outcome depends on what Prometheus measures at the time.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Judge the green ASR canary against blue
  canary_analysis:
    prometheus_url: http://127.0.0.1:9090
    service: asr
    canary: green
    baseline: blue
    window: 2m
    count: 5
    interval: 30
    metrics:
      - name: error-ratio
        query: >-
          sum(rate(xl_http_requests_total{service="$service",colour="$colour",endpoint=~"/v1/.*",
          status=~"5.."}[$window]))
          / sum(rate(xl_http_requests_total{service="$service",colour="$colour",endpoint=~"/v1/.*"}[$window]))
        successCondition: result <= 0.05
        failureLimit: 1
      - name: p95-latency
        query: >-
          histogram_quantile(0.95, sum by (le)
          (rate(xl_http_request_duration_seconds_bucket{service="$service",colour="$colour"}[$window])))
        successCondition: result < 3.0 and result <= baseline * 1.2 + 0.1
  register: asr_analysis
"""

RETURN = r"""
phase:
  description: C(SUCCESSFUL), C(FAILED), C(INCONCLUSIVE), or C(ERROR) when Prometheus could not be queried.
  returned: unless in check mode or with O(analyses)
  type: str
  sample: FAILED
message:
  description: Why the phase is what it is; for a failure, the metric, its values, the condition and the limit.
  returned: unless in check mode
  type: str
measurements:
  description:
    - Every measurement taken, in order. Values are numbers, null for no data, or C(NaN), C(+Inf), C(-Inf).
    - Inconclusive measurements carry a C(reason).
  returned: always
  type: list
  elements: dict
  sample: [{"metric": "error-ratio", "at": "2026-11-28T12:00:00Z", "canary_value": 0.12, "baseline_value": null,
            "outcome": "FAILED", "condition": "result <= 0.05"}]
results:
  description: With O(analyses), one entry per analysis in order, with C(service), C(phase), C(message) and
    C(measurements) (C(ABORTED) when the run was asked to stop).
  returned: with O(analyses)
  type: list
  elements: dict
"""

import concurrent.futures
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_analysis import (
    SUCCESSFUL,
    AnalysisError,
    run_analysis,
    validate_metrics,
    validate_target,
)
from ansible.module_utils.xl_release import abort_message, abort_requested


class _Stopped(Exception):
    pass


def _one(params, spec, sleep):
    where = f"canary analysis of {spec.get('service')} {spec.get('canary')}"
    try:
        result = run_analysis(params["prometheus_url"], spec["metrics"], spec["service"], spec["canary"],
                              spec.get("baseline"), window=spec.get("window", "1m"), count=int(spec.get("count", 3)),
                              interval_s=float(spec.get("interval", 10.0)), timeout=params["timeout"], sleep=sleep)
    except AnalysisError as exc:
        return {"service": spec["service"], "phase": "ERROR", "message": f"{where}: {exc}",
                "measurements": exc.measurements, "finished_at": time.time()}
    except _Stopped as exc:
        return {"service": spec["service"], "phase": "ABORTED", "message": str(exc), "measurements": []}
    # When the verdict was known: what the time to return traffic after a failed analysis is measured from.
    return {"service": spec["service"], **result, "finished_at": time.time()}


def main():
    module = AnsibleModule(
        argument_spec=dict(
            prometheus_url=dict(type="str", required=True),
            service=dict(type="str"),
            canary=dict(type="str"),
            baseline=dict(type="str"),
            metrics=dict(type="list", elements="dict"),
            analyses=dict(type="list", elements="dict"),
            state_dir=dict(type="path"),
            release=dict(type="str"),
            window=dict(type="str", default="1m"),
            count=dict(type="int", default=3),
            interval=dict(type="float", default=10.0),
            timeout=dict(type="float", default=10.0),
        ),
        mutually_exclusive=[("analyses", "service")],
        required_one_of=[("analyses", "service")],
        required_by={"service": ("canary", "metrics")},
        required_together=[("state_dir", "release")],
        supports_check_mode=True,
    )
    params = module.params
    if params["analyses"] is not None:
        specs = [{"window": params["window"], "count": params["count"], "interval": params["interval"], **spec}
                 for spec in params["analyses"]]
        for spec in specs:
            where = f"canary analysis of {spec.get('service')} {spec.get('canary')}"
            try:
                validate_target(spec.get("service"), spec.get("canary"), spec.get("baseline"), spec["window"],
                                int(spec["count"]), float(spec["interval"]))
                validate_metrics(spec.get("metrics") or [], spec.get("baseline"))
            except (AnalysisError, TypeError, ValueError) as exc:
                module.fail_json(msg=f"{where}: {exc}", results=[])
        if module.check_mode:
            module.exit_json(changed=False, results=[], skipped_reason="check mode sends no query")

        def sleep(seconds):
            deadline = time.monotonic() + seconds
            while True:
                if params["state_dir"] and (request := abort_requested(params["state_dir"], params["release"])):
                    raise _Stopped(abort_message(request))
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                time.sleep(min(0.2, left))

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
            results = list(pool.map(lambda spec: _one(params, spec, sleep), specs))
        module.exit_json(changed=False, results=results)
    where = f"canary analysis of {params['service']} {params['canary']}"
    try:
        validate_target(params["service"], params["canary"], params["baseline"], params["window"], params["count"],
                        params["interval"])
        validate_metrics(params["metrics"], params["baseline"])
    except AnalysisError as exc:
        module.fail_json(msg=f"{where}: {exc}", measurements=[])
    if module.check_mode:
        module.exit_json(changed=False, measurements=[], skipped_reason="check mode sends no query")
    try:
        result = run_analysis(params["prometheus_url"], params["metrics"], params["service"], params["canary"],
                              params["baseline"], window=params["window"], count=params["count"],
                              interval_s=params["interval"], timeout=params["timeout"])
    except AnalysisError as exc:
        module.fail_json(msg=f"{where}: {exc}", phase="ERROR", message=str(exc), measurements=exc.measurements)
    if result["phase"] != SUCCESSFUL:
        module.fail_json(msg=f"{where}: {result['phase']}: {result['message']}", changed=False, **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
