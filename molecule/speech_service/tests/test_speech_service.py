"""The speech_service role converged on a systemd host with its own engine and registry: two instances of asr
(blue and green) run as the role means them to, a third was started and removed, and bad inputs were refused."""

import json
import os
import shlex
import time
from pathlib import Path

import pytest
import yaml

RUNTIME_DIR = "/var/lib/xlerobot/runtime"
RUNTIME_MOUNT = "/etc/xlerobot/runtime"
HEALTHCHECK = ["CMD", "python3", "-m", "xl_service.healthcheck"]
MEMORY_UNITS = {"k": 1024, "m": 1024**2, "g": 1024**3}
# The memory limit of the cgroup a container runs in, read from inside it (cgroup v1 or v2).
CGROUP_MEMORY_LIMIT = """
import os
for path in ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"):
    if os.path.exists(path):
        print(open(path).read().strip())
        break
"""
# Asks one of the instance's endpoints from the test host itself, as the gateway and the deploy gates do.
HTTP_GET = """
import json, sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
        print(json.dumps({"status": answer.status, "body": json.load(answer)}))
except urllib.error.HTTPError as error:
    print(json.dumps({"status": error.code, "body": None}))
"""


@pytest.fixture(scope="module")
def scenario():
    """What converge gave the role (vars/scenario.yml): the instances, the secret, the repository."""
    return yaml.safe_load((Path(__file__).parents[1] / "vars" / "scenario.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def instances(scenario):
    return scenario["molecule_instances"]


@pytest.fixture(scope="module")
def containers(host, instances):
    """`docker inspect` of each colour's instance, by colour, read once."""
    found = json.loads(host.check_output(f"docker inspect {' '.join(f'xl-asr-{colour}' for colour in instances)}"))
    return {container["Config"]["Labels"]["io.xlerobot.colour"]: container for container in found}


def inspect(host, name):
    return json.loads(host.check_output(f"docker inspect {name}"))[0]


def http_get(host, port, path):
    return json.loads(host.check_output(f"python3 -c {shlex.quote(HTTP_GET)} http://127.0.0.1:{port}{path}"))


def test_each_colour_runs_under_the_role_name_scheme_with_its_labels(instances, containers):
    assert set(containers) == set(instances)
    for colour, spec in instances.items():
        container = containers[colour]
        assert container["Name"] == f"/xl-asr-{colour}"
        assert container["State"]["Running"], colour
        labels = {key: value for key, value in container["Config"]["Labels"].items() if key.startswith("io.xlerobot.")}
        assert labels.pop("io.xlerobot.config").startswith("cfg-")
        assert labels == {
            "io.xlerobot.service": "asr",
            "io.xlerobot.colour": colour,
            "io.xlerobot.version": spec["version"],
            "io.xlerobot.release": spec["release"],
            "io.xlerobot.environment": "molecule",
        }
    # The settings label follows the settings: the two colours run with different memory limits.
    assert len({container["Config"]["Labels"]["io.xlerobot.config"] for container in containers.values()}) == 2


def test_instances_run_the_image_pulled_by_digest_from_the_registry(host, containers, scenario):
    for container in containers.values():
        reference = container["Config"]["Image"]
        repository, _, digest = reference.partition("@")
        assert repository == scenario["molecule_repository"]
        assert digest.startswith("sha256:") and len(digest) == 71
        # The engine knows the image under that digest only because it was pulled (or pushed) by it.
        assert reference in json.loads(host.check_output(f"docker image inspect {reference}"))[0]["RepoDigests"]


def test_published_only_on_loopback_and_the_given_port(host, instances, containers):
    for colour, spec in instances.items():
        container = containers[colour]
        binding = [{"HostIp": "127.0.0.1", "HostPort": str(spec["port"])}]
        assert container["HostConfig"]["PortBindings"] == {"8000/tcp": binding}
        assert container["NetworkSettings"]["Ports"] == {"8000/tcp": binding}
        listening = {line.split()[3] for line in host.check_output("ss -Hltn").splitlines()}
        on_port = {address for address in listening if address.endswith(f":{spec['port']}")}
        assert on_port == {f"127.0.0.1:{spec['port']}"}


def test_the_memory_limit_is_set_and_applied_by_the_kernel(host, instances, containers):
    for colour, spec in instances.items():
        limit = int(spec["memory"][:-1]) * MEMORY_UNITS[spec["memory"][-1]]
        assert containers[colour]["HostConfig"]["Memory"] == limit
        # The kernel enforces it on the instance's own cgroup.
        seen = host.check_output(f"docker exec xl-asr-{colour} python3 -c {shlex.quote(CGROUP_MEMORY_LIMIT)}")
        assert int(seen) == limit


def test_hardened_as_the_role_runs_every_instance(containers):
    for container in containers.values():
        config = container["HostConfig"]
        assert config["ReadonlyRootfs"] is True
        assert config["CapDrop"] == ["ALL"]
        assert config["SecurityOpt"] == ["no-new-privileges"]
        assert config["Tmpfs"] == {"/tmp": ""}  # noqa: S108 - the instance's own tmpfs, inside the container
        assert config["RestartPolicy"]["Name"] == "unless-stopped"
        assert config["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "20m", "max-file": "3"}}
        assert container["Config"]["StopTimeout"] == 5
        assert container["Config"]["User"] == "10001"


def test_the_image_healthcheck_reports_healthy(host, instances, containers):
    for container in containers.values():
        assert container["Config"]["Healthcheck"]["Test"] == HEALTHCHECK
    # The image checks every 2 s: healthy well within this, unless the check itself cannot run or fails.
    deadline = time.monotonic() + 30
    while True:
        states = {colour: inspect(host, f"xl-asr-{colour}")["State"]["Health"]["Status"] for colour in instances}
        if set(states.values()) == {"healthy"} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert states == dict.fromkeys(instances, "healthy")


def test_each_port_answers_health_for_its_own_instance(host, instances):
    for colour, spec in instances.items():
        assert http_get(host, spec["port"], "/healthz") == {"status": 200,
                                                            "body": {"status": "alive", "service": "asr"}}
        assert http_get(host, spec["port"], "/readyz")["status"] == 200
        version = http_get(host, spec["port"], "/version")["body"]
        assert version == {"service": "asr", "version": spec["version"], "colour": colour, "release": spec["release"]}


def test_the_runtime_file_is_root_owned_0644_mounted_read_only_and_applied(host, instances, containers):
    for colour, spec in instances.items():
        directory = host.file(f"{RUNTIME_DIR}/xl-asr-{colour}")
        assert directory.is_directory and directory.mode == 0o755 and directory.user == "root"
        runtime_file = host.file(f"{RUNTIME_DIR}/xl-asr-{colour}/runtime.json")
        assert runtime_file.mode == 0o644
        assert (runtime_file.user, runtime_file.group) == ("root", "root")
        runtime = json.loads(runtime_file.content_string)
        assert runtime["env"] == {"XL_LOG_LEVEL": spec["log_level"]}
        assert runtime["version"].startswith("rt-")

        container = containers[colour]
        assert [(m["Type"], m["Source"], m["Destination"], m["RW"]) for m in container["Mounts"]] == [
            ("bind", f"{RUNTIME_DIR}/xl-asr-{colour}", RUNTIME_MOUNT, False)]
        assert f"XL_RUNTIME_FILE={RUNTIME_MOUNT}/runtime.json" in container["Config"]["Env"]
        # The instance read that file (the shared library's LiveSettings answers /runtime).
        applied = http_get(host, spec["port"], "/runtime")["body"]
        assert applied["version"] == runtime["version"]
        assert applied["reloadable"] == {"log_level": spec["log_level"]}
        # Nor can it write to it, not even as root.
        append = f"open('{RUNTIME_MOUNT}/runtime.json', 'a')"
        write = host.run(f"docker exec --user 0 xl-asr-{colour} python3 -c {shlex.quote(append)}")
        assert write.rc != 0 and "Read-only file system" in write.stderr


def test_the_instance_environment_holds_identity_and_the_secret(instances, containers, scenario):
    for colour, spec in instances.items():
        env = containers[colour]["Config"]["Env"]
        assert f"XL_API_KEY={scenario['molecule_secret']}" in env
        assert {"XL_SERVICE=asr", f"XL_COLOUR={colour}", f"XL_VERSION={spec['version']}",
                f"XL_RELEASE={spec['release']}", "XL_FAULT="} <= set(env)


def test_no_run_printed_the_secret(scenario):
    """converge runs verbose with --diff and logs to the ephemeral directory (molecule.yml): the role's container
    task must hide its result, so the secret appears nowhere, while verbose results of other tasks do."""
    log = (Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.log").read_text(encoding="utf-8")
    # What was logged since this test host was created (a run that was killed leaves its log behind).
    log = log[max(log.rfind("PLAY [Create]"), 0):]
    assert "TASK [speech_service : Container - asr/blue]" in log
    assert "TASK [speech_service : Container - asr/green]" in log
    assert "docker_content_digest" in log  # a verbose result: the log holds task results, not only names
    assert "censored: 'the output has been hidden" in log
    assert scenario["molecule_secret"] not in log


def container_ids(host, name):
    return host.check_output(f"docker ps --all --quiet --filter name=^/{name}$")


def test_the_removed_instance_is_gone(host):
    assert container_ids(host, "xl-asr-blue") != ""  # the same query finds an instance that is there
    assert container_ids(host, "xl-tts-blue") == ""
    assert host.file("/var/lib/xlerobot/runtime/xl-asr-blue").is_directory
    assert not host.file("/var/lib/xlerobot/runtime/xl-tts-blue").exists, "its runtime settings went with it"


def test_refused_inputs_left_nothing_behind(host):
    assert container_ids(host, "xl-asr-red") == ""
    assert not host.file(f"{RUNTIME_DIR}/xl-asr-red").exists
