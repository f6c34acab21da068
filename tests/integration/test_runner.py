"""A real deploy through ansible-runner, the way AWX executes a job template.

The repository's `runner/` directory is the private data dir (env/envvars, env/settings, env/extravars,
inventory) and the repository root the project. The scenario has its own environment (tests/integration/
env-runner.yml: prefix xla, gateway 18280, ASR on 18201/18202, state under .run/runner), so it can run beside
the other end-to-end tests and a `make up` deploy; it removes only its own containers afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ansible_runner
import pytest
import requests
import yaml

from tests.integration.conftest import REPO, docker_names, playbook

pytestmark = [pytest.mark.integration]

RUNNER_DIR = REPO / "runner"
ENV_FILE = Path(__file__).with_name("env-runner.yml")
RUN_DIR = REPO / ".run" / "runner"
PREFIX = "xla-"
GATEWAY = "http://127.0.0.1:18280"
REGISTRY = "http://127.0.0.1:5000"
VERSION = "1.0.0"
GATES = ["liveness", "readiness", "synthetic-transcription"]
GATE_TASK = "Gates | The new instances, side by side"


def _env_playbook(name: str) -> None:
    run = playbook(name, "-e", f"@{ENV_FILE}", test_env=False)
    assert run.returncode == 0, run.output[-4000:]


@pytest.fixture(scope="module")
def runner_env() -> Iterator[None]:
    """Image 1.0.0 in the registry (built once if missing), then this environment's own gateway."""
    tags = requests.get(f"{REGISTRY}/v2/xlerobot/asr/tags/list", timeout=10)
    if tags.status_code != 200 or VERSION not in (tags.json().get("tags") or []):
        build = playbook("build.yml", "-e", f"version={VERSION}", "-e", "services=asr", test_env=False)
        assert build.returncode == 0, build.output[-4000:]
    playbook("teardown.yml", "-e", f"@{ENV_FILE}", test_env=False)  # whatever an interrupted run left behind
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    _env_playbook("gateway.yml")
    try:
        yield
    finally:
        _env_playbook("teardown.yml")
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        assert docker_names(PREFIX) == set(), "the scenario must leave no container of its own behind"


def _run(playbook: str, artifacts: Path, ident: str, **extra: Any) -> ansible_runner.Runner:
    """One job through ansible-runner: runner/ as private data dir, the repository as project."""
    extravars: dict[str, Any] = {**yaml.safe_load(ENV_FILE.read_text()), **extra}
    bin_dir = Path(sys.executable).parent
    return ansible_runner.run(
        private_data_dir=str(RUNNER_DIR),
        project_dir=str(REPO),
        artifact_dir=str(artifacts),
        ident=ident,
        playbook=playbook,
        extravars=extravars,
        envvars={"PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_HOME": str(REPO / ".cache" / "ansible")},
        quiet=True,
    )


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("artifacts")
    yield path
    # Each job's artifacts/command holds the whole environment it ran with: not kept past the test.
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def deploy(runner_env: None, artifacts: Path) -> ansible_runner.Runner:
    return _run("playbooks/deploy.yml", artifacts, "deploy", version=VERSION, strategy="bluegreen")


def test_job_is_successful(deploy: ansible_runner.Runner) -> None:
    assert deploy.status == "successful", deploy.stdout.read()[-4000:]
    assert deploy.rc == 0
    stats = deploy.stats
    assert stats is not None and not stats["failures"] and not stats["dark"]


def test_each_gate_is_an_ok_event_of_the_gate_task(deploy: ansible_runner.Runner) -> None:
    events = list(deploy.events)
    gate_events = [e for e in events if e["event"] == "runner_on_ok"
                   and e["event_data"].get("task", "") == GATE_TASK]
    assert len(gate_events) == 1, [e["event_data"].get("task") for e in events if e["event"] == "runner_on_ok"]
    # One task gates every new instance side by side; its result (what AWX shows under the task) holds each
    # instance's gates, named by service, colour and host.
    [target] = gate_events[0]["event_data"]["res"]["targets"]
    assert (target["service"], target["host"], target["passed"]) == ("asr", "localhost", True)
    assert target["colour"] in ("blue", "green")
    assert [gate["name"] for gate in target["results"]] == GATES
    assert all(gate["passed"] for gate in target["results"]), target["results"]
    # The run opens with the playbook and ends with its stats, as a job's event stream does in AWX.
    # (verbose events, such as Ansible's warnings, may come before it).
    typed = [e["event"] for e in events if e["event"] != "verbose"]
    assert typed[0] == "playbook_on_start" and typed[-1] == "playbook_on_stats"
    assert [e["counter"] for e in events] == sorted(e["counter"] for e in events)


def test_artifacts_hold_stdout_status_and_rc(deploy: ansible_runner.Runner) -> None:
    artifacts = Path(deploy.config.artifact_dir)
    assert (artifacts / "status").read_text().strip() == "successful"
    assert (artifacts / "rc").read_text().strip() == "0"
    stdout = (artifacts / "stdout").read_text()
    assert "PLAY RECAP" in stdout and GATE_TASK in stdout
    assert any((artifacts / "job_events").glob("*.json"))
    command = json.loads((artifacts / "command").read_text())
    assert command["cwd"] == str(REPO), "the project (the repository root) is the working directory"


def test_the_new_version_serves_behind_this_environments_gateway(deploy: ansible_runner.Runner) -> None:
    response = requests.post(f"{GATEWAY}/v1/audio/transcriptions", files={"file": ("a.wav", b"", "audio/wav")},
                             timeout=60)
    assert response.headers.get("X-Served-By", "").startswith(f"asr/{VERSION}/")
    assert docker_names(PREFIX) <= {f"{PREFIX}asr-blue", f"{PREFIX}asr-green"}
    assert docker_names(PREFIX), "the deploy started this environment's instance"
    history = [json.loads(line) for line in (RUN_DIR / "state" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["result"] == "success" and history[-1]["to"]["version"] == VERSION


def test_the_workflows_failure_step_leaves_the_live_release(deploy: ansible_runner.Runner, artifacts: Path) -> None:
    """The AWX workflow's rollback node (restore_only) after a deploy: nothing split, nothing older to go to."""
    before = requests.post(f"{GATEWAY}/v1/audio/transcriptions", files={"file": ("a.wav", b"", "audio/wav")},
                           timeout=60).headers.get("X-Served-By")
    restore = _run("playbooks/rollback.yml", artifacts, "restore", restore_only=True)
    assert restore.status == "successful", restore.stdout.read()[-4000:]
    switched = [e for e in restore.events if e["event"] == "runner_on_ok"
                and e["event_data"].get("task", "").startswith((GATE_TASK, "Rollback | Run the release engine"))]
    assert switched == [], "restore_only must not look for or switch to an older release"
    after = requests.post(f"{GATEWAY}/v1/audio/transcriptions", files={"file": ("a.wav", b"", "audio/wav")},
                          timeout=60).headers.get("X-Served-By")
    assert before == after and after is not None and after.startswith(f"asr/{VERSION}/")
