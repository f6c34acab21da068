"""xl_config and the speech_config module: layers, merge with origins, schema, policies, version and diff.

Config trees are written into tmp_path; the module tests run the real module through `ansible` on localhost.
The merge properties use hypothesis when it is installed (it is not in requirements.txt yet).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import xl_config as cfg

from tests.support import ansible_cli

REPO = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO / "config" / "schema.json"
# The project venv: the checkout's own, else the one running these tests (a worktree shares the main venv).
VENV_BIN = REPO / ".venv" / "bin" if (REPO / ".venv" / "bin").is_dir() else Path(sys.executable).parent

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    HAVE_HYPOTHESIS = True
except ImportError:
    HAVE_HYPOTHESIS = False

ASR = {
    "image": "xlerobot/asr",
    "container_port": 8000,
    "paths": ["/v1/audio/transcriptions"],
    "ports": {"blue": 18001, "green": 18002},
    "memory": "3g",
    "gates": [{"name": "liveness", "type": "liveness", "timeout": 60}],
}
PRODUCTION_GATEWAY = {
    "tls": {"enabled": True, "certificate": "/etc/haproxy/certs/gateway.pem"},
    "auth": {"enabled": True, "api_keys": {"vault": "secret/xlerobot/gateway#api_keys"}},
}


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def write_yaml(root: Path, relative: str, data: Any) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def layer(data: dict[str, Any], name: str = "base", path: str = "x.yml") -> cfg.Layer:
    return cfg.Layer(name=name, path=path, data=data)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return cfg.load_schema(str(SCHEMA_PATH))


def violations_of(merged: dict[str, Any], schema: dict[str, Any], environment: str = "local",
                  origins: dict[str, str] | None = None) -> list[cfg.Violation]:
    origins = origins if origins is not None else cfg.merge([layer(merged)])[1]
    return cfg.validate(merged, schema, origins) + cfg.check_policies(merged, environment, origins)


# --- loading and merging ---------------------------------------------------------------------------------------


def test_layers_in_order_with_origins(tmp_path: Path) -> None:
    write(tmp_path, "base/20-services.yml", """
        services:
          asr: {image: xlerobot/asr, memory: 3g, stop_timeout: 60, env: {A: "1"}}
        """)
    write(tmp_path, "base/10-gateway.yml", "gateway: {frontend_port: 8080}\n")
    write(tmp_path, "environments/staging/services.yml", "services: {asr: {memory: 4g}}\n")
    write(tmp_path, "environments/production/services.yml", "services: {asr: {memory: 9g}}\n")
    write(tmp_path, "services/asr/limits.yml", "stop_timeout: 90\nenv: {B: '2'}\n")
    write(tmp_path, "runtime/tuning.yml", "services: {asr: {runtime: {beam_size: 3}}}\n")
    write(tmp_path, "secrets/gateway.yml", "gateway: {auth: {api_keys: 'vault:gateway#keys'}}\n")
    layers = cfg.load_layers(str(tmp_path), "staging")
    assert [item.origin for item in layers] == [
        "base:base/10-gateway.yml", "base:base/20-services.yml", "environment:environments/staging/services.yml",
        "service:services/asr/limits.yml", "runtime:runtime/tuning.yml", "secrets:secrets/gateway.yml"]
    merged, origins = cfg.merge(layers)
    assert merged["services"]["asr"] == {"image": "xlerobot/asr", "memory": "4g", "stop_timeout": 90,
                                         "env": {"A": "1", "B": "2"}, "runtime": {"beam_size": 3}}
    assert origins == {
        "gateway.frontend_port": "base:base/10-gateway.yml",
        "gateway.auth.api_keys": "secrets:secrets/gateway.yml",
        "services.asr.image": "base:base/20-services.yml",
        "services.asr.memory": "environment:environments/staging/services.yml",
        "services.asr.stop_timeout": "service:services/asr/limits.yml",
        "services.asr.env.A": "base:base/20-services.yml",
        "services.asr.env.B": "service:services/asr/limits.yml",
        "services.asr.runtime.beam_size": "runtime:runtime/tuning.yml",
    }


def test_files_within_a_layer_are_read_in_sorted_order(tmp_path: Path) -> None:
    write(tmp_path, "base/b.yml", "value: from-b\n")
    write(tmp_path, "base/a.yml", "value: from-a\n")
    write(tmp_path, "base/.hidden.yml", "value: hidden\n")
    merged, origins = cfg.merge(cfg.load_layers(str(tmp_path), "local"))
    assert merged == {"value": "from-b"}
    assert origins == {"value": "base:base/b.yml"}


def test_environment_layer_is_optional_and_base_is_not(tmp_path: Path) -> None:
    write(tmp_path, "base/services.yml", "services: {}\n")
    assert [item.name for item in cfg.load_layers(str(tmp_path), "test")] == ["base"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(cfg.ConfigError, match="base layer is required"):
        cfg.load_layers(str(tmp_path / "empty"), "test")
    with pytest.raises(cfg.ConfigError, match="does not exist"):
        cfg.load_layers(str(tmp_path / "nothing"), "test")
    with pytest.raises(cfg.ConfigError, match="environment name"):
        cfg.load_layers(str(tmp_path), "../base")


def test_service_files_need_a_service_directory(tmp_path: Path) -> None:
    write(tmp_path, "base/services.yml", "services: {}\n")
    write(tmp_path, "services/asr.yml", "image: xlerobot/asr\n")
    with pytest.raises(cfg.ConfigError, match=r"services/asr\.yml: service files belong in"):
        cfg.load_layers(str(tmp_path), "local")


def test_plus_key_appends_to_the_earlier_list() -> None:
    merged, origins = cfg.merge([
        layer({"services": {"asr": {"paths": ["/v1/a"]}}}),
        layer({"services": {"asr": {"paths+": ["/v1/b"]}, "tts": {"paths+": ["/v1/speech"]}}}, "environment",
              "env.yml"),
        layer({"services": {"asr": {"paths+": ["/v1/c"]}}}, "runtime", "rt.yml"),
    ])
    assert merged["services"]["asr"]["paths"] == ["/v1/a", "/v1/b", "/v1/c"]
    assert merged["services"]["tts"] == {"paths": ["/v1/speech"]}  # nothing earlier: the list itself
    assert origins["services.asr.paths"] == "runtime:rt.yml"
    with pytest.raises(cfg.ConfigError, match=r"paths\+ must be a list"):
        cfg.merge([layer({"paths+": "/v1/a"})])
    with pytest.raises(cfg.ConfigError, match=r"paths\+ appends to a list, but paths is a str"):
        cfg.merge([layer({"paths": "/v1/a"}), layer({"paths+": ["/v1/b"]})])
    with pytest.raises(cfg.ConfigError, match=r"paths and paths\+ in the same mapping"):
        cfg.merge([layer({"paths": ["/a"], "paths+": ["/b"]})])


def test_null_deletes_the_key_and_its_origins() -> None:
    merged, origins = cfg.merge([
        layer({"services": {"asr": {"memory": "3g", "env": {"A": "1", "B": "2"}, "ports": {"blue": 1}}}}),
        layer({"services": {"asr": {"memory": None, "env": {"A": None}, "ports": {"blue": None}},
                            "ghost": None}}, "environment", "env.yml"),
    ])
    assert merged == {"services": {"asr": {"env": {"B": "2"}, "ports": {}}}}
    # A mapping emptied by deletions is a leaf, set by the layer that emptied it.
    assert origins == {"services.asr.env.B": "base:x.yml", "services.asr.ports": "environment:env.yml"}


def test_scalar_replacing_a_mapping_drops_its_origins() -> None:
    merged, origins = cfg.merge([layer({"a": {"b": 1, "c": 2}}), layer({"a": 5}, "runtime", "r.yml"),
                                 layer({"a": {"d": 3}}, "secrets", "s.yml")])
    assert merged == {"a": {"d": 3}}
    assert origins == {"a.d": "secrets:s.yml"}


def test_xlerobot_services_is_an_alias_of_services(tmp_path: Path) -> None:
    write(tmp_path, "base/services.yml", "xlerobot_services: {asr: {image: xlerobot/asr, memory: 3g}}\n")
    write(tmp_path, "environments/local/services.yml", "services: {asr: {memory: 2g}}\n")
    merged, origins = cfg.merge(cfg.load_layers(str(tmp_path), "local"))
    assert merged == {"services": {"asr": {"image": "xlerobot/asr", "memory": "2g"}}}
    assert origins["services.asr.image"] == "base:base/services.yml"
    write(tmp_path, "base/services.yml", "xlerobot_services: {}\nservices: {}\n")
    with pytest.raises(cfg.ConfigError, match=r"base/services\.yml: both 'services' and its alias"):
        cfg.load_layers(str(tmp_path), "local")


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "base/services.yml", "services:\n  asr:\n    image: xlerobot/asr\n   memory: [3g\n")
    with pytest.raises(cfg.ConfigError) as caught:
        cfg.load_layers(str(tmp_path), "local")
    assert re.match(rf"{re.escape(str(tmp_path / 'base' / 'services.yml'))}:4:\d+: YAML syntax error: ",
                    str(caught.value)), str(caught.value)


@pytest.mark.parametrize(("text", "kind"), [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    write(tmp_path, "base/services.yml", "services: {}\n")
    path = write(tmp_path, "environments/local/broken.yml", text)
    with pytest.raises(cfg.ConfigError, match=rf"^{re.escape(str(path))}: the top level must be a mapping of keys, "
                                              rf"not {kind}$"):
        cfg.load_layers(str(tmp_path), "local")


def test_empty_file_is_an_empty_layer_and_keys_must_be_strings(tmp_path: Path) -> None:
    write(tmp_path, "base/empty.yml", "# nothing yet\n")
    assert cfg.merge(cfg.load_layers(str(tmp_path), "local")) == ({}, {})
    write(tmp_path, "base/ports.yml", "services: {asr: {ports: {8000: blue}}}\n")
    with pytest.raises(cfg.ConfigError, match=r"base/ports\.yml: key 8000 under services\.asr\.ports is not a string"):
        cfg.load_layers(str(tmp_path), "local")


def test_merge_never_mutates_its_inputs() -> None:
    first = {"services": {"asr": {"paths": ["/a"], "env": {"A": "1"}}}, "gone": {"x": 1}}
    second = {"services": {"asr": {"paths+": ["/b"], "env": {"A": None, "B": "2"}}}, "gone": None}
    layers = [layer(first), layer(second, "runtime", "r.yml")]
    snapshot = copy.deepcopy(layers)
    merged, _ = cfg.merge(layers)
    merged["services"]["asr"]["paths"].append("/c")
    merged["services"]["asr"]["env"]["C"] = "3"
    assert layers == snapshot
    defaults = {"defaults": {"env": {"D": "1"}}, "services": {"asr": {"env": {"A": "1"}}}}
    kept = copy.deepcopy(defaults)
    cfg.render_service(defaults, "asr")["env"]["X"] = "y"
    assert defaults == kept


# --- schema ----------------------------------------------------------------------------------------------------


def test_every_schema_violation_is_reported_at_once(tmp_path: Path, schema: dict[str, Any]) -> None:
    write_yaml(tmp_path, "base/services.yml", {"services": {"asr": ASR}})
    write_yaml(tmp_path, "environments/staging/services.yml", {
        "environment": "staging",
        "services": {
            "asr": {
                "container_port": "8000",                 # type
                "stop_timeout": 0,                        # minimum
                "memory": "3GB",                          # pattern
                "imagee": "xlerobot/asr",                 # unknown key
                "gates+": [{"type": "smoke"}],            # enum
            },
            "tts": {"container_port": 8001, "paths": ["/v1/audio/speech"], "ports": {"blue": 18011, "green": 18012}},
        },
    })
    merged, origins = cfg.merge(cfg.load_layers(str(tmp_path), "staging"))
    found = cfg.validate(merged, schema, origins)
    env_file = "environment:environments/staging/services.yml"
    by_path = {(v.path, v.rule): v for v in found}
    assert [v.path for v in found] == sorted(v.path for v in found)
    assert set(by_path) == {
        ("services.asr.container_port", "type"),
        ("services.asr.stop_timeout", "minimum"),
        ("services.asr.memory", "pattern"),
        ("services.asr.imagee", "additionalProperties"),
        ("services.asr.gates[1].type", "enum"),
        ("services.tts.image", "required"),
    }
    assert by_path[("services.asr.container_port", "type")] == cfg.Violation(
        "services.asr.container_port", "type", "must be of type integer", "'8000'", env_file)
    assert by_path[("services.asr.stop_timeout", "minimum")].message == "must be >= 1"
    assert by_path[("services.asr.stop_timeout", "minimum")].value == "0"
    assert by_path[("services.asr.memory", "pattern")].message == "must match ^[0-9]+[kmg]$"
    assert by_path[("services.asr.memory", "pattern")].value == "'3GB'"
    unknown = by_path[("services.asr.imagee", "additionalProperties")]
    assert unknown.message.startswith("unknown key 'imagee' (allowed: ")
    assert "image" in unknown.message.split("allowed: ", 1)[1]
    assert (unknown.value, unknown.origin) == ("'xlerobot/asr'", env_file)
    enum = by_path[("services.asr.gates[1].type", "enum")]
    assert enum.value == "'smoke'"
    assert enum.message == "must be one of 'liveness', 'readiness', 'transcription', 'speech', 'chat', 'interaction'"
    assert enum.origin == env_file  # a list is a leaf: the file that appended to it
    missing = by_path[("services.tts.image", "required")]
    assert (missing.message, missing.value, missing.origin) == ("required key 'image' is missing", "(missing)",
                                                                env_file)
    text = cfg.format_violations(found)
    assert len(text.splitlines()) == 6
    assert ("services.asr.container_port: must be of type integer (rule type, value '8000', from "
            f"{env_file})") in text.splitlines()


def test_required_origin_names_every_file_of_the_parent(schema: dict[str, Any]) -> None:
    merged, origins = cfg.merge([layer({"services": {"tts": {"paths": ["/v1/speech"]}}}, "base", "a.yml"),
                                 layer({"services": {"tts": {"container_port": 1}}}, "runtime", "b.yml")])
    missing = [v for v in cfg.validate(merged, schema, origins) if v.path == "services.tts.image"]
    assert missing[0].origin == "base:a.yml, runtime:b.yml"
    top = cfg.validate({}, schema, {})
    assert [(v.path, v.rule, v.origin) for v in top] == [("services", "required", cfg.NOT_SET)]


def test_schema_other_rules(schema: dict[str, Any]) -> None:
    bad = {
        "environment": "prod",
        "gateway": {"frontend_port": 70000, "tls": {"enabled": True}, "auth": {"api_keys": "hunter2"}},
        "services": {"Bad Name": ASR, "asr": {**ASR, "env": {"bad-name": "x", "OK": 1},
                                              "gates": [{"type": "transcription"}]}},
    }
    found = {(v.path, v.rule): v for v in cfg.validate(bad, schema, {})}
    assert set(found) == {
        ("environment", "enum"), ("gateway.frontend_port", "maximum"), ("gateway.tls.certificate", "required"),
        ("gateway.auth.api_keys", "oneOf"), ("services.Bad Name", "propertyNames"),
        ("services.asr.env.bad-name", "propertyNames"), ("services.asr.env.OK", "type"),
        ("services.asr.gates[0].text", "required"),
    }
    assert found[("gateway.auth.api_keys", "oneOf")].value == cfg.MASKED  # never print a would-be secret
    assert "matches none of the allowed forms: a reference to a secret" in found[("gateway.auth.api_keys",
                                                                                  "oneOf")].message


def test_schema_marks_restart_and_hot_reload_keys(schema: dict[str, Any]) -> None:
    settings_ = schema["$defs"]["service_settings"]["properties"]
    assert {key for key, spec in settings_.items() if spec.get("x-restart") is True} >= {
        "image", "container_port", "memory", "env", "ports"}
    assert all(spec["x-restart"] is False for spec in settings_["runtime"]["properties"].values())
    for spec in settings_.values():
        assert spec.get("description"), spec


def test_unknown_environment_is_refused(schema: dict[str, Any]) -> None:
    cfg.check_environment("production", schema)
    with pytest.raises(cfg.ConfigError, match="unknown environment 'prodution'; the schema allows development"):
        cfg.check_environment("prodution", schema)


def test_repo_config_is_valid() -> None:
    schema = cfg.load_schema(str(SCHEMA_PATH))
    layers = cfg.load_layers(str(REPO / "config"), "local")
    merged, origins = cfg.merge(layers)
    assert "asr" in merged["services"]
    assert origins["services.asr.env.ASR_MAX_CONCURRENCY"] == "environment:environments/local/services.yml"
    assert cfg.validate(merged, schema, origins) == []
    assert cfg.check_policies(merged, "local", origins) == []


ENVIRONMENTS = sorted(p.name for p in (REPO / "config" / "environments").iterdir() if p.is_dir())


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_environment_of_the_repository_is_valid_under_its_own_policies(environment: str) -> None:
    schema = cfg.load_schema(str(SCHEMA_PATH))
    merged, origins = cfg.merge(cfg.load_layers(str(REPO / "config"), environment))
    assert cfg.validate(merged, schema, origins) == []
    assert cfg.check_policies(merged, environment, origins) == []
    assert merged.get("environment", environment) == environment


def test_the_repository_has_every_environment_of_the_layout() -> None:
    assert {"development", "test", "staging", "production", "local"} <= set(ENVIRONMENTS)


def _documented_layer_files() -> list[tuple[str, str]]:
    """The example layer files of config/{services,runtime,secrets}/README.md: each yaml block's first line names
    the file it stands for."""
    found = []
    for readme in sorted((REPO / "config").glob("*/README.md")):
        for block in re.findall(r"```yaml\n(.*?)```", readme.read_text(), re.S):
            name = re.match(r"# config/(\S+\.yml)", block)
            assert name, f"{readme}: a yaml example must start with '# config/<file>.yml'"
            found.append((name.group(1), block))
    return found


def test_the_layer_directories_document_examples_that_validate(tmp_path: Path) -> None:
    examples = _documented_layer_files()
    assert {path.split("/")[0] for path, _ in examples} == {"services", "runtime", "secrets"}
    shutil.copytree(REPO / "config", tmp_path / "config")
    for path, block in examples:
        write(tmp_path / "config", path, block)
    schema = cfg.load_schema(str(SCHEMA_PATH))
    for environment in ("local", "production"):
        merged, origins = cfg.merge(cfg.load_layers(str(tmp_path / "config"), environment))
        assert cfg.validate(merged, schema, origins) == [], environment
        assert cfg.check_policies(merged, environment, origins) == [], environment
        # Each example reached the result from its own layer.
        assert origins["services.asr.memory"] == "service:services/asr/model.yml"
        assert origins["services.asr.runtime.beam_size"] == "runtime:runtime/asr.yml"
        assert origins["gateway.auth.api_keys"] == "secrets:secrets/gateway.yml"


# --- policies --------------------------------------------------------------------------------------------------


def production(**changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"environment": "production", "gateway": copy.deepcopy(PRODUCTION_GATEWAY),
                              "defaults": {"replicas": 2}, "services": {"asr": copy.deepcopy(ASR)}}
    config.update(changes)
    return config


def rules(found: list[cfg.Violation]) -> list[tuple[str, str]]:
    return [(v.rule, v.path) for v in found]


def test_production_passes_with_tls_auth_and_replicas(schema: dict[str, Any]) -> None:
    assert violations_of(production(), schema, "production") == []


@pytest.mark.parametrize(("gateway", "expected"), [
    ({**PRODUCTION_GATEWAY, "tls": {"enabled": False}}, [("production-gateway-tls", "gateway.tls.enabled")]),
    ({"auth": PRODUCTION_GATEWAY["auth"]}, [("production-gateway-tls", "gateway.tls.enabled")]),
    ({**PRODUCTION_GATEWAY, "auth": {"enabled": False}}, [("production-auth", "gateway.auth.enabled")]),
    ({}, [("production-auth", "gateway.auth.enabled"), ("production-gateway-tls", "gateway.tls.enabled")]),
])
def test_production_gateway_policies(schema: dict[str, Any], gateway: dict[str, Any],
                                     expected: list[tuple[str, str]]) -> None:
    found = violations_of(production(gateway=gateway), schema, "production")
    assert rules(found) == expected
    # The same gateway is fine outside production.
    assert violations_of(production(gateway=gateway, environment="staging"), schema, "staging") == []


def test_production_replicas(schema: dict[str, Any]) -> None:
    config = production(defaults={}, services={"asr": {**ASR, "replicas": 1}, "tts": {**ASR, "image": "x/tts"},
                                               "vad": {**ASR, "image": "x/vad", "replicas": 3}})
    merged, origins = cfg.merge([layer(config, "environment", "prod.yml")])
    found = cfg.check_policies(merged, "production", origins)
    assert [(v.rule, v.path, v.value, v.origin) for v in found] == [
        ("production-replicas", "services.asr.replicas", "1", "environment:prod.yml"),
        ("production-replicas", "services.tts.replicas", "1", "environment:prod.yml"),
    ]
    assert violations_of(production(defaults={"replicas": 2}, services={"asr": ASR}), schema, "production") == []


@pytest.mark.parametrize("reference", [
    {"vault": "secret/xlerobot/gateway#api_keys"},
    {"ansible_vault_file": "secrets/gateway.vault"},
    "vault:secret/xlerobot/gateway#api_keys",
])
def test_secret_references_pass(schema: dict[str, Any], reference: Any) -> None:
    config = {"services": {"asr": {**ASR, "env": {"ASR_TOKENIZER": "bpe", "ASR_MAX_TOKENS": "448"}}},
              "gateway": {"auth": {"enabled": True, "api_keys": reference}},
              "secrets": {"registry_password": reference, "hf": {"token": reference}}}
    assert violations_of(config, schema) == []


def test_plaintext_secrets_fail_everywhere(schema: dict[str, Any]) -> None:
    config = {"services": {"asr": {**ASR, "env": {"HF_TOKEN": "hf_abcdef"}}},
              "runtime": {"db": {"Password": "hunter2", "private-key": "-----BEGIN", "user": "app"}},
              "secrets": {"registry": {"user": "robot", "pass": {"vault": "no-hash-here"}}, "apiKeys": ["k1"]}}
    merged, origins = cfg.merge([layer(config, "secrets", "s.yml")])
    found = [v for v in cfg.check_policies(merged, "development", origins) if v.rule == "no-plaintext-secret"]
    assert [v.path for v in found] == [
        "runtime.db.Password", "runtime.db.private-key", "secrets.apiKeys[0]", "secrets.registry.pass",
        "secrets.registry.user", "services.asr.env.HF_TOKEN"]
    assert all(v.value == cfg.MASKED and v.origin == "secrets:s.yml" for v in found)
    assert "hunter2" not in cfg.format_violations(found)
    assert "malformed secret reference" in found[3].message


@pytest.mark.parametrize(("key", "value", "bad"), [
    ("image", "xlerobot/asr:latest", True), ("tag", "latest", True), ("tag", "1.1.0", False),
    ("image", "xlerobot/latest-models", False),
])
def test_no_latest_tag(key: str, value: str, bad: bool) -> None:
    merged, origins = cfg.merge([layer({"runtime": {"sidecar": {key: value}}}, "runtime", "r.yml")])
    found = cfg.check_policies(merged, "local", origins)
    assert rules(found) == ([("no-latest-tag", f"runtime.sidecar.{key}")] if bad else [])


def test_declared_environment_must_match_the_deployed_one() -> None:
    found = cfg.check_policies({"environment": "production"}, "staging", {"environment": "base:b.yml"})
    assert [(v.rule, v.origin) for v in found] == [("environment-mismatch", "base:b.yml")]


# --- version, diff, render, record -------------------------------------------------------------------------------


def test_content_version_is_stable_and_tracks_content() -> None:
    one = {"services": {"asr": {"memory": "3g", "ports": {"blue": 1, "green": 2}}}, "gateway": {"port": 1}}
    two: dict[str, Any] = {"gateway": {"port": 1},
                           "services": {"asr": {"ports": {"green": 2, "blue": 1}, "memory": "3g"}}}
    assert cfg.content_version(one) == cfg.content_version(two)
    assert re.fullmatch(r"cfg-[0-9a-f]{12}", cfg.content_version(one))
    two["services"]["asr"]["memory"] = "4g"
    assert cfg.content_version(one) != cfg.content_version(two)
    assert cfg.content_version({"a": [1, 2]}) != cfg.content_version({"a": [2, 1]})


def test_diff_reports_added_removed_and_changed_with_origin() -> None:
    before = {"services": {"asr": {"memory": "3g", "stop_timeout": 60, "paths": ["/a"]}}}
    after, origins = cfg.merge([
        layer({"services": {"asr": {"memory": "4g", "paths": ["/a"], "replicas": 2}}}, "environment", "e.yml")])
    assert cfg.diff(before, after, origins) == [
        {"path": "services.asr.memory", "change": "changed", "before": "3g", "after": "4g",
         "origin": "environment:e.yml"},
        {"path": "services.asr.replicas", "change": "added", "before": None, "after": 2,
         "origin": "environment:e.yml"},
        {"path": "services.asr.stop_timeout", "change": "removed", "before": 60, "after": None, "origin": None},
    ]
    assert cfg.diff(after, after, origins) == []


def test_render_service_merges_defaults() -> None:
    merged = {"defaults": {"memory": "2g", "env": {"LOG": "info", "A": "1"}, "replicas": 2},
              "services": {"asr": {"memory": "3g", "env": {"A": "2"}}, "tts": {}}}
    assert cfg.render_service(merged, "asr") == {"memory": "3g", "env": {"LOG": "info", "A": "2"}, "replicas": 2}
    assert cfg.render_service(merged, "tts") == merged["defaults"]
    with pytest.raises(cfg.ConfigError, match="unknown service 'stt'; known services: asr, tts"):
        cfg.render_service(merged, "stt")
    assert cfg.render_service({"services": {"asr": {"memory": "1g"}}}, "asr") == {"memory": "1g"}
    with pytest.raises(cfg.ConfigError, match="known services: none"):
        cfg.render_service({}, "asr")


def test_record_applied_is_private_and_keeps_history(tmp_path: Path) -> None:
    state = tmp_path / "run" / "config.json"
    assert cfg.read_applied(str(state)) is None
    cfg.record_applied(str(state), {"version": "cfg-1", "config": {"a": 1}}, {"version": "cfg-1"})
    cfg.record_applied(str(state), {"version": "cfg-2", "config": {"a": 2}}, {"version": "cfg-2"})
    assert cfg.read_applied(str(state)) == {"version": "cfg-2", "config": {"a": 2}}
    assert state.stat().st_mode & 0o777 == 0o600
    history = Path(f"{state}.history.jsonl")
    assert [json.loads(line)["version"] for line in history.read_text().splitlines()] == ["cfg-1", "cfg-2"]
    assert history.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in state.parent.iterdir()) == [
        "config.json", "config.json.history.jsonl", "config.json.versions"]
    kept = Path(cfg.versions_dir(str(state)))
    assert sorted(p.name for p in kept.iterdir()) == ["cfg-1.json", "cfg-2.json"]
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in kept.iterdir())
    assert json.loads((kept / "cfg-1.json").read_text()) == {"version": "cfg-1", "config": {"a": 1}}
    state.write_text("[]")
    with pytest.raises(cfg.ConfigError, match="has no 'config' mapping"):
        cfg.read_applied(str(state))


def _apply(state: Path, config: dict[str, Any], at: str) -> str:
    version = cfg.content_version(config)
    cfg.record_applied(str(state), {"version": version, "environment": "local", "at": at, "config": config},
                       {"version": version, "at": at})
    return version


def test_earlier_versions_are_read_back_whole_and_listed_once_each(tmp_path: Path) -> None:
    state = tmp_path / "config.json"
    one = _apply(state, {"a": 1}, "2026-01-01T00:00:00Z")
    two = _apply(state, {"a": 2}, "2026-01-02T00:00:00Z")
    _apply(state, {"a": 1}, "2026-01-03T00:00:00Z")
    assert cfg.read_version(str(state), two)["config"] == {"a": 2}
    assert cfg.applied_versions(str(state)) == [{"version": two, "at": "2026-01-02T00:00:00Z"},
                                                {"version": one, "at": "2026-01-03T00:00:00Z"}]


def test_a_version_never_applied_is_named_with_the_latest_ones(tmp_path: Path) -> None:
    state = tmp_path / "config.json"
    with pytest.raises(cfg.ConfigError, match=r"cfg-0123456789ab was never applied .* the latest applied: none yet"):
        cfg.read_version(str(state), "cfg-0123456789ab")
    one = _apply(state, {"a": 1}, "2026-01-01T00:00:00Z")
    with pytest.raises(cfg.ConfigError, match=rf"the latest applied: {one} \(2026-01-01T00:00:00Z\)$"):
        cfg.read_version(str(state), "cfg-0123456789ab")


@pytest.mark.parametrize("version", ["../config", "cfg-0123", "cfg-0123456789AB", "latest"])
def test_only_version_names_are_read(tmp_path: Path, version: str) -> None:
    with pytest.raises(cfg.ConfigError, match="is not a configuration version"):
        cfg.read_version(str(tmp_path / "config.json"), version)


def test_a_kept_version_whose_content_changed_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "config.json"
    one = _apply(state, {"a": 1}, "2026-01-01T00:00:00Z")
    kept = Path(cfg.versions_dir(str(state))) / f"{one}.json"
    kept.write_text(json.dumps({"version": one, "config": {"a": 99}}))
    with pytest.raises(cfg.ConfigError, match="hashes differently"):
        cfg.read_version(str(state), one)


@pytest.mark.parametrize(("path", "restart"), [
    ("services.asr.runtime.beam_size", False),
    ("services.asr.runtime.log_level", False),
    ("services.asr.memory", True),
    ("services.asr.env.ASR_MODEL", True),
    ("services.asr.ports.blue", True),
    ("gateway.port", True),
    # Not marked in the schema: the safe side.
    ("services.asr.gates", True),
    ("services.asr.gates[0].timeout", True),
    ("no_such_section.value", True),
])
def test_restart_or_reload_follows_the_schema(schema: dict[str, Any], path: str, restart: bool) -> None:
    assert cfg.needs_restart(schema, path) is restart


# --- merge properties ------------------------------------------------------------------------------------------

if HAVE_HYPOTHESIS:
    SCALARS = st.one_of(st.integers(-3, 3), st.text("xyz", max_size=2), st.booleans())
    LISTS = st.lists(SCALARS, max_size=3)

    def shaped(depth: int = 2, deletions: bool = False, appends: bool = False) -> st.SearchStrategy[dict[str, Any]]:
        """Mappings whose keys always hold the same kind (s*: scalar, l*: list, m*: mapping): no type changes."""
        def maybe_none(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
            return st.one_of(st.none(), strategy) if deletions else strategy

        optional: dict[str, st.SearchStrategy[Any]] = {"s1": maybe_none(SCALARS), "s2": maybe_none(SCALARS),
                                                       "l1": maybe_none(LISTS)}
        if appends:
            optional["l2+"] = LISTS
        if depth:
            child = shaped(depth - 1, deletions, appends)
            optional["m1"] = maybe_none(child)
            optional["m2"] = maybe_none(child)
        return st.fixed_dictionaries({}, optional=optional)

    ANY_TREE = st.recursive(
        st.one_of(SCALARS, LISTS),
        lambda children: st.dictionaries(st.sampled_from("abc"), children, max_size=3),
        max_leaves=10,
    )
    ANY_MAPPING = st.dictionaries(st.sampled_from("abc"), ANY_TREE, max_size=3)

    def as_layers(datas: list[dict[str, Any]]) -> list[cfg.Layer]:
        return [layer(data, "layer", f"{index}.yml") for index, data in enumerate(datas)]

    @settings(deadline=None)
    @given(shaped())
    def test_property_empty_layer_is_identity(data: dict[str, Any]) -> None:
        assert cfg.merge(as_layers([data, {}]))[0] == data
        assert cfg.merge(as_layers([{}, data]))[0] == data
        assert cfg.merge(as_layers([data]))[0] == data

    @settings(deadline=None)
    @given(shaped(), shaped(), shaped())
    def test_property_merge_is_associative(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> None:
        flat = cfg.merge(as_layers([a, b, c]))[0]
        left = cfg.merge(as_layers([cfg.merge(as_layers([a, b]))[0], c]))[0]
        right = cfg.merge(as_layers([a, cfg.merge(as_layers([b, c]))[0]]))[0]
        assert flat == left == right

    def test_merge_is_not_associative_when_a_scalar_replaces_a_mapping() -> None:
        """Why the associativity property keeps shapes fixed: the middle scalar erases the first mapping."""
        a, b, c = {"x": {"p": 1}}, {"x": 5}, {"x": {"q": 2}}
        assert cfg.merge(as_layers([a, b, c]))[0] == {"x": {"q": 2}}
        assert cfg.merge(as_layers([a, cfg.merge(as_layers([b, c]))[0]]))[0] == {"x": {"p": 1, "q": 2}}

    @settings(deadline=None)
    @given(st.lists(ANY_MAPPING, min_size=1, max_size=4))
    def test_property_last_layer_scalar_leaves_win(datas: list[dict[str, Any]]) -> None:
        layers = as_layers(datas)
        merged, origins = cfg.merge(layers)
        result = cfg.flatten(merged)
        for path, value in cfg.flatten(datas[-1]).items():
            if value != {}:  # an empty mapping merges, it does not replace
                assert result[path] == value
                assert origins[path] == layers[-1].origin

    @settings(deadline=None)
    @given(st.lists(shaped(deletions=True, appends=True), min_size=1, max_size=4))
    def test_property_origins_cover_exactly_the_leaves(datas: list[dict[str, Any]]) -> None:
        layers = as_layers(datas)
        snapshot = copy.deepcopy(layers)
        merged, origins = cfg.merge(layers)
        assert set(origins) == set(cfg.flatten(merged))
        assert set(origins.values()) <= {item.origin for item in layers}
        assert layers == snapshot
        assert "+" not in json.dumps(sorted(cfg.flatten(merged)))
        assert None not in cfg.flatten(merged).values()
else:
    def test_merge_properties() -> None:
        pytest.skip("hypothesis is not installed")


# --- the module, run by ansible on localhost ------------------------------------------------------------------

def run_module(args: dict[str, Any], *options: str) -> dict[str, Any]:
    """Run the module on localhost through the real `ansible` CLI and return the host's result."""
    return ansible_cli.run_module("speech_config", args, *options, python=ansible_cli.CONTROLLER_PYTHON)


