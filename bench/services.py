#!/usr/bin/env python3
"""Service benchmarks: latency (p50/p95) and throughput of every service through the gateway at concurrency 1
and 4, each image's size and time from `docker run` to ready, next to the seed's p95 targets.

Prints figures; asserts nothing. Runs its own environment (bench/env-bench.yml, gateway 127.0.0.1:28080) on the
machine's engine and registry, and removes it at the end. The multimodal figure is a whole voice interaction
(the spoken question through ASR, the LLM and TTS, each reached through the gateway).
Usage: .venv/bin/python bench/services.py [--requests 12]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugins" / "module_utils")]

from bench.skeleton import image_size_mb, playbook, start_to_ready  # noqa: E402
from tests.support.audio import speak  # noqa: E402
from tests.support.loadgen import percentile  # noqa: E402

GATEWAY = "http://127.0.0.1:28080"
VERSION = "1.0.0"
TARGET_P95_S = {"asr": 1.2, "tts": 0.7, "llm": 1.6, "multimodal": 2.4}


def senders(clip: bytes) -> dict[str, Callable[[requests.Session], requests.Response]]:
    """One representative request per service: a 3.5 s utterance, a short sentence, a short chat turn, and that
    utterance as a spoken request to the multimodal service."""
    return {
        "asr": lambda s: s.post(f"{GATEWAY}/v1/audio/transcriptions", files={"file": ("c.wav", clip, "audio/wav")},
                                timeout=120),
        "tts": lambda s: s.post(f"{GATEWAY}/v1/audio/speech", json={"input": "The kitchen lights are now on."},
                                timeout=120),
        "llm": lambda s: s.post(f"{GATEWAY}/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": "Say hello to the user."}], "max_tokens": 24}),
        "multimodal": lambda s: s.post(f"{GATEWAY}/v1/interact", files={"audio": ("q.wav", clip, "audio/wav")},
                                       timeout=180),
    }


def measure(send: Callable[[requests.Session], requests.Response], concurrency: int,
            total: int) -> tuple[float, float, float, int]:
    """(p50 s, p95 s, requests per second, failed) of `total` requests sent by `concurrency` clients."""
    def client(count: int) -> list[tuple[float, bool]]:
        session, results = requests.Session(), []
        for _ in range(count):
            started = time.perf_counter()
            ok = send(session).status_code == 200
            results.append((time.perf_counter() - started, ok))
        return results

    shares = [total // concurrency + (1 if index < total % concurrency else 0) for index in range(concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [item for part in pool.map(client, shares) for item in part]
    elapsed = time.perf_counter() - started
    seconds = [s for s, _ in results]
    return percentile(seconds, 0.5), percentile(seconds, 0.95), len(results) / elapsed, sum(not ok for _, ok in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12, help="requests per service and concurrency")
    args = parser.parse_args()
    playbook("build.yml", "-e", f"version={VERSION}")
    rows: list[str] = []
    for service in TARGET_P95_S:
        ref = f"127.0.0.1:5000/xlerobot/{service}:{VERSION}"
        size, ready = image_size_mb(ref), start_to_ready(ref)
        rows.append(f"{service:<11} image {size:7.1f} MB   docker run -> ready {ready:5.2f} s")

    utterance = "Please turn on the kitchen lights and set the alarm for seven"  # about 3.5 s of speech
    clip = speak(utterance, REPO / ".cache" / "bench").read_bytes()
    subprocess.run(["rm", "-rf", str(REPO / ".run" / "bench")], check=True)
    try:
        playbook("gateway.yml")
        playbook("deploy.yml", "-e", f"version={VERSION}")
        for service, send in senders(clip).items():
            measure(send, 1, 2)  # warm the path
            for concurrency in (1, 4):
                p50, p95, rate, failed = measure(send, concurrency, args.requests)
                rows.append(f"{service:<11} c={concurrency}  p50 {p50:6.3f} s  p95 {p95:6.3f} s  {rate:5.2f} req/s  "
                            f"failed {failed}   (target p95 {TARGET_P95_S[service]} s)")
    finally:
        playbook("teardown.yml")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
