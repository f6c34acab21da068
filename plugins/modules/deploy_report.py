#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deploy_report
short_description: Write the deploy reports of a run - JSON, Markdown and a PNG plot per service
description:
  - Takes the events a run of the release engine recorded (one per service) and writes, for each,
    C(<release>-<service>.json), C(.md) and C(.png) into O(dest_dir) on the controller.
  - Waits once, for all services together, until Prometheus has scraped every instance after the run (traffic the
    run moved is only in Prometheus after that scrape), then adds the requests per colour and status and the p95
    latency per colour that Prometheus saw during the run.
  - The plot shows each colour's share of the traffic weight over the run, from the recorded steps up to the end
    (an abort's return of the traffic included), and each colour's HTTP 5xx ratio from Prometheus.
  - Runs after the traffic decisions, so it never holds a switch back; a report that cannot be drawn is reported
    in RV(problems), not a failure of the run.
options:
  events:
    description: The run's events, each with at least C(service), C(release), C(started_at) and C(at).
    type: list
    elements: dict
    required: true
  dest_dir:
    description: Directory the reports are written to (created when missing).
    type: path
    required: true
  prometheus_url:
    description: Prometheus the observed figures and the error ratios come from; empty, none are added.
    type: str
    default: ""
  settle_timeout:
    description: Seconds to wait for Prometheus to scrape every instance of the run's services after it (0, no wait).
    type: float
    default: 20
  mode:
    description: File mode of the reports.
    type: raw
    default: "0644"
attributes:
  check_mode:
    support: full
    details: In check mode nothing is written and Prometheus is not asked.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run has its own release id and so its own report files.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Reports of the run
  deploy_report:
    events: "{{ release_record.events }}"
    dest_dir: /var/lib/xlerobot/reports
    prometheus_url: http://127.0.0.1:9090
  delegate_to: localhost
"""

RETURN = r"""
files:
  description: Every file written.
  returned: always
  type: list
  elements: str
settled:
  description: Whether Prometheus had scraped every instance after the run before the figures were read.
  returned: always
  type: bool
problems:
  description: Per service, why its plot's error panel or its observed figures are missing, when they are.
  returned: always
  type: dict
"""

import json
import os
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_plot import PlotError, error_ratios, render, timestamp, weight_shares
from ansible.module_utils.xl_report import ReportError, assemble, render_markdown, wait_settled


def main():
    module = AnsibleModule(
        argument_spec=dict(
            events=dict(type="list", elements="dict", required=True),
            dest_dir=dict(type="path", required=True),
            prometheus_url=dict(type="str", default=""),
            settle_timeout=dict(type="float", default=20.0),
            mode=dict(type="raw", default="0644"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    events = params["events"]
    for event in events:
        missing = [key for key in ("service", "release", "started_at", "at") if not event.get(key)]
        if missing:
            module.fail_json(msg=f"deploy report of {event.get('service', '?')}: the event lacks {missing}")
    if module.check_mode or not events:
        module.exit_json(changed=False, files=[], settled=False, problems={})
    ended = time.time()
    prometheus = params["prometheus_url"]
    settled = bool(prometheus) and params["settle_timeout"] > 0 and wait_settled(
        prometheus, sorted({event["service"] for event in events}), ended, params["settle_timeout"])
    os.makedirs(params["dest_dir"], mode=0o755, exist_ok=True)
    files, problems = [], {}
    for event in events:
        service = event["service"]
        stem = os.path.join(params["dest_dir"], f"{event['release']}-{service}")
        try:
            report = assemble(event, prometheus, ended) if prometheus else {**event, "observed": {
                "window": "", "prometheus": "", "requests": [], "p95_seconds": [], "error": "no Prometheus given"}}
        except ReportError as exc:
            module.fail_json(msg=f"deploy report of {service}: {exc}")
        with open(stem + ".json", "w", encoding="utf-8") as handle:
            handle.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
        with open(stem + ".md", "w", encoding="utf-8") as handle:
            handle.write(render_markdown(report, os.path.basename(stem) + ".png"))
        files += [stem + ".json", stem + ".md"]
        panel = "drawn"
        try:
            shares = weight_shares(report)
            errors = None
            if prometheus:
                try:
                    errors = error_ratios(prometheus, service, timestamp(report["started_at"]), ended)
                    if not any(errors.values()):
                        panel = "no requests in the window"
                except PlotError as exc:
                    panel = str(exc)
            title = (f"{service} {report.get('version', '')} - {report.get('strategy', '')} "
                     f"{report.get('action', '')}: {report.get('result', '')}")
            render(shares, errors, title, stem + ".png", note="" if panel == "drawn" else panel)
            files.append(stem + ".png")
        except (PlotError, KeyError, ImportError, OSError) as exc:
            panel = f"not drawn: {exc}"
        if panel != "drawn" or report["observed"].get("error"):
            problems[service] = "; ".join(item for item in (panel if panel != "drawn" else "",
                                                            report["observed"].get("error", "")) if item)
    for path in files:
        module.set_fs_attributes_if_different(module.load_file_common_arguments(
            {"path": path, "mode": params["mode"]}), False)
    module.exit_json(changed=True, files=files, settled=settled, problems=problems)


if __name__ == "__main__":
    main()
