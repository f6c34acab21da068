#!/usr/bin/env python3
"""Fleet benchmarks: a rolling deploy of speech recognition over the four-host fleet under load (wall time, failed
requests), and Ansible's overhead per host fanned out over many logical hosts.

Blue-green, rollback, canary and abort of all four services are measured by bench/release_engine.py. Prints
figures next to the targets; asserts nothing. Runs its own environment (the four-host fleet inventory as
environment fleet-bench, gateway 127.0.0.1:28180) on the machine's engine and registry, and removes it at the end.
Usage: .venv/bin/python bench/strategies.py [--fanout 24]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "module_utils")]

from bench.skeleton import playbook  # noqa: E402
from tests.support.audio import speak  # noqa: E402
from tests.support.loadgen import LoadGenerator  # noqa: E402

FLEET = ["-i", str(REPO / "inventories" / "local-fleet" / "hosts.yml"), "-e", "@" + str(REPO / "bench" /
                                                                                        "env-bench-fleet.yml")]
V1, V2 = "1.0.0", "1.1.0"
CLIP_TEXT = "Please turn on the kitchen lights and set the alarm for seven"


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
    parser.add_argument("--fanout", type=int, default=24, help="logical hosts for the fan-out figure")
    args = parser.parse_args()
    figures: dict[str, object] = {}
    clip = speak(CLIP_TEXT, REPO / ".cache" / "bench")
    for version in (V1, V2):
        playbook("build.yml", "-e", f"version={version}")

    fleet_run = REPO / ".run" / "fleet-bench"
    subprocess.run(["rm", "-rf", str(fleet_run)], check=True)
    try:
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
    targets = {"rolling_failed": "0"}
    width = max((len(key) for key in figures), default=0)
    for key, value in figures.items():
        target = f"   (target {targets[key]})" if key in targets else ""
        print(f"{key:<{width}}  {value}{target}", flush=True)


if __name__ == "__main__":
    main()
