#!/usr/bin/env bash
# Runs `molecule test` for each scenario named, up to MOLECULE_JOBS at a time (each scenario has its own test
# host container and ephemeral directory), then prints every scenario's log in the order given.
# Exits non-zero when any scenario failed, naming it.
set -uo pipefail
jobs="${MOLECULE_JOBS:-3}"
logs="${MOLECULE_LOG_DIR:-.cache/molecule-logs}"
mkdir -p "$logs"
rm -f "$logs"/*.log "$logs"/*.failed

printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c '
  start=$(date +%s)
  if PY_COLORS=0 molecule test -s "$1" > "$2/$1.log" 2>&1; then result=passed; else result=FAILED; touch "$2/$1.failed"; fi
  echo "molecule $1: $result in $(( $(date +%s) - start )) s"
' _ {} "$logs"

for scenario in "$@"; do
  echo "===== molecule scenario $scenario ====="
  cat "$logs/$scenario.log"
done

failed=$(cd "$logs" && ls -- *.failed 2>/dev/null | sed 's/\.failed$//' | tr '\n' ' ')
if [ -n "$failed" ]; then
  echo "molecule: failed scenarios: $failed" >&2
  exit 1
fi
echo "molecule: all $# scenarios passed"
