#!/usr/bin/env bash
# Stops what demo.sh of this clone started (gracefully: SIGTERM, then waits). A pid in .demo/pids
# is signalled only while its command line still names this clone's .demo/: a pid reused by
# another program since, or another clone's demo, is left alone.
set -uo pipefail
cd "$(dirname "$0")/.."
DEMO="$PWD/.demo"
PIDS="$DEMO/pids"
[ -f "$PIDS" ] || { echo "no demo is running"; exit 0; }
ours() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "--home $DEMO/"; }
while read -r name pid; do
  if ! ours "$pid"; then
    echo "$name (pid $pid) is not running, or no longer this demo's: left alone"
    continue
  fi
  kill -TERM "$pid"
  for _ in $(seq 50); do ours "$pid" || break; sleep 0.2; done
  if ours "$pid"; then echo "$name did not stop within 10 s (pid $pid)"; else echo "stopped $name"; fi
done < <(tac "$PIDS")
rm -f "$PIDS"