def test_module_merges_the_repo_config() -> None:
    result = run_module({"config_dir": str(REPO / "config"), "environment": "local", "service": "asr",
                         "extra_layers": [{"name": "inventory", "data": {"services": {"asr": {"memory": "2g"}}}}]})
    assert result.get("failed") is not True, result
    assert result["changed"] is False
    assert result["violations"] == []
    assert result["rendered"]["memory"] == "2g"
    assert result["origins"]["services.asr.memory"] == "inventory:extra_layers[0]"
    assert result["origins"]["services.asr.image"] == "base:base/services.yml"
    assert re.fullmatch(r"cfg-[0-9a-f]{12}", result["version"])


def test_module_fails_listing_every_violation(tmp_path: Path) -> None:
    write_yaml(tmp_path, "base/services.yml", {"xlerobot_services": {"asr": ASR}})
    write_yaml(tmp_path, "environments/local/services.yml",
               {"xlerobot_services": {"asr": {"memory": "3GB", "stop_timeout": 0}}})
    result = run_module({"config_dir": str(tmp_path), "environment": "local", "schema": str(SCHEMA_PATH)})
    assert result.get("failed") is True, result
    lines = result["msg"].splitlines()
    assert lines[0] == "configuration for environment local has 2 violation(s):"
    assert lines[1].startswith("services.asr.memory: must match ^[0-9]+[kmg]$ (rule pattern, value '3GB', "
                               "from environment:environments/local/services.yml)")
    assert lines[2].startswith("services.asr.stop_timeout: must be >= 1 (rule minimum")
    assert [v["rule"] for v in result["violations"]] == ["pattern", "minimum"]


