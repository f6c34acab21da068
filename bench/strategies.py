#!/usr/bin/env python3
"""Strategy benchmarks: wall time of blue-green, canary and rolling deploys of every service under load, failed
requests per deploy, rollback time, and Ansible's overhead per host fanned out over many logical hosts.

Prints figures next to the targets (full blue-green < 3 min, rollback < 5 s of switching, 0 failed requests);
asserts nothing. Runs its own environments (bench/env-bench.yml, gateway 127.0.0.1:28080; the rolling part on
the four-host fleet inventory as environment fleet-bench, gateway 127.0.0.1:28180) on the machine's engine and
registry, and removes them at the end.
Usage: .venv/bin/python bench/strategies.py [--canary-pause 30] [--fanout 24]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "module_utils")]

from bench.skeleton import playbook  # noqa: E402
from tests.support.audio import speak  # noqa: E402
from tests.support.loadgen import LoadGenerator  # noqa: E402

FLEET = ["-i", str(REPO / "inventories" / "local-fleet" / "hosts.yml"), "-e", "@" + str(REPO / "bench" /
                                                                                        "env-bench-fleet.yml")]
V1, V2 = "1.0.0", "1.1.0"
# Think time of each load client between requests.
PAUSE_S = 1.0
CLIP_TEXT = "Please turn on the kitchen lights and set the alarm for seven"


def under_load(gateway: str, clip: Path, action: Callable[[], float]) -> tuple[float, int, int]:
    """Run `action` while clients call every service through `gateway`: (seconds, requests, failed requests)."""
    # Paced clients (a think time after each answer), not back-to-back ones: four services in two colours share
    # this machine's cores, and clients that never pause saturate them - every p95 then sits at the top bucket
    # (30 s) and a canary sees no request of its own within a window. Every service gets traffic of its own, so
    # each canary has data to be judged on.
    clients = [
        LoadGenerator(f"{gateway}/v1/audio/transcriptions", clip, concurrency=1, pause_s=PAUSE_S),
        LoadGenerator(f"{gateway}/v1/audio/speech", json_body={"input": "The kitchen lights are on."}, concurrency=1,
                      pause_s=PAUSE_S),
        LoadGenerator(f"{gateway}/v1/chat/completions", concurrency=1, pause_s=PAUSE_S, json_body={
            "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}),
        # Without traffic of its own the stable multimodal colour has no p95 to compare a canary with, and an
        # analysis without data is inconclusive: it aborts, as it should.
        LoadGenerator(f"{gateway}/v1/interact", clip, concurrency=1, audio_field="audio", pause_s=PAUSE_S),
    ]
    for client in clients:
        client.start()
    try:
        time.sleep(2)
        seconds = action()
        time.sleep(2)
    finally:
        for client in clients:
            client.stop()
    return seconds, sum(len(c.outcomes) for c in clients), sum(len(c.failures) for c in clients)


def last_events(run_dir: Path, count: int) -> list[dict]:
    lines = (run_dir / "state" / "history.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[-count:]]


def fanout_seconds(hosts: int, forks: int) -> float:
    """Wall time of one ping task on `hosts` logical hosts (local connection) with `forks` forks."""
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as inventory:
        inventory.write("\n".join(f"h{index} ansible_connection=local ansible_python_interpreter=/usr/bin/python3"
                                  for index in range(hosts)) + "\n")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_HOME": str(REPO / ".cache" / "ansible"),
           "ANSIBLE_LOAD_CALLBACK_PLUGINS": "0"}
    try:
        started = time.perf_counter()
        subprocess.run([str(bin_dir / "ansible"), "all", "-i", inventory.name, "-f", str(forks), "-m",
                        "ansible.builtin.ping"], cwd=REPO, env=env, capture_output=True, check=True)
        return time.perf_counter() - started
    finally:
        os.unlink(inventory.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--canary-pause", type=int, default=30, help="seconds of each canary pause (default 30)")
    parser.add_argument("--fanout", type=int, default=24, help="logical hosts for the fan-out figure")
    args = parser.parse_args()
    figures: dict[str, object] = {}
    clip = speak(CLIP_TEXT, REPO / ".cache" / "bench")
    for version in (V1, V2):
        playbook("build.yml", "-e", f"version={version}")

    bench_run, fleet_run = REPO / ".run" / "bench", REPO / ".run" / "fleet-bench"
    subprocess.run(["rm", "-rf", str(bench_run), str(fleet_run)], check=True)
    try:
        playbook("gateway.yml")
        playbook("monitoring.yml")
        figures["first_deploy_all_s"] = round(playbook("deploy.yml", "-e", f"version={V1}"), 1)
        gateway = "http://127.0.0.1:28080"

        seconds, sent, failed = under_load(gateway, clip, lambda: playbook("deploy.yml", "-e", f"version={V2}"))
        figures["bluegreen_all_s"], figures["bluegreen_requests"], figures["bluegreen_failed"] = \
            round(seconds, 1), sent, failed
        seconds, sent, failed = under_load(gateway, clip, lambda: playbook("rollback.yml"))
        figures["rollback_all_s"], figures["rollback_failed"] = round(seconds, 1), failed
        figures["rollback_switch_s_max"] = max(event["switch_seconds"] for event in last_events(bench_run, 2))

        steps = [{"setWeight": 5}, {"pause": {"duration": args.canary_pause}}, {"analysis": {}},
                 {"setWeight": 20}, {"pause": {"duration": args.canary_pause}}, {"analysis": {}},
                 {"setWeight": 50}, {"pause": {"duration": args.canary_pause}}, {"analysis": {}},
                 {"setWeight": 100}]
        # The bench environment's own overrides (its ports) with the canary steps added to every service.
        bench_overrides = yaml.safe_load((REPO / "bench" / "env-bench.yml").read_text())["xlerobot_services_overrides"]
        # Voice-to-voice traffic is a few requests a minute here: at 5 % its canary sees none in a minute, and an
        # analysis without data aborts (as it must). It starts at 20 % and is analysed over three minutes.
        low_traffic = {"steps": steps[3:], "analysis": {"window": "3m"}}
        overrides = {"xlerobot_services_overrides": {
            service: {**settings, "canary": low_traffic if service == "multimodal" else {"steps": steps}}
            for service, settings in bench_overrides.items()}}
        seconds, sent, failed = under_load(gateway, clip, lambda: playbook(
            "deploy.yml", "-e", "strategy=canary", "-e", f"version={V2}", "-e", json.dumps(overrides)))
        figures["canary_all_s"], figures["canary_requests"], figures["canary_failed"] = round(seconds, 1), sent, failed

        playbook("gateway.yml", *FLEET)
        figures["fleet_first_deploy_asr_s"] = round(playbook("deploy.yml", "-e", f"version={V1}", "-e", "services=asr",
                                                             *FLEET), 1)
        fleet_gateway = "http://127.0.0.1:28180"
        asr = LoadGenerator(f"{fleet_gateway}/v1/audio/transcriptions", clip, concurrency=2)
        with asr:
            time.sleep(2)
            seconds = playbook("deploy.yml", "-e", "strategy=rolling", "-e", f"version={V2}", "-e", "services=asr",
                               *FLEET)
            time.sleep(2)
        figures["rolling_4_hosts_asr_s"], figures["rolling_failed"] = round(seconds, 1), len(asr.failures)
        figures["rolling_requests"] = len(asr.outcomes)
    except BaseException:
        # A failed deploy still leaves the figures measured before it on the screen.
        print_figures(figures)
        raise
    finally:
        playbook("teardown.yml", *FLEET)
        playbook("teardown.yml")

    one = fanout_seconds(1, 1)
    serial = fanout_seconds(args.fanout, 1)
    parallel = fanout_seconds(args.fanout, args.fanout)
    figures["ansible_1_host_s"] = round(one, 2)
    figures[f"ansible_{args.fanout}_hosts_forks1_s"] = round(serial, 2)
    figures[f"ansible_{args.fanout}_hosts_forks{args.fanout}_s"] = round(parallel, 2)
    figures["ansible_per_host_overhead_s"] = round((parallel - one) / (args.fanout - 1), 3)
    figures["fanout_speedup_vs_forks1"] = round(serial / parallel, 2)

    print_figures(figures)


def print_figures(figures: dict[str, object]) -> None:
    targets = {"bluegreen_all_s": "< 180", "rollback_switch_s_max": "< 5", "bluegreen_failed": "0",
               "canary_failed": "0", "rolling_failed": "0", "rollback_failed": "0"}
    width = max((len(key) for key in figures), default=0)
    for key, value in figures.items():
        target = f"   (target {targets[key]})" if key in targets else ""
        print(f"{key:<{width}}  {value}{target}", flush=True)


if __name__ == "__main__":
    main()
