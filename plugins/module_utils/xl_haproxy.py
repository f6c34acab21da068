# Copyright: XleRobot deploy authors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HAProxy runtime API: read server state and move traffic without a reload.

Plain functions over plain data, so the haproxy_traffic module stays a thin shell and pytest can
exercise every branch against a real HAProxy.
"""

from __future__ import annotations

import os
import re
import socket
import tempfile
import time
from typing import Any

# srv_op_state values from `show servers state` (HAProxy management guide, section 9.3).
OP_STATES = {0: "STOPPED", 1: "STARTING", 2: "RUNNING", 3: "STOPPING"}
# srv_admin_state bits.
ADMIN_FMAINT, ADMIN_IMAINT, ADMIN_CMAINT, ADMIN_FDRAIN, ADMIN_IDRAIN = 0x01, 0x02, 0x04, 0x08, 0x10
ADMIN_MAINT_MASK = ADMIN_FMAINT | ADMIN_IMAINT | ADMIN_CMAINT
ADMIN_DRAIN_MASK = ADMIN_FDRAIN | ADMIN_IDRAIN
MAX_WEIGHT = 256
# srv_check_result values: a freshly started HAProxy reports servers RUNNING before any check has passed,
# so UP also requires a passed check wherever checks are configured.
CHECK_PASSED, CHECK_CONDPASS = 3, 4
CHECK_CONFIGURED = 0x02


class HaproxyError(Exception):
    """The runtime API could not be reached or refused a command."""


def send_command(socket_path: str, command: str, timeout: float = 5.0) -> str:
    """Send one command line (several commands may be joined with ';') and return the raw answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(socket_path)
            conn.sendall(command.encode() + b"\n")
            chunks = []
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    except OSError as exc:
        raise HaproxyError(f"HAProxy runtime socket {socket_path}: {exc}") from exc
    return b"".join(chunks).decode(errors="replace")


def parse_servers_state(text: str) -> dict[str, dict[str, dict[str, Any]]]:
    """Parse `show servers state` into {backend: {server: {...}}}."""
    lines = [line for line in text.splitlines() if line.strip()]
    header: list[str] = []
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for line in lines:
        if line.startswith("#"):
            header = line.lstrip("# ").split()
            continue
        fields = line.split()
        if not header or len(fields) < 8:
            continue  # the leading format-version line, or noise
        row = dict(zip(header, fields, strict=False))  # HAProxy may append columns in later versions
        admin = int(row["srv_admin_state"])
        op_state = int(row["srv_op_state"])
        has_check = bool(int(row.get("srv_check_state", 0)) & CHECK_CONFIGURED)
        check_passed = int(row.get("srv_check_result", 0)) in (CHECK_PASSED, CHECK_CONDPASS)
        result.setdefault(row["be_name"], {})[row["srv_name"]] = {
            "address": row["srv_addr"],
            "port": int(row.get("srv_port", 0) or 0),
            "weight": int(row["srv_uweight"]),
            "initial_weight": int(row["srv_iweight"]),
            "op_state": OP_STATES.get(op_state, str(op_state)),
            "up": op_state == 2 and not admin & ADMIN_MAINT_MASK and (check_passed or not has_check),
            "maintenance": bool(admin & ADMIN_MAINT_MASK),
            "draining": bool(admin & ADMIN_DRAIN_MASK),
        }
    return result