def test_module_check_mode_reports_changed_and_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "run" / "config.json"
    args = {"config_dir": str(REPO / "config"), "environment": "local", "state_file": str(state)}
    result = run_module(args, "--check", "--diff")
    assert result.get("failed") is not True, result
    assert result["changed"] is True
    assert result["recorded_version"] is None
    assert result["diff"]["before"] == {}
    assert result["diff"]["after"] == result["merged"]
    assert {change["change"] for change in result["changes"]} == {"added"}
    assert not (tmp_path / "run").exists()


def test_module_records_once_then_is_idempotent(tmp_path: Path) -> None:
    state = tmp_path / "config.json"
    args = {"config_dir": str(REPO / "config"), "environment": "local", "state_file": str(state)}
    first = run_module(args)
    assert first["changed"] is True, first
    record = json.loads(state.read_text())
    assert record["version"] == first["version"]
    assert state.stat().st_mode & 0o777 == 0o600
    again = run_module(args)
    assert again["changed"] is False, again
    assert again["changes"] == []
    assert len(Path(f"{state}.history.jsonl").read_text().splitlines()) == 1


def test_module_returns_to_an_earlier_version_in_one_run(tmp_path: Path) -> None:
    state = tmp_path / "run" / "config.json"
    write_yaml(tmp_path, "base/services.yml", {"xlerobot_services": {"asr": {**ASR, "runtime": {"beam_size": 1}}}})
    args = {"config_dir": str(tmp_path), "environment": "local", "schema": str(SCHEMA_PATH), "state_file": str(state)}
    first = run_module(args)
    assert first["changed"] is True, first
    write_yaml(tmp_path, "base/services.yml",
               {"xlerobot_services": {"asr": {**ASR, "memory": "4g", "runtime": {"beam_size": 3}}}})
    second = run_module(args)
    assert second["changed"] is True and second["version"] != first["version"], second
    assert second["restart_paths"] == ["services.asr.memory"]
    assert second["reload_paths"] == ["services.asr.runtime.beam_size"]

    planned = run_module({**args, "restore_version": first["version"]}, "--check")
    assert planned["changed"] is True and planned["version"] == first["version"], planned
    assert json.loads(state.read_text())["version"] == second["version"]

    restored = run_module({**args, "restore_version": first["version"]})
    assert restored["changed"] is True, restored
    assert restored["version"] == first["version"]
    assert restored["merged"] == first["merged"]
    assert restored["origins"]["services.asr.memory"] == f"{first['version']}:base:base/services.yml"
    assert [c["path"] for c in restored["changes"]] == ["services.asr.memory", "services.asr.runtime.beam_size"]
    assert json.loads(state.read_text())["version"] == first["version"]
    events = [json.loads(line) for line in Path(f"{state}.history.jsonl").read_text().splitlines()]
    assert [e["version"] for e in events] == [first["version"], second["version"], first["version"]]
    assert events[-1]["restored"] is True and events[-1]["previous_version"] == second["version"]
    assert [v["version"] for v in restored["applied_versions"]] == [second["version"], first["version"]]

    again = run_module({**args, "restore_version": first["version"]})
    assert again["changed"] is False and again["changes"] == [], again


