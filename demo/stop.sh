#!/usr/bin/env bash
# Stops what demo.sh started (gracefully: SIGTERM, then waits).
set -uo pipefail
cd "$(dirname "$0")/.."
PIDS=.demo/pids
[ -f "$PIDS" ] || { echo "no demo is running"; exit 0; }
while read -r name pid; do
  if kill -TERM "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then echo "$name did not stop within 10 s (pid $pid)"; else echo "stopped $name"; fi
  fi
done < <(tac "$PIDS")
rm -f "$PIDS"