def parse_stat_sessions(text: str) -> dict[tuple[str, str], int]:
    """Current sessions per (backend, server) from `show stat` CSV."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# "):
        raise HaproxyError(f"unexpected `show stat` answer: {text[:200]!r}")
    header = lines[0][2:].split(",")
    pxname, svname, scur = header.index("pxname"), header.index("svname"), header.index("scur")
    sessions = {}
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) > scur and fields[svname] not in ("FRONTEND", "BACKEND"):
            sessions[(fields[pxname], fields[svname])] = int(fields[scur] or 0)
    return sessions


def backend_state(socket_path: str, backend: str) -> dict[str, dict[str, Any]]:
    answer = send_command(socket_path, f"show servers state {backend}")
    if "Can't find backend" in answer or "No such backend" in answer:
        raise HaproxyError(f"backend {backend!r} does not exist in HAProxy")
    state = parse_servers_state(answer)
    if backend not in state:
        raise HaproxyError(f"backend {backend!r} has no servers in HAProxy (answer: {answer.strip()[:200]!r})")
    return state[backend]


def live_servers(servers: dict[str, dict[str, Any]]) -> list[str]:
    """Servers that take new requests: weight above zero and not in maintenance."""
    return sorted(name for name, srv in servers.items() if srv["weight"] > 0 and not srv["maintenance"])


def plan_weights(servers: dict[str, dict[str, Any]], weights: dict[str, int]) -> list[str]:
    """Runtime commands that bring `servers` to `weights`; raising ones first so capacity never dips to zero."""
    unknown = sorted(set(weights) - set(servers))
    if unknown:
        raise HaproxyError(f"unknown server(s) {unknown}; the backend has {sorted(servers)}")
    for name, weight in weights.items():
        if not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
            raise HaproxyError(f"weight for {name} must be an integer 0..{MAX_WEIGHT}, got {weight!r}")
    changes = [(name, weight) for name, weight in weights.items()
               if servers[name]["weight"] != weight or (weight > 0 and servers[name]["maintenance"])]
    changes.sort(key=lambda item: item[1] == 0)  # raise before lower
    commands = []
    for name, weight in changes:
        if weight > 0 and servers[name]["maintenance"]:
            commands.append(f"set server {{backend}}/{name} state ready")
        commands.append(f"set weight {{backend}}/{name} {weight}")
    return commands


def wait_until_up(socket_path: str, backend: str, names: list[str], timeout: float,
                  interval: float = 0.25) -> dict[str, dict[str, Any]]:
    """Block until HAProxy's own health checks report every server in `names` as UP."""
    deadline = time.monotonic() + timeout
    while True:
        servers = backend_state(socket_path, backend)
        down = [name for name in names if not servers.get(name, {}).get("up")]
        if not down:
            return servers
        if time.monotonic() >= deadline:
            detail = ", ".join(f"{name}={servers.get(name, {}).get('op_state', 'absent')}" for name in down)
            raise HaproxyError(f"HAProxy health checks never marked {detail} UP in backend {backend} "
                               f"within {timeout:.0f} s")
        time.sleep(interval)


