#!/usr/bin/env python3
"""Walking-skeleton benchmarks: set-up, image, start-to-ready, deploy, cutover, rollback and ASR latency.

Prints figures; asserts nothing. Runs its own environment (bench/env-bench.yml: gateway 127.0.0.1:28080,
prefix xlb) on the machine's engine and registry, and removes it at the end.
Usage: .venv/bin/python bench/skeleton.py [--requests 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "module_utils")]

import xl_haproxy  # noqa: E402

from tests.support.audio import speak  # noqa: E402
from tests.support.loadgen import percentile  # noqa: E402

ENV_FILE = REPO / "bench" / "env-bench.yml"
GATEWAY = "http://127.0.0.1:28080"
SOCKET = REPO / ".run" / "bench" / "haproxy" / "admin.sock"
CLIP_TEXT = "Please turn on the kitchen lights and set the alarm for seven"  # about 3.5 s of speech
V1, V2 = "1.0.0", "1.1.0"


def playbook(name: str, *extra: str, env_file: bool = True) -> float:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_HOME": str(REPO / ".cache" / "ansible"),
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_NOCOLOR": "1"}
    args = [str(bin_dir / "ansible-playbook"), f"playbooks/{name}", *(["-e", f"@{ENV_FILE}"] if env_file else []),
            *extra]
    started = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}")
    return elapsed


def image_size_mb(ref: str) -> float:
    out = subprocess.run(["docker", "image", "inspect", "--format", "{{.Size}}", ref], capture_output=True,
                         text=True, check=True)
    return int(out.stdout) / 1e6


def start_to_ready(ref: str) -> float:
    name = "xlb-bench-ready"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    started = time.perf_counter()
    subprocess.run(["docker", "run", "-d", "--name", name, "-p", "127.0.0.1:28199:8000", ref], check=True,
                   capture_output=True)
    try:
        while time.perf_counter() - started < 300:
            try:
                if requests.get("http://127.0.0.1:28199/readyz", timeout=2).status_code == 200:
                    return time.perf_counter() - started
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        raise SystemExit("image never became ready")
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)


def _probe(seen: list[tuple[float, str]], stop: threading.Event) -> None:
    session = requests.Session()
    while not stop.is_set():
        response = session.get(f"{GATEWAY}/v1/audio/transcriptions", timeout=5)
        seen.append((time.perf_counter(), response.headers.get("X-Served-By", "")))


def cutover_ms(rounds: int = 5) -> list[float]:
    """Time from the switch command to the first response served by the new colour (cheap GET probes)."""
    results = []
    for index in range(rounds):
        servers = xl_haproxy.backend_state(str(SOCKET), "be_asr")
        live = xl_haproxy.live_servers(servers)[0]
        target = "asr_green" if live == "asr_blue" else "asr_blue"
        colour = target.split("_")[1]
        seen: list[tuple[float, str]] = []
        stop = threading.Event()

        thread = threading.Thread(target=_probe, args=(seen, stop))
        thread.start()
        time.sleep(0.3)
        switched = time.perf_counter()
        xl_haproxy.apply_weights(str(SOCKET), "be_asr", {target: 100, live: 0}, wait_up_timeout=5)
        time.sleep(0.5)
        stop.set()
        thread.join()
        first_new = next(t for t, who in seen if t >= switched and who.endswith("/" + colour))
        stale = [t for t, who in seen if t > first_new and not who.endswith("/" + colour)]
        if stale:
            print(f"  round {index}: {len(stale)} responses from the old colour after the first new one")
        results.append((first_new - switched) * 1000)
    return results


def latency(url: str, clip: Path, count: int) -> list[float]:
    session, payload, times = requests.Session(), clip.read_bytes(), []
    for _ in range(count):
        started = time.perf_counter()
        response = session.post(url, files={"file": ("clip.wav", payload, "audio/wav")}, timeout=120)
        response.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def in_process(clip: Path, count: int) -> list[float]:
    from faster_whisper import WhisperModel, decode_audio

    model = WhisperModel(str(REPO / ".cache" / "models" / "whisper-base"), device="cpu", compute_type="int8",
                         cpu_threads=2)
    audio = decode_audio(str(clip))
    list(model.transcribe(audio, language="en", beam_size=1)[0])
    times = []
    for _ in range(count):
        started = time.perf_counter()
        list(model.transcribe(decode_audio(str(clip)), language="en", beam_size=1)[0])
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    figures: dict[str, object] = {}

    figures["bootstrap_rerun_s"] = round(playbook("bootstrap.yml", env_file=False), 1)
    for version in (V1, V2):
        playbook("build.yml", "-e", f"version={version}", env_file=False)
    ref = f"127.0.0.1:5000/xlerobot/asr:{V1}"
    figures["image_size_mb"] = round(image_size_mb(ref), 1)
    figures["start_to_ready_s"] = round(start_to_ready(ref), 2)

    subprocess.run(["rm", "-rf", str(REPO / ".run" / "bench")], check=True)
    try:
        playbook("gateway.yml")
        figures["first_deploy_s"] = round(playbook("deploy.yml", "-e", f"version={V1}"), 1)
        figures["bluegreen_deploy_s"] = round(playbook("deploy.yml", "-e", f"version={V2}"), 1)
        figures["noop_deploy_s"] = round(playbook("deploy.yml", "-e", f"version={V2}"), 1)
        figures["rollback_s"] = round(playbook("rollback.yml"), 1)
        cut = cutover_ms()
        figures["cutover_ms_median"] = round(statistics.median(cut), 1)
        figures["cutover_ms_max"] = round(max(cut), 1)

        clip = speak(CLIP_TEXT, REPO / ".cache" / "bench")
        gateway = latency(f"{GATEWAY}/v1/audio/transcriptions", clip, args.requests)
        local = in_process(clip, args.requests)
        figures["clip_seconds"] = round(int(subprocess.run(["soxi", "-s", str(clip)], capture_output=True,
                                                            text=True).stdout) / 22050, 2)
        figures["asr_gateway_p50_s"] = round(percentile(gateway, 0.5), 3)
        figures["asr_gateway_p95_s"] = round(percentile(gateway, 0.95), 3)
        figures["asr_inprocess_p50_s"] = round(percentile(local, 0.5), 3)
        figures["asr_inprocess_p95_s"] = round(percentile(local, 0.95), 3)
        figures["service_overhead_ratio_p50"] = round(percentile(gateway, 0.5) / percentile(local, 0.5), 3)
    finally:
        playbook("teardown.yml")
    width = max(len(key) for key in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
