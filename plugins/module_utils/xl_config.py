# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layered deploy configuration: load, merge with origins, validate, check policies, version and diff.

Plain functions over plain data, so the speech_config module stays a thin shell and pytest calls every
branch directly. Runs on the controller (PyYAML and jsonschema are needed, not just the standard library).

Layers, lowest first (a later layer wins)::

    base         <config_dir>/base/*.yml                    required, at least one file
    environment  <config_dir>/environments/<env>/*.yml      optional directory
    service      <config_dir>/services/<svc>/*.yml          each file's content is nested under services.<svc>
    runtime      <config_dir>/runtime/*.yml                 optional directory
    secrets      <config_dir>/secrets/*.yml                 optional directory (references only, see below)

Files within a layer are read in sorted order (for the service layer: by service, then file name); names
starting with a dot are skipped. An empty file is an empty layer. A top-level key ``xlerobot_services`` in any
layer is an alias of ``services``, so the catalogue files that the xlerobot role reads directly keep working;
one file must not use both spellings.

Merge rules (``merge``):

- mappings merge key by key, recursively;
- scalars and lists replace whatever the earlier layers had at that key (a mapping replaced by a scalar is gone,
  with its origins);
- a key ending in ``+`` appends its list to the earlier list of the key without the ``+`` (``paths+: [/v2]``);
  with no earlier value it simply sets the list; the value must be a list and the earlier value, if any, a list;
  one mapping must not hold both ``paths`` and ``paths+``;
- a value of ``null`` deletes the key (a ``null`` in the lowest layer that defines a key therefore never reaches the
  result; to have "no value", leave the key out);
- inputs are never modified.

``origins`` maps every leaf path of the result to ``<layer>:<file relative to config_dir>`` of the file that set
it last. Paths are dotted keys (``services.asr.memory``); lists are leaves, and so are empty mappings. A key that
itself contains a dot makes its path ambiguous, so avoid dots in configuration keys.

Secrets: any key whose name contains ``password``, ``secret``, ``token``, ``api_key``, ``apikey`` or ``private_key``
as a word (``-`` counts as ``_``; plurals count too, except ``tokens``: ``api_keys`` and ``HF_TOKEN`` match,
``tokenizer`` and ``max_tokens`` do not), and every string inside such a key's mapping or list, must be a
reference: ``{vault: "path#key"}``, ``{ansible_vault_file: "file"}`` or a string starting with ``vault:``.
Numbers and booleans under such keys are not secrets. Violation values under such keys are masked, never printed.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# jsonschema imports rfc3987_syntax for its IRI format checks when it is installed (the SBOM tool's validation
# extra brings it), and that import compiles a grammar: 1.4 s of every run that validates the configuration. The
# schema uses no format keyword and no validator here checks formats, so the module is marked absent first.
if "rfc3987_syntax" not in sys.modules:
    sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]

import jsonschema
import yaml

LAYER_ORDER = ("base", "environment", "service", "runtime", "secrets")
SERVICES_ALIAS = "xlerobot_services"
ENVIRONMENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# The secret key names, matched as words of the key (after lower-casing and turning '-' into '_').
# "tokens" is left out: ASR_MAX_TOKENS and the like are counts.
SECRET_KEY = re.compile(r"(?<![a-z])(passwords?|secrets?|token|api_keys?|apikeys?|private_keys?)(?![a-z])")
VAULT_REFERENCE = re.compile(r"[^#\s]+#[^#\s]+")
MASKED = "<masked>"
NOT_SET = "(not set in any layer)"
MISSING = "(missing)"
VALUE_WIDTH = 80


class ConfigError(Exception):
    """The configuration cannot be loaded or merged (unreadable file, YAML syntax, wrong shape)."""


@dataclass(frozen=True)
class Layer:
    """One file (or in-memory mapping) of one layer; ``data`` is already normalised (alias, service nesting)."""

    name: str
    path: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def origin(self) -> str:
        return f"{self.name}:{self.path}"


@dataclass(frozen=True)
class Violation:
    """One broken rule: a JSON Schema keyword or a policy name."""

    path: str
    rule: str
    message: str
    value: str
    origin: str


# --- loading ------------------------------------------------------------------------------------------------


def _yml_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.yml") if not p.name.startswith(".") and p.is_file())


def _check_keys(value: Any, where: str, path: tuple[str | int, ...] = ()) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: key {key!r} under {format_path(path) or 'the top level'} is not a "
                                  "string; quote it")
            _check_keys(item, where, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_keys(item, where, (*path, index))


def _alias_services(data: Mapping[str, Any], where: str) -> dict[str, Any]:
    if SERVICES_ALIAS not in data:
        return dict(data)
    if "services" in data or "services+" in data:
        raise ConfigError(f"{where}: both 'services' and its alias '{SERVICES_ALIAS}' at the top level; use one")
    return {("services" if key == SERVICES_ALIAS else key): value for key, value in data.items()}


def make_layer(name: str, path: str, data: Any, service: str | None = None) -> Layer:
    """A Layer from parsed data: checks the shape, applies the ``xlerobot_services`` alias and service nesting."""
    where = path if name in LAYER_ORDER else f"{name}:{path}"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: the top level must be a mapping of keys, not {type(data).__name__}")
    _check_keys(data, where)
    normalised = {"services": {service: dict(data)}} if service is not None else _alias_services(data, where)
    return Layer(name=name, path=path, data=normalised)


def load_file(config_dir: Path, path: Path, name: str, service: str | None = None) -> Layer:
    """Parse one YAML file into a Layer; errors name the file and, for syntax errors, the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        detail = "; ".join(part for part in (exc.context, exc.problem) if part) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {detail}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}") from exc
    relative = path.relative_to(config_dir).as_posix()
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, not {type(data).__name__}")
    return make_layer(name, relative, data, service)


def load_layers(config_dir: str, environment: str) -> list[Layer]:
    """Every layer file of `environment`, lowest first (see the module docstring)."""
    root = Path(config_dir)
    if not root.is_dir():
        raise ConfigError(f"configuration directory {config_dir} does not exist")
    if not ENVIRONMENT_NAME.fullmatch(environment):
        raise ConfigError(f"environment name {environment!r} must be letters, digits, '-' and '_'")
    base = _yml_files(root / "base")
    if not base:
        raise ConfigError(f"{root / 'base'}: no *.yml file; the base layer is required")
    layers = [load_file(root, path, "base") for path in base]
    layers += [load_file(root, path, "environment") for path in _yml_files(root / "environments" / environment)]
    services_dir = root / "services"
    if services_dir.is_dir():
        stray = _yml_files(services_dir)
        if stray:
            raise ConfigError(f"{stray[0]}: service files belong in {services_dir}/<service>/, not directly in "
                              f"{services_dir}")
        for service_dir in sorted(p for p in services_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            layers += [load_file(root, path, "service", service_dir.name) for path in _yml_files(service_dir)]
    layers += [load_file(root, path, "runtime") for path in _yml_files(root / "runtime")]
    layers += [load_file(root, path, "secrets") for path in _yml_files(root / "secrets")]
    return layers


# --- merging ------------------------------------------------------------------------------------------------


def format_path(parts: Sequence[str | int]) -> str:
    """Dotted path; list indexes as [n]: ``services.asr.gates[2].max_wer``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else str(part)
    return text


def _drop_origins(origins: dict[str, str], path: str) -> None:
    origins.pop(path, None)
    prefix = path + "."
    for key in [key for key in origins if key.startswith(prefix)]:
        del origins[key]


def _merge_into(target: dict[str, Any], overlay: Mapping[str, Any], prefix: tuple[str, ...], origin: str,
                origins: dict[str, str]) -> None:
    """Merge `overlay` into `target` (a dict this module owns); record origins of the leaves set."""
    for key, value in overlay.items():
        append = key.endswith("+") and len(key) > 1
        name = key[:-1] if append else key
        parts = (*prefix, name)
        path = format_path(parts)
        if append:
            if name in overlay:
                raise ConfigError(f"{origin}: {path} and {path}+ in the same mapping; use one")
            if not isinstance(value, list):
                raise ConfigError(f"{origin}: {path}+ must be a list to append, not {type(value).__name__}")
            earlier = target.get(name)
            if earlier is not None and not isinstance(earlier, list):
                raise ConfigError(f"{origin}: {path}+ appends to a list, but {path} is a {type(earlier).__name__}")
            _drop_origins(origins, path)
            target[name] = [*(earlier or []), *copy.deepcopy(value)]
            origins[path] = origin
        elif value is None:
            if name in target:
                del target[name]
                _drop_origins(origins, path)
        elif isinstance(value, Mapping):
            existing = target.get(name)
            if not isinstance(existing, dict):
                _drop_origins(origins, path)
                existing = target[name] = {}
            _merge_into(existing, value, parts, origin, origins)
            if existing:
                origins.pop(path, None)  # no longer an empty-mapping leaf
            else:
                origins.setdefault(path, origin)
        else:
            _drop_origins(origins, path)
            target[name] = copy.deepcopy(value)
            origins[path] = origin


def merge(layers: Iterable[Layer]) -> tuple[dict[str, Any], dict[str, str]]:
    """Deep-merge the layers, later wins; return (merged, origins). See the module docstring for the rules."""
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for layer in layers:
        _check_keys(layer.data, layer.origin)  # Layers built in code skip make_layer's checks
        _merge_into(merged, _alias_services(layer.data, layer.origin), (), layer.origin, origins)
    return merged, dict(sorted(origins.items()))


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Leaf path -> value; lists and empty mappings are leaves."""
    leaves: dict[str, Any] = {}
    for key, value in tree.items():
        parts = (*prefix, key)
        if isinstance(value, Mapping) and value:
            leaves.update(flatten(value, parts))
        else:
            leaves[format_path(parts)] = value
    return leaves


def _deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def render_service(merged: Mapping[str, Any], service: str) -> dict[str, Any]:
    """Effective configuration of one service: ``defaults`` deep-merged with ``services.<service>``."""
    services = merged.get("services") or {}
    if service not in services:
        known = ", ".join(sorted(services)) or "none"
        raise ConfigError(f"unknown service {service!r}; known services: {known}")
    defaults = merged.get("defaults") or {}
    if not isinstance(defaults, Mapping) or not isinstance(services[service] or {}, Mapping):
        raise ConfigError(f"service {service!r}: 'defaults' and 'services.{service}' must be mappings")
    return _deep_merge(defaults, services[service] or {})


# --- origins and values of violations ---------------------------------------------------------------------


def origin_of(parts: Sequence[str | int], origins: Mapping[str, str]) -> str:
    """Origin of a path: the leaf's file, else the files of the mapping there, else of the nearest parent."""
    for end in range(len(parts), 0, -1):
        path = format_path(parts[:end])
        if path in origins:
            return origins[path]
        prefix = path + "."
        below = sorted({origin for key, origin in origins.items() if key.startswith(prefix)})
        if below:
            return ", ".join(below[:3]) + (f" and {len(below) - 3} more" if len(below) > 3 else "")
    return NOT_SET


def is_secret_key(key: str) -> bool:
    return bool(SECRET_KEY.search(key.lower().replace("-", "_")))


def _shown(value: Any, parts: Sequence[str | int]) -> str:
    if any(isinstance(part, str) and is_secret_key(part) for part in parts):
        return MASKED
    text = repr(value)
    return text if len(text) <= VALUE_WIDTH else text[:VALUE_WIDTH - 3] + "..."


def _get(tree: Any, parts: Sequence[str | int]) -> Any:
    for part in parts:
        in_mapping = isinstance(tree, Mapping) and isinstance(part, str) and part in tree
        in_list = isinstance(tree, list) and isinstance(part, int) and part < len(tree)
        if in_mapping or in_list:
            tree = tree[part]
        else:
            return None
    return tree


# --- schema validation ------------------------------------------------------------------------------------


def load_schema(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            schema = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the configuration schema {path}: {exc}") from exc
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"{path} is not a valid JSON Schema (Draft 2020-12): {exc.message}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"{path}: a JSON Schema document must be an object")
    return schema


def check_environment(environment: str, schema: Mapping[str, Any]) -> None:
    """Refuse an environment that the schema's ``environment`` enum does not list (a typo loads base only)."""
    allowed = schema.get("properties", {}).get("environment", {}).get("enum")
    if allowed and environment not in allowed:
        raise ConfigError(f"unknown environment {environment!r}; the schema allows {', '.join(allowed)}")


_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _message(error: jsonschema.ValidationError) -> str:
    keyword, expected = error.validator, error.validator_value
    if keyword == "type":
        kinds = expected if isinstance(expected, list) else [expected]
        return f"must be of type {' or '.join(kinds)}"
    if keyword in _BOUNDS:
        return f"must be {_BOUNDS[str(keyword)]} {expected}"
    if keyword == "enum":
        return f"must be one of {', '.join(repr(item) for item in expected)}"
    if keyword == "const":
        return f"must be {expected!r}"
    if keyword == "pattern":
        return f"must match {expected}"
    if keyword in ("anyOf", "oneOf") and isinstance(error.schema, Mapping) and error.schema.get("description"):
        return f"matches none of the allowed forms: {error.schema['description']}"
    text = error.message
    shown = repr(error.instance)
    return "value" + text[len(shown):] if text.startswith(shown) else text


def validate(merged: Mapping[str, Any], schema: Mapping[str, Any], origins: Mapping[str, str]) -> list[Violation]:
    """Every JSON Schema (Draft 2020-12) error at once, one Violation per failing key, sorted by path."""
    validator = jsonschema.Draft202012Validator(schema)
    found: dict[tuple[str, str], Violation] = {}

    def add(parts: Sequence[str | int], rule: str, message: str, value: str, origin_parts: Sequence[str | int]) -> None:
        path = format_path(parts) or "(top level)"
        found.setdefault((path, rule + message),
                         Violation(path, rule, message, value, origin_of(origin_parts, origins)))

    for error in validator.iter_errors(merged):
        parts = list(error.absolute_path)
        keyword = str(error.validator)
        if keyword == "required" and isinstance(error.instance, Mapping):
            for name in error.validator_value:
                if name not in error.instance:
                    add([*parts, name], "required", f"required key {name!r} is missing", MISSING, parts)
        elif keyword == "additionalProperties" and isinstance(error.instance, Mapping):
            schema_here = error.schema if isinstance(error.schema, Mapping) else {}
            known = schema_here.get("properties", {})
            patterns = schema_here.get("patternProperties", {})
            allowed = ", ".join(sorted(known)) or "none"
            for name, value in error.instance.items():
                if name not in known and not any(re.search(p, name) for p in patterns):
                    add([*parts, name], "additionalProperties", f"unknown key {name!r} (allowed: {allowed})",
                        _shown(value, [*parts, name]), [*parts, name])
        elif "propertyNames" in error.schema_path and isinstance(error.instance, str):
            add([*parts, error.instance], "propertyNames", f"key name {_message(error)}", repr(error.instance),
                [*parts, error.instance])
        else:
            add(parts, keyword, _message(error), _shown(error.instance, parts), parts)
    return sorted(found.values(), key=lambda v: (v.path, v.rule, v.message))


# --- policies -----------------------------------------------------------------------------------------------


def _is_reference(value: Any) -> bool | None:
    """True for a well-formed reference, False for a malformed one, None when `value` is no reference at all."""
    if isinstance(value, str):
        return True if value.startswith("vault:") and value[len("vault:"):].strip() else None
    if isinstance(value, Mapping) and ("vault" in value or "ansible_vault_file" in value):
        if len(value) != 1:
            return False
        if "vault" in value:
            return isinstance(value["vault"], str) and bool(VAULT_REFERENCE.fullmatch(value["vault"]))
        return isinstance(value["ansible_vault_file"], str) and bool(value["ansible_vault_file"].strip())
    return None


def _walk(tree: Any, parts: tuple[str | int, ...] = ()) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    yield parts, tree
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _walk(value, (*parts, key))
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _walk(value, (*parts, index))


def _secret_violations(merged: Mapping[str, Any], origins: Mapping[str, str]) -> list[Violation]:
    found = []
    for parts, value in _walk(merged):
        if not any(isinstance(part, str) and is_secret_key(part) for part in parts):
            continue
        reference = _is_reference(value)
        path = format_path(parts)
        if reference is False:
            found.append(Violation(path, "no-plaintext-secret",
                                   "malformed secret reference; use {vault: 'path#key'}, {ansible_vault_file: "
                                   "'file'} or 'vault:...'", MASKED, origin_of(parts, origins)))
        elif reference is None and isinstance(value, str) and not _inside_reference(merged, parts):
            found.append(Violation(path, "no-plaintext-secret",
                                   "plaintext secret; use {vault: 'path#key'}, {ansible_vault_file: 'file'} or "
                                   "'vault:...'", MASKED, origin_of(parts, origins)))
    return found


def _inside_reference(merged: Mapping[str, Any], parts: Sequence[str | int]) -> bool:
    """True when the string at `parts` is the inside of a reference mapping (its path or file name)."""
    return len(parts) > 0 and _is_reference(_get(merged, parts[:-1])) is not None


def _latest_tag_violations(merged: Mapping[str, Any], origins: Mapping[str, str]) -> list[Violation]:
    found = []
    for parts, value in _walk(merged):
        if parts and parts[-1] in ("image", "tag") and isinstance(value, str) and (
                value == "latest" or value.endswith(":latest")):
            found.append(Violation(format_path(parts), "no-latest-tag",
                                   "'latest' is not a release; pin a version tag or a digest", repr(value),
                                   origin_of(parts, origins)))
    return found


def _require_true(merged: Mapping[str, Any], parts: tuple[str, ...], rule: str, message: str,
                  origins: Mapping[str, str]) -> list[Violation]:
    value = _get(merged, parts)
    if value is True:
        return []
    shown = MISSING if value is None else _shown(value, parts)
    return [Violation(format_path(parts), rule, message, shown, origin_of(parts, origins))]


def check_policies(merged: Mapping[str, Any], environment: str, origins: Mapping[str, str]) -> list[Violation]:
    """Rules the schema cannot express; production rules apply to environment ``production`` only."""
    found: list[Violation] = []
    declared = merged.get("environment")
    if declared is not None and declared != environment:
        found.append(Violation("environment", "environment-mismatch",
                               f"the layers declare environment {declared!r} but {environment!r} is being deployed",
                               repr(declared), origin_of(["environment"], origins)))
    if environment == "production":
        found += _require_true(merged, ("gateway", "tls", "enabled"), "production-gateway-tls",
                               "production requires TLS on the gateway (gateway.tls.enabled: true)", origins)
        found += _require_true(merged, ("gateway", "auth", "enabled"), "production-auth",
                               "production requires authentication on the gateway (gateway.auth.enabled: true)",
                               origins)
        services = merged.get("services")
        services = services if isinstance(services, Mapping) else {}
        defaults = merged.get("defaults")
        defaults = defaults if isinstance(defaults, Mapping) else {}
        for name in sorted(services):
            service = services[name]
            if not isinstance(service, Mapping):
                continue  # the schema reports it
            replicas = service.get("replicas", defaults.get("replicas", 1))
            if isinstance(replicas, int) and replicas >= 2:
                continue
            parts: tuple[str, ...] = ("services", name, "replicas")
            where = parts if "replicas" in service else ("defaults", "replicas") if "replicas" in defaults else \
                ("services", name)
            found.append(Violation(format_path(parts), "production-replicas",
                                   "production needs at least 2 replicas per service", repr(replicas),
                                   origin_of(where, origins)))
    found += _secret_violations(merged, origins)
    found += _latest_tag_violations(merged, origins)
    return sorted(found, key=lambda v: (v.path, v.rule, v.message))


def format_violations(violations: Iterable[Violation]) -> str:
    return "\n".join(f"{v.path}: {v.message} (rule {v.rule}, value {v.value}, from {v.origin})" for v in violations)


# --- version, diff and the applied-state file -------------------------------------------------------------


def content_version(merged: Mapping[str, Any]) -> str:
    """``cfg-`` and the first 12 hex digits of the SHA-256 of the canonical JSON of the merged configuration."""
    canonical = json.dumps(merged, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "cfg-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def diff(before: Mapping[str, Any], after: Mapping[str, Any], origins_after: Mapping[str, str]) -> list[dict[str, Any]]:
    """Changed leaves, sorted by path: {path, change: added|removed|changed, before, after, origin}."""
    old, new = flatten(before), flatten(after)
    changes = []
    for path in sorted(set(old) | set(new)):
        if path in old and path in new and old[path] == new[path]:
            continue
        change = "changed" if path in old and path in new else "added" if path in new else "removed"
        changes.append({
            "path": path,
            "change": change,
            "before": old.get(path),
            "after": new.get(path),
            "origin": origins_after.get(path) if path in new else None,
        })
    return changes


def read_applied(state_file: str) -> dict[str, Any] | None:
    """The record of the last applied configuration, or None when there is none yet."""
    if not os.path.exists(state_file):
        return None
    try:
        with open(state_file, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the applied-configuration record {state_file}: {exc}") from exc
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"applied-configuration record {state_file} has no 'config' mapping")
    return record


def versions_dir(state_file: str) -> str:
    """Where every applied version is kept whole, one ``<version>.json`` each, beside the record."""
    return state_file + ".versions"


def _write_private(path: str, text: str) -> None:
    """Write `text` to `path` atomically, mode 0600 (the configuration may hold secret references)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o750, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(dir=directory, prefix=".config-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp_path, 0o600)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def record_applied(state_file: str, record: Mapping[str, Any], event: Mapping[str, Any]) -> None:
    """Write `record` atomically (mode 0600), keep it as ``<versions_dir>/<version>.json`` and append `event` to
    ``<state_file>.history.jsonl``."""
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    _write_private(os.path.join(versions_dir(state_file), f"{record['version']}.json"), text)
    _write_private(state_file, text)
    fd = os.open(state_file + ".history.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as out:
        out.write(json.dumps(event, sort_keys=True, default=str) + "\n")


def applied_versions(state_file: str) -> list[dict[str, Any]]:
    """The versions applied so far, oldest first, each once at its latest application: {version, at}."""
    history = state_file + ".history.jsonl"
    if not os.path.exists(history):
        return []
    latest: dict[str, str] = {}
    with open(history, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            try:
                event = json.loads(line)
                version, at = event["version"], event.get("at", "")
            except (ValueError, KeyError, TypeError) as exc:
                raise ConfigError(f"{history} line {number} is not a history event: {exc}") from exc
            latest.pop(version, None)
            latest[version] = at
    return [{"version": version, "at": at} for version, at in latest.items()]


_VERSION = re.compile(r"^cfg-[0-9a-f]{12}$")


def read_version(state_file: str, version: str) -> dict[str, Any]:
    """The record of an earlier applied `version` (see record_applied); a clear error names the known ones."""
    if not _VERSION.match(version):
        raise ConfigError(f"{version!r} is not a configuration version (cfg- and 12 hex digits, as validate.yml "
                          "prints and the history records)")
    path = os.path.join(versions_dir(state_file), f"{version}.json")
    if not os.path.exists(path):
        known = applied_versions(state_file)[-10:]
        listed = ", ".join(f"{entry['version']} ({entry['at']})" for entry in reversed(known)) or "none yet"
        raise ConfigError(f"configuration version {version} was never applied in this environment "
                          f"(record {state_file}); the latest applied: {listed}")
    record = read_applied(path)
    if record is None or record.get("version") != version or content_version(record["config"]) != version:
        raise ConfigError(f"{path} does not hold configuration {version} (its content hashes differently)")
    return record


def _resolve(schema: Mapping[str, Any], node: Any) -> Any:
    """`node` with a local ``$ref`` followed; keywords beside the ``$ref`` (such as ``x-restart``) win."""
    seen = 0
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str) and node["$ref"].startswith("#/"):
        target: Any = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = {**target, **{key: value for key, value in node.items() if key != "$ref"}}
        seen += 1
        if seen > 32:
            raise ConfigError(f"schema $ref loop at {node.get('$ref')}")
    return node


def needs_restart(schema: Mapping[str, Any], path: str) -> bool:
    """Whether a change at `path` (as diff() names it) reaches instances only through a restart: the deepest
    ``x-restart`` on the way down the schema decides; a path the schema does not mark counts as a restart."""
    node = _resolve(schema, schema)
    marked: bool | None = None
    for key in re.sub(r"\[\d+\]", "", path).split("."):
        if isinstance(node.get("x-restart"), bool):
            marked = node["x-restart"]
        properties = node.get("properties") or {}
        if key in properties:
            node = _resolve(schema, properties[key])
        elif isinstance(node.get("additionalProperties"), Mapping):
            node = _resolve(schema, node["additionalProperties"])
        else:
            return marked is not False
    if isinstance(node.get("x-restart"), bool):
        marked = node["x-restart"]
    return marked is not False


def utc_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
