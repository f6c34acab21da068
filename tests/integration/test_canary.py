"""Canary end to end: weighted steps through the real HAProxy, analysis against the real Prometheus, automatic
abort on a bad version, and the deploy lock (including a run killed halfway and re-run).

Starts from the state the blue-green scenario leaves (1.0.0 live on blue) and ends with 1.0.0 live again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xl_haproxy

from tests.integration.conftest import (
    CRASHES,
    ENV_FILE,
    ERRORS,
    GOOD,
    NEXT,
    REPO,
    RUN_DIR,
    TRANSCRIBE,
    docker_names,
    playbook,
    served_by,
    services_overrides,
)
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

GATE_TEXT = "Turn off the radio in the living room"
# Short steps so the scenario fits a test run; the defaults are 5 -> 20 -> 50 -> 100 with 30 s pauses.
STEPS = [{"setWeight": 25}, {"pause": {"duration": 10}}, {"analysis": {}}, {"setWeight": 60},
         {"pause": {"duration": 5}}, {"analysis": {}}, {"setWeight": 100}]
ANALYSIS = {"window": "30s", "count": 2, "interval": 5}


def _canary(version: str, *extra: str):
    overrides = services_overrides(asr={"canary": {"steps": STEPS, "analysis": ANALYSIS}})
    return playbook("deploy.yml", "-e", "strategy=canary", "-e", f"version={version}", "-e", json.dumps(overrides),
                    *extra)


def _history() -> list[dict]:
    return [json.loads(line) for line in (RUN_DIR / "state" / "history.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", autouse=True)
def good_is_live() -> None:
    run = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}")
    assert run.returncode == 0, run.output[-4000:]
    assert set(served_by(1)) == {f"asr/{GOOD}/blue"}


def test_canary_walks_its_steps_under_load_and_promotes(golden_clips: dict[str, Path]) -> None:
    with LoadGenerator(TRANSCRIBE, golden_clips[GATE_TEXT], concurrency=2) as load:
        time.sleep(2)
        run = _canary(NEXT)
        finished = time.monotonic()
        load.wait_for_answers_after(finished)
    assert run.returncode == 0, run.output[-5000:]
    assert load.failures == [], load.failures[:5]
    during = {o.served_by for o in load.outcomes if o.started < finished}
    assert {f"asr/{GOOD}/blue", f"asr/{NEXT}/green"} <= during, "traffic was never split between the colours"
    after = [o.served_by for o in load.outcomes if o.started > finished]
    assert after and set(after) == {f"asr/{NEXT}/green"}
    event = _history()[-1]
    assert event["strategy"] == "canary" and event["result"] == "success"
    weights = [step["weights"] for step in event["steps"] if "weights" in step]
    assert [w["asr_green"] for w in weights] == [25, 60, 100]
    assert [w["asr_blue"] for w in weights] == [75, 40, 0]
    phases = [step["analysis"]["phase"] for step in event["steps"] if "analysis" in step]
    assert phases == ["SUCCESSFUL", "SUCCESSFUL"], phases


def test_a_failing_analysis_aborts_and_returns_all_traffic(golden_clips: dict[str, Path]) -> None:
    # 1.1.0 is live on green now; the faulty version answers 30 % of requests with HTTP 500.
    with LoadGenerator(TRANSCRIBE, golden_clips[GATE_TEXT], concurrency=2) as load:
        time.sleep(2)
        run = _canary(ERRORS)
        finished = time.monotonic()
        load.wait_for_answers_after(finished)
    assert run.returncode != 0
    assert "canary deploy of asr" in run.output and "error-ratio" in run.output, run.output[-4000:]
    assert f"Traffic stays on green ({NEXT})" in run.output
    assert all(o.served_by == f"asr/{ERRORS}/blue" for o in load.failures), load.failures[:5]
    canary_share = sum(o.served_by.endswith("/blue") for o in load.outcomes) / max(len(load.outcomes), 1)
    assert canary_share <= 0.5, f"the canary got {canary_share:.0%} of the requests"
    after = [o.served_by for o in load.outcomes if o.started > finished]
    assert after and set(after) == {f"asr/{NEXT}/green"}
    assert "xlt-asr-blue" not in docker_names()
    event = _history()[-1]
    assert event["result"] == "aborted" and event["strategy"] == "canary"


def test_a_canary_that_crashes_after_taking_traffic_is_caught_by_its_restart_count(
        golden_clips: dict[str, Path]) -> None:
    # 1.1.0 is live on green; the faulty version passes its gates and its process dies 10 s after its first
    # transcription (Docker restarts it, and it dies again): its fresh counters look healthy, its restart
    # count does not.
    with LoadGenerator(TRANSCRIBE, golden_clips[GATE_TEXT], concurrency=2) as load:
        time.sleep(2)
        run = _canary(CRASHES)
        finished = time.monotonic()
        load.wait_for_answers_after(finished)
    assert run.returncode != 0
    assert "canary deploy of asr" in run.output and "crashed while taking traffic" in run.output, run.output[-4000:]
    assert f"Traffic stays on green ({NEXT})" in run.output
    # Requests lost in the crash are at most the canary's share; the stable colour lost none.
    assert not [o for o in load.failures if o.served_by == f"asr/{NEXT}/green"], load.failures[:5]
    assert len(load.failures) <= 0.25 * len(load.outcomes) + 1, (len(load.failures), len(load.outcomes))
    after = [o.served_by for o in load.outcomes if o.started > finished]
    assert after and set(after) == {f"asr/{NEXT}/green"}
    assert "xlt-asr-blue" not in docker_names()
    assert _history()[-1]["result"] == "aborted"


def test_freeze_leaves_a_failed_canary_in_place_and_rollback_restores_the_live_colour(
        golden_clips: dict[str, Path]) -> None:
    # 1.1.0 is live on green; the faulty canary fails its analysis, and rollback=false keeps the split.
    with LoadGenerator(TRANSCRIBE, golden_clips[GATE_TEXT], concurrency=2) as load:
        time.sleep(2)
        run = _canary(ERRORS, "-e", "rollback=false")
    assert run.returncode != 0
    assert "Frozen (rollback=false)" in run.output, run.output[-3000:]
    assert load.outcomes
    weights = xl_haproxy.backend_state(str(RUN_DIR / "haproxy" / "admin.sock"), "be_asr")
    assert {name: server["weight"] for name, server in weights.items()} == {"asr_blue": 25, "asr_green": 75}
    assert "xlt-asr-blue" in docker_names(), "a frozen canary keeps running"
    assert _history()[-1]["result"] == "frozen"
    refused = _canary(NEXT)
    assert refused.returncode != 0 and "both colours take traffic" in refused.output
    restore = playbook("rollback.yml")
    assert restore.returncode == 0, restore.output[-4000:]
    assert set(served_by(4)) == {f"asr/{NEXT}/green"}
    assert "xlt-asr-blue" not in docker_names()
    assert _history()[-1]["strategy"] == "restore"


def test_a_second_deploy_waits_for_the_lock_and_a_killed_run_converges_after_breaking_it() -> None:
    env = {"ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_HOME": str(REPO / ".cache" / "ansible")}
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "ansible-playbook"), "playbooks/deploy.yml", "-e", f"@{ENV_FILE}", "-e",
               "strategy=bluegreen", "-e", f"version={GOOD}"]
    first = subprocess.Popen(command, cwd=REPO, env={**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lock = RUN_DIR / "state" / "deploy.lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lock.exists(), "the first deploy never took the lock"
    second = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}")
    assert second.returncode != 0
    holder = json.loads(lock.read_text())
    assert "lock" in second.output and holder["release"] in second.output, second.output[-3000:]
    assert "break_lock=true" in second.output
    # Kill the first run mid-deploy, the way a lost controller or a cancelled job would.
    while "xlt-asr-blue" not in docker_names() and time.monotonic() < deadline:
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert lock.exists(), "a killed run leaves its lock behind"
    refused = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}")
    assert refused.returncode != 0 and "break_lock=true" in refused.output
    rerun = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "break_lock=true")
    assert rerun.returncode == 0, rerun.output[-4000:]
    assert not lock.exists()
    names = [name for name in docker_names() if name.startswith("xlt-asr-")]
    assert sorted(names) == sorted(set(names)) and len(names) <= 2
    assert set(served_by(2)) == {f"asr/{GOOD}/blue"}