def test_module_with_record_false_compares_and_writes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "run" / "config.json"
    write_yaml(tmp_path, "base/services.yml", {"xlerobot_services": {"asr": {**ASR, "runtime": {"beam_size": 1}}}})
    args = {"config_dir": str(tmp_path), "environment": "local", "schema": str(SCHEMA_PATH), "state_file": str(state)}
    compared = run_module({**args, "record": False})
    assert compared["changed"] is False and compared["recorded_version"] is None, compared
    assert {change["change"] for change in compared["changes"]} == {"added"}
    assert "services.asr.memory" in compared["restart_paths"]
    assert compared["reload_paths"] == ["services.asr.runtime.beam_size"]
    assert not (tmp_path / "run").exists()


def test_module_refuses_a_version_never_applied_and_changes_nothing(tmp_path: Path) -> None:
    state = tmp_path / "config.json"
    args = {"config_dir": str(REPO / "config"), "environment": "local", "state_file": str(state)}
    applied = run_module(args)
    result = run_module({**args, "restore_version": "cfg-0123456789ab"})
    assert result.get("failed") is True, result
    assert result["msg"] == (f"configuration version cfg-0123456789ab was never applied in this environment (record "
                             f"{state}); the latest applied: {applied['version']} "
                             f"({applied['applied_versions'][-1]['at']})")
    assert json.loads(state.read_text())["version"] == applied["version"]
    assert len(Path(f"{state}.history.jsonl").read_text().splitlines()) == 1
