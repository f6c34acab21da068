#!/usr/bin/python
# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deploy_plot
short_description: Draw a deploy report's traffic weight and error ratio over time as a PNG
description:
  - Draws, for one service's deploy, each colour's share of the traffic weight after every recorded step (top)
    and each colour's HTTP 5xx ratio as Prometheus saw it during the run (bottom).
  - When Prometheus cannot answer, the plot still shows the weights and says why the error panel is empty.
  - Runs on the controller, which needs matplotlib (the project's venv has it).
options:
  report:
    description: The deploy event (as recorded in history.jsonl) with C(started_at), C(at), C(from) and C(steps).
    type: dict
    required: true
  prometheus_url:
    description: Prometheus to ask for the error ratios; empty skips that panel.
    type: str
    default: ""
  dest:
    description: Path of the PNG to write.
    type: path
    required: true
  mode:
    description: File mode of the PNG.
    type: raw
    default: "0644"
attributes:
  check_mode:
    support: full
    details: In check mode nothing is drawn or written; the task reports the file it would write.
  diff_mode:
    support: none
  idempotent:
    support: none
    details: Every run draws its own report's plot.
author:
  - XleRobot deploy authors
"""

EXAMPLES = r"""
- name: Plot the canary's traffic and errors
  deploy_plot:
    report: "{{ release_event }}"
    prometheus_url: http://127.0.0.1:9090
    dest: /var/lib/xlerobot/reports/20261128T031500Z-1.1.0-asr.png
  delegate_to: localhost
"""

RETURN = r"""
dest:
  description: Path of the PNG.
  returned: always
  type: str
error_panel:
  description: C(drawn), or why the error panel is empty.
  returned: always
  type: str
  sample: drawn
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.xl_plot import PlotError, error_ratios, render, timestamp, weight_shares


def main():
    module = AnsibleModule(
        argument_spec=dict(
            report=dict(type="dict", required=True),
            prometheus_url=dict(type="str", default=""),
            dest=dict(type="path", required=True),
            mode=dict(type="raw", default="0644"),
        ),
        supports_check_mode=True,
    )
    report, dest = module.params["report"], module.params["dest"]
    try:
        shares = weight_shares(report)
    except (PlotError, KeyError) as exc:
        module.fail_json(msg=f"deploy report of {report.get('service', '?')} cannot be plotted: {exc}")
    if module.check_mode:
        module.exit_json(changed=True, dest=dest, error_panel="not drawn in check mode")
    errors, panel = None, "drawn"
    if module.params["prometheus_url"]:
        try:
            errors = error_ratios(module.params["prometheus_url"], report["service"], timestamp(report["started_at"]),
                                  timestamp(report["at"]))
            if not any(errors.values()):
                panel = "no requests in the window"
        except PlotError as exc:
            panel = str(exc)
    else:
        panel = "no Prometheus given"
    title = (f"{report['service']} {report.get('version', '')} - {report.get('strategy', '')} "
             f"{report.get('action', '')}: {report.get('result', '')}")
    try:
        render(shares, errors, title, dest, note="" if panel == "drawn" else panel)
    except (ImportError, OSError) as exc:
        module.fail_json(msg=f"cannot draw {dest}: {exc}")
    changed = module.set_fs_attributes_if_different(module.load_file_common_arguments(
        {"path": dest, "mode": module.params["mode"]}), True)
    module.exit_json(changed=changed, dest=dest, error_panel=panel)


if __name__ == "__main__":
    main()