def wait_until_drained(socket_path: str, backend: str, names: list[str], timeout: float,
                       interval: float = 0.25) -> dict[str, int]:
    """Block until the servers in `names` have no request in flight; return what was left at the end."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = parse_stat_sessions(send_command(socket_path, "show stat"))
        left = {name: sessions.get((backend, name), 0) for name in names}
        if not any(left.values()) or time.monotonic() >= deadline:
            return left
        time.sleep(interval)


def apply_weights(socket_path: str, backend: str, weights: dict[str, int], wait_up_timeout: float = 30.0,
                  check_mode: bool = False) -> dict[str, Any]:
    """Move traffic to `weights`. Servers gaining weight must be UP first, or nothing is changed."""
    before = backend_state(socket_path, backend)
    commands = [cmd.format(backend=backend) for cmd in plan_weights(before, weights)]
    result: dict[str, Any] = {"changed": bool(commands), "commands": commands,
                              "before": _weights_view(before), "after": _weights_view(before)}
    if not commands:
        return result
    expected = {**{name: srv["weight"] for name, srv in before.items()}, **weights}
    result["after"] = {name: expected[name] for name in before}
    if check_mode:
        return result
    gaining = [name for name, weight in weights.items() if weight > 0]
    if wait_up_timeout > 0 and gaining:
        wait_until_up(socket_path, backend, gaining, wait_up_timeout)
    # One line: HAProxy runs the commands back to back, so the switch is one runtime-API call.
    answer = send_command(socket_path, ";".join(commands)).strip()
    if answer:
        raise HaproxyError(f"HAProxy refused {commands}: {answer}")
    after = backend_state(socket_path, backend)
    wrong = {name: after[name]["weight"] for name, weight in weights.items() if after[name]["weight"] != weight}
    if wrong:
        raise HaproxyError(f"weights read back differ from what was set: {wrong}")
    result["after"] = _weights_view(after)
    return result


def all_backends_state(socket_path: str, backends: list[str] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """`show servers state` of every backend in one runtime-API call; with `backends`, each must exist."""
    state = parse_servers_state(send_command(socket_path, "show servers state"))
    missing = sorted(set(backends or []) - set(state))
    if missing:
        raise HaproxyError(f"backend(s) {missing} do not exist in HAProxy (it has {sorted(state)})")
    return {name: state[name] for name in backends} if backends is not None else state


# The runtime CLI reads one line into a buffer of tune.bufsize (16 kB by default); longer batches go in several.
MAX_LINE = 8000


def _send_lines(socket_path: str, commands: list[str]) -> list[str]:
    """Send commands joined by ';' in as few lines as fit, and return the non-empty answers."""
    answers: list[str] = []
    line: list[str] = []
    for command in commands:
        if line and len(";".join([*line, command])) > MAX_LINE:
            answers.append(send_command(socket_path, ";".join(line)).strip())
            line = []
        line.append(command)
    if line:
        answers.append(send_command(socket_path, ";".join(line)).strip())
    return [answer for answer in answers if answer]


def apply_batch(socket_path: str, batch: dict[str, dict[str, int]], wait_up_timeout: float = 30.0,
                check_mode: bool = False, interval: float = 0.25) -> dict[str, Any]:
    """Move the traffic of several backends at once: `batch` is {backend: {server: weight}}. Servers gaining weight
    must be UP first (or nothing changes); then every command goes in one runtime-API call, raising servers before
    lowering others; the weights are read back, and on any refusal or difference the batch is undone (every server
    set back to its weight before) and HaproxyError names what went wrong."""
    before = all_backends_state(socket_path, sorted(batch))
    commands: list[str] = []
    result: dict[str, Any] = {"changed": False, "backends": {}}
    for name in sorted(batch):
        planned = [cmd.format(backend=name) for cmd in plan_weights(before[name], batch[name])]
        expected = {**{srv: state["weight"] for srv, state in before[name].items()}, **batch[name]}
        result["backends"][name] = {"changed": bool(planned), "commands": planned,
                                    "before": _weights_view(before[name]),
                                    "after": {srv: expected[srv] for srv in sorted(before[name])}}
        commands += planned
    result["changed"] = bool(commands)
    result["commands"] = commands
    if not commands or check_mode:
        return result
    # Raising ones first across the whole batch, as plan_weights does within one backend.
    commands.sort(key=lambda command: command.startswith("set weight") and command.endswith(" 0"))
    gaining = {name: [srv for srv, weight in weights.items() if (weight > 0 and before[name][srv]["weight"] != weight)
                      or (weight > 0 and before[name][srv]["maintenance"])]
               for name, weights in batch.items()}
    if wait_up_timeout > 0 and any(gaining.values()):
        deadline = time.monotonic() + wait_up_timeout
        while True:
            now_state = all_backends_state(socket_path, sorted(batch))
            down = [f"{name}/{srv}={now_state[name].get(srv, {}).get('op_state', 'absent')}"
                    for name, names in gaining.items() for srv in names if not now_state[name].get(srv, {}).get("up")]
            if not down:
                break
            if time.monotonic() >= deadline:
                raise HaproxyError(f"HAProxy health checks never marked {', '.join(down)} UP within "
                                   f"{wait_up_timeout:.0f} s; nothing was changed")
            time.sleep(interval)
    refused = _send_lines(socket_path, commands)
    after = all_backends_state(socket_path, sorted(batch))
    wrong = {f"{name}/{srv}": after[name][srv]["weight"] for name, weights in batch.items()
             for srv, weight in weights.items() if after[name][srv]["weight"] != weight}
    if refused or wrong:
        undo = [cmd.format(backend=name) for name in sorted(batch)
                for cmd in plan_weights(after[name], {srv: before[name][srv]["weight"] for srv in batch[name]})]
        undo_refused = _send_lines(socket_path, undo) if undo else []
        problem = f"HAProxy refused {refused}" if refused else f"weights read back differ from what was set: {wrong}"
        undone = f" (the undo was refused too: {undo_refused})" if undo_refused else ""
        raise HaproxyError(f"{problem}; the batch was undone{undone}")
    for name in sorted(batch):
        result["backends"][name]["after"] = _weights_view(after[name])
    return result


def wait_drained(socket_path: str, servers_by_backend: dict[str, list[str]], timeout: float,
                 interval: float = 0.25) -> dict[str, dict[str, int]]:
    """Block until none of the servers has a request in flight (or `timeout`); return what was left per backend."""
    deadline = time.monotonic() + timeout
    while True:
        sessions = parse_stat_sessions(send_command(socket_path, "show stat"))
        left = {name: {srv: sessions.get((name, srv), 0) for srv in names}
                for name, names in servers_by_backend.items()}
        if not any(count for counts in left.values() for count in counts.values()) or time.monotonic() >= deadline:
            return left
        time.sleep(interval)


def _weights_view(servers: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: (0 if srv["maintenance"] else srv["weight"]) for name, srv in sorted(servers.items())}


def rewrite_config_weights(text: str, weights: dict[str, dict[str, int]]) -> str:
    """The configuration `text` with the `weight` of every server named in `weights` ({backend: {server: weight}})
    set to its live value: how a traffic move is persisted, so a restart or reload keeps it, without a template
    run or a reload. Nothing else in the file changes."""
    lines, backend = [], None
    for raw in text.splitlines(keepends=True):
        words = raw.split("#", 1)[0].split()
        if words and words[0] in ("backend", "frontend", "listen", "defaults", "global", "resolvers", "peers",
                                  "userlist"):
            backend = words[1] if words[0] in ("backend", "listen") and len(words) > 1 else None
        elif backend and len(words) >= 3 and words[0] == "server" and words[1] in weights.get(backend, {}):
            live = weights[backend][words[1]]
            if "weight" in words[3:]:
                raw = re.sub(r"(\sweight\s+)[0-9]+", rf"\g<1>{live}", raw, count=1)
            else:
                raw = raw.rstrip("\n") + f" weight {live}\n"
        lines.append(raw)
    return "".join(lines)


def persist_weights(config_file: str, weights: dict[str, dict[str, int]]) -> bool:
    """Write the live weights into the HAProxy configuration file (atomically, keeping its mode); True when the
    file changed."""
    with open(config_file, encoding="utf-8") as handle:
        before = handle.read()
    after = rewrite_config_weights(before, weights)
    if after == before:
        return False
    mode = os.stat(config_file).st_mode & 0o7777
    handle_fd, tmp_path = tempfile.mkstemp(dir=os.path.dirname(config_file) or ".", prefix=".haproxy-")
    try:
        with os.fdopen(handle_fd, "w", encoding="utf-8") as out:
            out.write(after)
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, config_file)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    return True


def config_weights(text: str) -> dict[str, dict[str, int]]:
    """Server weights per backend as written in an HAProxy configuration file (used when HAProxy is down)."""
    weights: dict[str, dict[str, int]] = {}
    backend = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if words[0] in ("backend", "frontend", "listen", "defaults", "global", "resolvers", "peers", "userlist"):
            backend = words[1] if words[0] in ("backend", "listen") and len(words) > 1 else None
            continue
        if backend and words[0] == "server" and len(words) >= 3:
            weight = 1  # HAProxy's default when no weight keyword is given
            if "weight" in words[3:]:
                weight = int(words[words.index("weight", 3) + 1])
            weights.setdefault(backend, {})[words[1]] = weight
    return weights


# --- maps: the gateway's API-key hashes live in one; rotation edits it at runtime ---------------------------


def parse_map(text: str) -> dict[str, str]:
    """`show map <file>` lines (``<ref> <key> <value>``) as key -> value; a key listed twice keeps its first value,
    the one HAProxy's lookups return."""
    entries: dict[str, str] = {}
    for line in text.splitlines():
        words = line.split(None, 2)
        if len(words) == 3 and words[0].startswith("0x"):
            entries.setdefault(words[1], words[2].strip())
    return entries


