#!/usr/bin/env bash
# Create or refresh the controller venv (.venv) from requirements.txt + constraints.txt.
# Reinstalls only when the pins change, so a second run takes well under a second.
#
# Wheels no registry has for this machine (a service's built_wheels.json: llama-cpp-python, which publishes no
# CPU wheel) are compiled once per machine by scripts/build_wheels.py into its cache ($XL_WHEEL_CACHE, else
# ~/.cache/xlerobot-deploy/wheels, outside the checkout so every clone shares it) and installed from there. The
# first run on a machine spends minutes compiling (it needs a C++ compiler and cmake, installed here if
# missing); every later run, and every image build (roles/image_build), reuses the cached wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv
stamp="$venv/.pins.sha256"
shopt -s nullglob
built_manifests=(services/*/built_wheels.json)
shopt -u nullglob
want=$(cat requirements.txt constraints.txt services/*/requirements.lock "${built_manifests[@]}" | sha256sum | cut -d' ' -f1)

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  echo "venv: installing python3-venv" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  built_wheels=()
  if [ "${#built_manifests[@]}" -gt 0 ]; then
    if ! command -v c++ >/dev/null || ! command -v cmake >/dev/null; then
      echo "venv: installing build-essential and cmake to compile ${built_manifests[*]}" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential cmake >/dev/null
    fi
    echo "venv: compiling (minutes, once per machine) or reusing the wheels of ${built_manifests[*]}" >&2
    report=$("$venv/bin/python" scripts/build_wheels.py "${built_manifests[@]/#/--manifest=}")
    mapfile -t built_wheels < <("$venv/bin/python" -c \
      'import json, sys; print(*(w["wheel"] for w in json.load(sys.stdin)["wheels"]), sep="\n")' <<<"$report")
  fi
  echo "venv: installing pinned packages into $venv" >&2
  "$venv/bin/python" -m pip install --quiet -r requirements.txt -c constraints.txt "${built_wheels[@]}"
  # Installed as pinned, without the resolver: rapidocr declares opencv-python (needs libGL), and its lock
  # carries opencv-python-headless instead (see the file's header).
  "$venv/bin/python" -m pip install --quiet --no-deps -r services/multimodal/requirements.lock
  echo "$want" > "$stamp"
fi
