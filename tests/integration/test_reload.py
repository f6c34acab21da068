"""Runtime settings reach running instances without a restart: playbooks/reload.yml under load, a setting the
service does not reload refused with the instance and its file as they were, a bad value stopped by the schema."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import GOOD, RUN_DIR, TRANSCRIBE, playbook, served_by, services_overrides
from tests.support.loadgen import LoadGenerator

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("test_env")]

PORTS = {"blue": 18101, "green": 18102}
CONFIG_RECORD = RUN_DIR / "config" / "applied.json"


def _reload(runtime: dict[str, object]) -> str:
    return json.dumps(services_overrides(asr={"runtime": runtime}))


def _started(container: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", container], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_runtime_settings_reach_the_live_instance_under_load(golden_clips: dict[str, Path]) -> None:
    live = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "services=asr")
    assert live.returncode == 0, live.output[-3000:]
    colour = served_by(1)[0].split("/")[-1]
    container, runtime_url = f"xlt-asr-{colour}", f"http://127.0.0.1:{PORTS[colour]}/runtime"
    runtime_file = RUN_DIR / "runtime" / container / "runtime.json"
    started = _started(container)

    load = LoadGenerator(TRANSCRIBE, golden_clips["Turn off the radio in the living room"], concurrency=2).start()
    try:
        time.sleep(3)
        run = playbook("reload.yml", "-e", _reload({"beam_size": 2, "log_level": "DEBUG"}))
        load.wait_for_answers_after(time.monotonic())
    finally:
        load.stop()
    assert run.returncode == 0, run.output[-4000:]
    assert load.outcomes and not load.failures, load.failures[:3]
    assert _started(container) == started, "the same container served throughout"
    applied = requests.get(runtime_url, timeout=5).json()
    assert applied["reloadable"]["beam_size"] == 2 and applied["reloadable"]["log_level"] == "DEBUG"
    assert applied["error"] is None and applied["version"].startswith("rt-")
    assert json.loads(runtime_file.read_text()) == {"version": applied["version"],
                                                     "env": {"ASR_BEAM_SIZE": "2", "XL_LOG_LEVEL": "DEBUG"}}
    debug_config = json.loads(CONFIG_RECORD.read_text())
    assert debug_config["config"]["services"]["asr"]["runtime"] == {"beam_size": 2, "log_level": "DEBUG"}

    again = playbook("reload.yml", "-e", _reload({"beam_size": 2, "log_level": "DEBUG"}))
    assert again.returncode == 0 and again.changed == 0, again.output[-3000:]

    # A setting speech recognition does not reload: refused by the instance, which keeps what it had.
    before = runtime_file.read_text()
    refused = playbook("reload.yml", "-e", _reload({"beam_size": 2, "log_level": "DEBUG", "max_tokens": 5}))
    assert refused.returncode != 0
    # The YAML callback folds long messages: compare with the line breaks undone.
    said = " ".join(refused.output.split())
    assert f"asr/{colour} ({container}) refused runtime settings" in said
    assert "ASR_MAX_TOKENS: not a runtime setting of this service" in said, refused.output[-3000:]
    assert runtime_file.read_text() == before, "the previous runtime file is back"
    kept = requests.get(runtime_url, timeout=5).json()
    assert kept["version"] == applied["version"] and kept["reloadable"]["beam_size"] == 2
    assert _started(container) == started

    # A value the schema refuses stops before any host is touched.
    invalid = playbook("reload.yml", "-e", _reload({"beam_size": 0}))
    assert invalid.returncode != 0 and "services.asr.runtime.beam_size" in invalid.output
    assert runtime_file.read_text() == before

    # Back to the catalogue's settings, for the scenarios after this one.
    reset = playbook("reload.yml")
    assert reset.returncode == 0, reset.output[-3000:]
    assert requests.get(runtime_url, timeout=5).json()["reloadable"]["beam_size"] == 1
    catalogue_version = json.loads(CONFIG_RECORD.read_text())["version"]
    assert catalogue_version != debug_config["version"]

    # A configuration rollback is one run: the recorded version with beam size 2 comes back, same container.
    back = playbook("config_rollback.yml", "-e", f"config_version={debug_config['version']}")
    assert back.returncode == 0, back.output[-4000:]
    assert f"{catalogue_version} -> {debug_config['version']}: services.asr.runtime.beam_size, " \
           "services.asr.runtime.log_level" in " ".join(back.output.split())
    restored = requests.get(runtime_url, timeout=5).json()
    assert restored["reloadable"]["beam_size"] == 2 and restored["reloadable"]["log_level"] == "DEBUG"
    assert _started(container) == started
    record = json.loads(CONFIG_RECORD.read_text())
    assert record["version"] == debug_config["version"] and record["config"] == debug_config["config"]
    last = json.loads(Path(f"{CONFIG_RECORD}.history.jsonl").read_text().splitlines()[-1])
    assert last["restored"] is True and last["previous_version"] == catalogue_version

    # A version never applied here is refused by name, and nothing changes.
    unknown = playbook("config_rollback.yml", "-e", "config_version=cfg-0123456789ab")
    assert unknown.returncode != 0
    assert "configuration version cfg-0123456789ab was never applied" in " ".join(unknown.output.split())
    assert json.loads(CONFIG_RECORD.read_text())["version"] == debug_config["version"]

    # A reload that also carries a setting needing new instances pushes the runtime part and records nothing.
    mixed = playbook("reload.yml", "-e", json.dumps(services_overrides(asr={"memory": "2g"})))
    assert mixed.returncode == 0, mixed.output[-3000:]
    assert "take effect only with new instances" in " ".join(mixed.output.split())
    assert "services.asr.memory" in mixed.output
    assert json.loads(CONFIG_RECORD.read_text())["version"] == debug_config["version"]
    assert requests.get(runtime_url, timeout=5).json()["reloadable"]["beam_size"] == 1

    # And back to the catalogue's version for the scenarios after this one.
    again = playbook("config_rollback.yml", "-e", f"config_version={catalogue_version}")
    assert again.returncode == 0, again.output[-3000:]
    assert json.loads(CONFIG_RECORD.read_text())["version"] == catalogue_version


def _memory(container: str) -> int:
    return int(subprocess.run(["docker", "inspect", "-f", "{{.HostConfig.Memory}}", container], check=True,
                              capture_output=True, text=True).stdout)


def test_a_setting_that_needs_new_instances_is_deployed_even_on_the_same_version() -> None:
    live = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "services=asr")
    assert live.returncode == 0, live.output[-3000:]
    colour = served_by(1)[0].split("/")[-1]
    catalogue_version = json.loads(CONFIG_RECORD.read_text())["version"]
    bigger = ["-e", json.dumps(services_overrides(asr={"memory": "2g"}))]

    # Same image, other memory: the live instances are not the target, so the other colour starts with it.
    changed = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "services=asr", *bigger)
    assert changed.returncode == 0, changed.output[-4000:]
    said = " ".join(changed.output.split())
    assert "started with settings cfg-" in said and "already live" not in said
    other = served_by(1)[0].split("/")[-1]
    assert other != colour
    assert _memory(f"xlt-asr-{other}") == 2 * 1024**3 and _memory(f"xlt-asr-{colour}") != 2 * 1024**3
    record = json.loads(CONFIG_RECORD.read_text())
    assert record["config"]["services"]["asr"]["memory"] == "2g", "a deploy records what it brought to instances"
    assert record["version"] != catalogue_version

    # Once deployed, the same configuration is live: nothing to do.
    same = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "services=asr", *bigger)
    assert same.returncode == 0 and "already live" in " ".join(same.output.split()), same.output[-3000:]
    assert served_by(1)[0].split("/")[-1] == other

    # Back to the catalogue's memory: the warm old colour runs exactly that, so it takes the traffic again.
    back = playbook("deploy.yml", "-e", "strategy=bluegreen", "-e", f"version={GOOD}", "-e", "services=asr")
    assert back.returncode == 0, back.output[-3000:]
    assert "warm instance reused" in " ".join(back.output.split())
    assert served_by(1)[0].split("/")[-1] == colour
    assert json.loads(CONFIG_RECORD.read_text())["version"] == catalogue_version
