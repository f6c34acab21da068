# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The release engine's decisions as filters: the task files of roles/release hand what they observed and what
their modules reported to these, and act on what comes back. The logic is plugins/module_utils/xl_release.py."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ansible.errors import AnsibleFilterError

# This repository is no installed collection, so ansible.module_utils does not reach plugins/module_utils on the
# controller; the filters use the same functions the modules do.
_MODULE_UTILS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "module_utils")
if _MODULE_UTILS not in sys.path:
    sys.path.insert(0, _MODULE_UTILS)

import xl_release as release  # noqa: E402


def _filter(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except release.ReleaseError as exc:
            raise AnsibleFilterError(str(exc)) from exc
    return wrapper


def xl_release_request_errors(entry: str, strategy: str, version: str, services: Sequence[str],
                              catalogue: Mapping[str, Any], hosts: Sequence[str], scope: str = "run") -> list[str]:
    return release.request_errors(entry=entry, strategy=strategy, version=version, services=services,
                                  catalogue=catalogue, hosts=hosts, abort_scope=scope)


def xl_release_drain(plan: Mapping[str, Any], batch: Mapping[str, Sequence[str]]) -> dict[str, dict[str, int]]:
    """A rolling batch's servers at weight 0, per service."""
    return {service: release.drain_weights(service, plan["services"][service]["live_colour"], hosts, plan["hosts"])
            for service, hosts in batch.items()}


def xl_release_hosts(names: Sequence[str], hostvars: Mapping[str, Any], prefix: str) -> dict[str, dict[str, str]]:
    """Each speech host with the address the gateway reaches it on and its instances' container prefix."""
    return {name: {"address": str(hostvars[name].get("xlerobot_service_address", "127.0.0.1")),
                   "prefix": str(hostvars[name].get("xlerobot_instance_prefix", prefix))} for name in names}


def xl_release_prefixes(hosts: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    return {name: facts["prefix"] for name, facts in hosts.items()}


def xl_release_digests(services: Sequence[str], catalogue: Mapping[str, Any], gateway_url: str) -> dict[str, str]:
    """The settings digest every instance of each service is started with."""
    return {service: release.settings_digest(release.instance_settings(catalogue[service], gateway_url))
            for service in services}


def xl_instance_settings(spec: Mapping[str, Any], gateway_url: str) -> dict[str, Any]:
    return release.instance_settings(spec, gateway_url)


def xl_release_instances(results: Sequence[Mapping[str, Any]], targets: Mapping[str, Any],
                         digests: Mapping[str, str], secret_env: Mapping[str, str] | None = None,
                         gpus: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return release.summarise_instances(results, targets=targets, digests=digests, secret_env=secret_env, gpus=gpus)


def xl_release_plan(request: Mapping[str, Any], observed: Mapping[str, Any]) -> dict[str, Any]:
    """The plan of a run, for its entry point."""
    planner = {"deploy": release.plan_deploy, "refresh": release.plan_deploy, "rollback": release.plan_rollback,
               "reap": release.plan_reap}[request["entry"]]
    return planner(request, observed)


def xl_release_note_abort(progress: Mapping[str, Any], plan: Mapping[str, Any], services: Sequence[str],
                          frozen: bool, traffic: Mapping[str, Any] | None, reason: str, now: float,
                          weights_left: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return release.note_abort(progress, plan, services, frozen=frozen, traffic=traffic, reason=reason, now=now,
                              weights_left=weights_left)


def xl_release_record(plan: Mapping[str, Any], progress: Mapping[str, Any], environment: str, started_at: str,
                      now: float, scale_down_delay: int) -> dict[str, Any]:
    return release.run_record(plan, progress, environment=environment, started_at=started_at, now=now,
                              scale_down_delay=int(scale_down_delay))


def xl_release_by_backend(weights: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    return release.by_backend(weights)


def xl_release_results(results: Sequence[Mapping[str, Any]], beat: Mapping[str, Any],
                       round_index: int | None = None) -> list[dict[str, Any]]:
    """canary_analysis results with each service's step analysis spec, its step number and the round attached,
    for the timeline."""
    return [{**result, "spec": (beat.get("analyses") or {}).get(result["service"]) or {}, "round": round_index,
             "step": (beat.get("steps") or {}).get(result["service"])}
            for result in results]


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        plain: dict[str, Callable[..., Any]] = {
            "xl_release_request_errors": xl_release_request_errors,
            "xl_release_hosts": xl_release_hosts,
            "xl_release_prefixes": xl_release_prefixes,
            "xl_release_digests": xl_release_digests,
            "xl_instance_settings": xl_instance_settings,
            "xl_release_instance_items": release.instance_items,
            "xl_release_instances": xl_release_instances,
            "xl_release_plan": xl_release_plan,
            "xl_release_progress": release.new_progress,
            "xl_release_annotation": release.run_annotation,
            "xl_release_active": release.active,
            "xl_release_failed": release.failed,
            "xl_release_note_step": release.note_step,
            "xl_release_note_failure": release.note_failure,
            "xl_release_gate_targets": release.gate_targets,
            "xl_release_note_gates": release.note_gates,
            "xl_release_round_weights": release.round_weights,
            "xl_release_by_backend": xl_release_by_backend,
            "xl_release_note_weights": release.note_weights,
            "xl_release_note_pause": release.note_pause,
            "xl_release_analyses": release.beat_analyses,
            "xl_release_results": xl_release_results,
            "xl_release_note_analyses": release.note_analyses,
            "xl_release_new_instances": release.new_instance_items,
            "xl_release_restart_baseline": release.restart_baseline,
            "xl_release_restarted": release.restarted_instances,
            "xl_release_note_restarts": release.note_restarts,
            "xl_release_rolling_batch": release.rolling_batch,
            "xl_release_rolling_current": release.note_rolling_current,
            "xl_release_rolling_replace": release.rolling_replace,
            "xl_release_rolling_targets": release.rolling_gate_targets,
            "xl_release_rolling_judge": release.note_rolling_gates,
            "xl_release_rolling_put_back": release.rolling_put_back,
            "xl_release_rolling_weights_back": release.rolling_weights_back,
            "xl_release_drain": xl_release_drain,
            "xl_release_abort_services": release.abort_services,
            "xl_release_abort_weights": release.abort_weights,
            "xl_release_abort_instances": release.abort_instances,
            "xl_release_note_abort": xl_release_note_abort,
            "xl_release_record": xl_release_record,
            "xl_release_retire_now": release.retire_now,
            "xl_release_summary": release.summary_lines,
            "xl_release_failure_messages": release.failure_messages,
            "xl_release_golden_texts": release.golden_texts,
            "xl_release_observed": release.observed,
            "xl_release_inspections": release.inspections,
            "xl_release_targets": release.targets_from_manifests,
            "xl_release_live_targets": release.live_targets,
            "xl_release_final_weights": release.final_weights,
            "xl_release_preflight": release.note_preflight,
            "xl_release_restore_removals": release.restore_removals,
            "xl_release_rolling_hosts": release.rolling_hosts,
            "xl_release_rolling_step": release.note_rolling_step,
            "xl_release_note_batch_weights": release.note_batch_weights,
            "xl_release_restored_targets": release.restored_targets,
            "xl_release_rolling_restore": release.rolling_restore,
            "xl_release_golden_path": release.golden_path,
        }
        return {name: _filter(function) for name, function in plain.items()}
