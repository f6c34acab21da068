"""Run one of the project's modules through the real `ansible` CLI, the way a playbook task would."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# Managed hosts run modules with Debian's Python; the controller-side ones (speech_config) with the venv's.
SYSTEM_PYTHON = Path("/usr/bin/python3")
CONTROLLER_PYTHON = Path(sys.executable)


def run_module(module: str, args: dict[str, Any], *options: str, python: Path = SYSTEM_PYTHON) -> dict[str, Any]:
    """Run `module` on localhost with `args` (and extra CLI options such as --check) and return its result."""
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_HOME": str(REPO / ".cache" / "ansible"),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
        "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        "ANSIBLE_FORCE_COLOR": "0",
    }
    proc = subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local", "-e",
         f"ansible_python_interpreter={python}", "-m", module, "-a", json.dumps(args), *options],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    # ansible.cfg enables profile_tasks, which prints timings around the JSON document.
    start = re.search(r"^\{", proc.stdout, re.MULTILINE)
    try:
        report, _ = json.JSONDecoder().raw_decode(proc.stdout, start.start() if start else 0)
    except json.JSONDecodeError:
        pytest.fail(f"ansible printed no JSON (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = report["plays"][0]["tasks"][0]["hosts"]["localhost"]
    return result