def map_entries(socket_path: str, map_file: str) -> dict[str, str]:
    """The entries a running HAProxy holds for the map loaded from `map_file`."""
    answer = send_command(socket_path, f"show map {map_file}")
    if "Unknown map identifier" in answer or "unknown map" in answer.lower():
        raise HaproxyError(f"HAProxy has no map loaded from {map_file}: {answer.strip()}")
    return parse_map(answer)


def plan_map(current: dict[str, str], desired: dict[str, str]) -> list[str]:
    """Runtime commands that turn `current` into `desired`: additions and changes first, deletions last, so an
    entry that stays valid is never missing in between."""
    for key, value in desired.items():
        if not key or any(ch.isspace() for ch in key) or not value or any(ch.isspace() for ch in value):
            raise ValueError("map keys and values must be non-empty and without spaces")
    commands = []
    for key, value in sorted(desired.items()):
        if key not in current:
            commands.append(f"add map {{map}} {key} {value}")
        elif current[key] != value:
            commands.append(f"set map {{map}} {key} {value}")
    commands += [f"del map {{map}} {key}" for key in sorted(set(current) - set(desired))]
    return commands


def sync_map(socket_path: str, map_file: str, desired: dict[str, str], check_mode: bool = False) -> dict[str, Any]:
    """Make the running map equal `desired` without a reload. The result names values (clients), never keys:
    the keys of the gateway's map are hashes of credentials."""
    current = map_entries(socket_path, map_file)
    commands = [command.format(map=map_file) for command in plan_map(current, desired)]
    result: dict[str, Any] = {
        "changed": bool(commands),
        "added": sorted(desired[key] for key in desired if key not in current),
        "removed": sorted(current[key] for key in current if key not in desired),
        "before": len(current),
        "after": len(desired),
    }
    if check_mode or not commands:
        return result
    for command in commands:
        answer = send_command(socket_path, command).strip()
        if answer:
            verb = " ".join(command.split()[:2])
            raise HaproxyError(f"HAProxy refused '{verb}' on map {map_file}: {answer}")
    if map_entries(socket_path, map_file) != desired:
        raise HaproxyError(f"map {map_file} read back differs from what was set")
    return result
