"""A bounded load generator: threads that post a clip (or a JSON body) to the gateway and record every outcome.

Used by the end-to-end tests (zero failed requests across a deploy) and by the benchmarks. It only talks
to the URL it is given, which the callers keep on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests


@dataclass
class Outcome:
    started: float
    seconds: float
    status: int  # 0: no HTTP answer
    served_by: str
    error: str = ""


@dataclass
class LoadGenerator:
    url: str
    audio: Path | None = None  # posted as the multipart field `audio_field` (speech recognition, multimodal)
    concurrency: int = 2
    max_seconds: float = 600.0  # hard stop, so a forgotten generator never runs on
    timeout: float = 120.0
    outcomes: list[Outcome] = field(default_factory=list)
    json_body: dict[str, Any] | None = None  # posted as JSON instead of a clip (speech synthesis)
    audio_field: str = "file"
    pause_s: float = 0.0  # think time of each client between its requests (0: back to back)
    headers: dict[str, str] | None = None  # sent with every request (an API key)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        if (self.audio is None) == (self.json_body is None):
            raise ValueError("give either an audio clip or a JSON body to post")
        self._payload = self.audio.read_bytes() if self.audio else b""

    def _post(self, session: requests.Session) -> requests.Response:
        if self.json_body is not None:
            return session.post(self.url, json=self.json_body, timeout=self.timeout)
        return session.post(self.url, files={self.audio_field: ("clip.wav", self._payload, "audio/wav")},
                            timeout=self.timeout)

    def _worker(self) -> None:
        session = requests.Session()
        session.headers.update(self.headers or {})
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            try:
                response = self._post(session)
                outcome = Outcome(started, time.monotonic() - started, response.status_code,
                                  response.headers.get("X-Served-By", ""),
                                  "" if response.ok else response.text[:200])
            except requests.RequestException as exc:
                outcome = Outcome(started, time.monotonic() - started, 0, "", f"{type(exc).__name__}: {exc}")
            with self._lock:
                self.outcomes.append(outcome)
            if self.pause_s:
                self._stop.wait(self.pause_s)

    def start(self) -> "LoadGenerator":
        for index in range(self.concurrency):
            thread = threading.Thread(target=self._worker, name=f"load-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> list[Outcome]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
        return self.outcomes

    def wait_for_answers_after(self, moment: float, count: int = 3, timeout: float = 90.0) -> None:
        """Wait until `count` requests sent after `moment` (time.monotonic) are answered; a busy machine answers
        late, and a fixed sleep would then judge nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                answered = sum(1 for outcome in self.outcomes if outcome.started > moment)
            if answered >= count:
                return
            time.sleep(0.2)

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def failures(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status != 200]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]
