#!/usr/bin/env bash
# Create or refresh the controller venv (.venv) from requirements.txt + constraints.txt.
# Reinstalls only when the pins change, so a second run takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
stamp="$venv/.pins.sha256"
want=$(cat requirements.txt constraints.txt services/*/requirements.lock | sha256sum | cut -d' ' -f1)

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "venv: installing python3-venv" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "venv: installing pinned packages into $venv" >&2
  "$venv/bin/python" -m pip install --quiet -r requirements.txt -c constraints.txt
  echo "$want" > "$stamp"
fi
