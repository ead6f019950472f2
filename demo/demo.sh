#!/usr/bin/env bash
# The main job on this machine: a server, two tentacles (one listening, one polling),
# both registered and online. Everything lives under .demo/ of this clone, on free ports: the
# server and web-01 bind port 0 and log what they took (kept in .demo/ports), so the demo runs
# beside any program holding ports, and beside the demo of another clone. `make demo-stop` ends
# this clone's demo only.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
DEMO="$PWD/.demo"

if [ -f "$DEMO/pids" ]; then
  echo "this clone's demo is already running; stopping it first"
  demo/stop.sh
fi
rm -rf "$DEMO"
mkdir -p "$DEMO"
server() { "$BIN/server-shim" --home "$DEMO/server" "$@"; }
api() { server "$@" --server "$URL"; }  # the commands that are requests to the running server

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

# wait_for FILE PATTERN PID: the first match of the sed pattern in FILE, while PID lives (20 s).
wait_for() {
  local found
  for _ in $(seq 100); do
    found=$(sed -n "$2" "$1" | head -n 1)
    [ -n "$found" ] && { echo "$found"; return 0; }
    kill -0 "$3" 2>/dev/null || break
    sleep 0.2
  done
  echo "demo: $(basename "$1" .log) did not start; its log, $1:" >&2
  tail -n 20 "$1" >&2
  return 1
}

step "initialising the server (SQLite, CA, server certificate, admin API key)"
server init --listen 127.0.0.1:0 --polling-listen 127.0.0.1:0 >/dev/null
"$BIN/server-shim" --home "$DEMO/server" run >"$DEMO/server.log" 2>&1 &  # not the function: $! must be the server
SERVER_PID=$!
echo "server $SERVER_PID" >>"$DEMO/pids"
PORTS=$(wait_for "$DEMO/server.log" 's/.*server\.started api=\([0-9]*\) polling=\([0-9]*\).*/\1 \2/p' $SERVER_PID)
read -r API POLL <<<"$PORTS"
URL="https://127.0.0.1:$API"
printf 'api %s\npolling %s\n' "$API" "$POLL" >"$DEMO/ports"
THUMB=$(server show-thumbprint)
TOKEN=$(server token create --uses 2 --expires 10m)
echo "server on $URL (polling on port $POLL), thumbprint $THUMB"

step "registering web-01 (listening, on a free port) and db-01 (polling)"
COMMON=(--server "$URL" --token "$TOKEN" --server-thumbprint "$THUMB" --environment Demo)
"$BIN/tentacle" --home "$DEMO/web-01" register "${COMMON[@]}" --name web-01 --role web --listen 127.0.0.1:0
"$BIN/tentacle" --home "$DEMO/db-01" register "${COMMON[@]}" --name db-01 --role db --polling
for t in web-01 db-01; do
  "$BIN/tentacle" --home "$DEMO/$t" run >"$DEMO/$t.log" 2>&1 &
  echo "$t $!" >>"$DEMO/pids"
done
WEB_PID=$(awk '$1 == "web-01" {print $2}' "$DEMO/pids")
LISTEN=$(wait_for "$DEMO/web-01.log" 's/.*listening\.started host=[^ ]* port=\([0-9]*\).*/\1/p' "$WEB_PID")
echo "web-01 $LISTEN" >>"$DEMO/ports"

step "waiting for both machines to show online"
# web-01 tells the server its port as it starts; the server's next check (every 5 s) finds it.
for _ in $(seq 75); do
  [ "$(api machines --json | grep -c '"online"')" = 2 ] && break
  sleep 0.2
done
api machines
if [ "$(api machines --json | grep -c '"online"')" != 2 ]; then
  echo "demo: the machines did not come online; see $DEMO/*.log" >&2
  exit 1
fi

step "pushing two packages into the built-in NuGet feed"
"$BIN/python" demo/packages.py "$DEMO/packages"
server package push "$DEMO/packages/OctoPetShop.Web.1.0.0.zip" "$DEMO/packages/OctoPetShop.Db.1.0.0.nupkg"
# The built-in feed doubles as the "nearest mirror" here; in real life, nginx near the targets
# serves `server-shim feed export DIR` and checks client certificates against `server-shim show-ca`.
server feed add mirrors --mirror "$URL/nuget/v3/index.json"

step "applying the project, creating release 1.0.0"
api project apply demo/project.json
api release create --project OctoPetShop --version 1.0.0 >/dev/null

step "deploying 1.0.0 to Demo (pre-acquisition, then every package everywhere, then the steps)"
set +e
api deploy --project OctoPetShop --version 1.0.0 --environment Demo --follow
RESULT=$?
set -e

if [ $RESULT = 0 ]; then OUTCOME="success"; else OUTCOME="FAILED (exit $RESULT)"; fi
cat <<MSG

Deployment: $OUTCOME

The demo is still running (ports in .demo/ports):
  server      $URL   (home $DEMO/server, log $DEMO/server.log)
  web-01      listening on :$LISTEN     (home $DEMO/web-01, log $DEMO/web-01.log)
              its package OctoPetShop.Web was pushed (streamed) to it by the server
  db-01       polling                   (home $DEMO/db-01, log $DEMO/db-01.log)
              its package OctoPetShop.Db was pulled from the mirror (the built-in feed here)
Try:   .venv/bin/server-shim --home .demo/server machines --server $URL
       .venv/bin/server-shim --home .demo/server runbook run --project OctoPetShop --runbook Restart --environment Demo --follow --server $URL
Stop:  make demo-stop
MSG
exit $RESULT
