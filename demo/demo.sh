#!/usr/bin/env bash
# The main job on this machine: a server, two tentacles (one listening, one polling),
# both registered and online. Everything lives under .demo/; `make demo-stop` ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$PWD/.venv/bin"
DEMO="$PWD/.demo"
API=18443 POLL=20943 LISTEN=20933

if [ -f "$DEMO/pids" ]; then
  echo "a demo is already running; stopping it first"
  demo/stop.sh
fi
rm -rf "$DEMO"
mkdir -p "$DEMO"
server() { "$BIN/server-shim" --home "$DEMO/server" "$@"; }

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "initialising the server (SQLite, CA, server certificate, admin API key)"
server init --public-url "https://127.0.0.1:$API" --listen "127.0.0.1:$API" --polling-listen "127.0.0.1:$POLL" >/dev/null
"$BIN/server-shim" --home "$DEMO/server" run >"$DEMO/server.log" 2>&1 &  # not the function: $! must be the server
echo "server $!" >>"$DEMO/pids"
for _ in $(seq 50); do grep -q server.started "$DEMO/server.log" && break; sleep 0.2; done
THUMB=$(server show-thumbprint)
TOKEN=$(server token create --uses 2 --expires 10m)
echo "server thumbprint $THUMB"

step "registering web-01 (listening on 127.0.0.1:$LISTEN) and db-01 (polling)"
COMMON=(--server "https://127.0.0.1:$API" --token "$TOKEN" --server-thumbprint "$THUMB" --environment Demo)
"$BIN/tentacle" --home "$DEMO/web-01" register "${COMMON[@]}" --name web-01 --role web --listen "127.0.0.1:$LISTEN"
"$BIN/tentacle" --home "$DEMO/db-01" register "${COMMON[@]}" --name db-01 --role db --polling
for t in web-01 db-01; do
  "$BIN/tentacle" --home "$DEMO/$t" run >"$DEMO/$t.log" 2>&1 &
  echo "$t $!" >>"$DEMO/pids"
done

step "waiting for both machines to show online"
for _ in $(seq 50); do
  [ "$(server machines --json | grep -c '"online"')" = 2 ] && break
  sleep 0.2
done
server machines
if [ "$(server machines --json | grep -c '"online"')" != 2 ]; then
  echo "demo: the machines did not come online; see $DEMO/*.log" >&2
  exit 1
fi

step "pushing two packages into the built-in NuGet feed"
"$BIN/python" demo/packages.py "$DEMO/packages"
server package push "$DEMO/packages/OctoPetShop.Web.1.0.0.zip" "$DEMO/packages/OctoPetShop.Db.1.0.0.nupkg"
# The built-in feed doubles as the "nearest mirror" here; in real life, nginx near the targets
# serves `server-shim feed export DIR` and checks client certificates against `server-shim show-ca`.
server feed add mirrors --mirror "https://127.0.0.1:$API/nuget/v3/index.json"

step "applying the project, creating release 1.0.0"
server project apply demo/project.json
server release create --project OctoPetShop --version 1.0.0 >/dev/null

step "deploying 1.0.0 to Demo (pre-acquisition, then every package everywhere, then the steps)"
set +e
server deploy --project OctoPetShop --version 1.0.0 --environment Demo --follow
RESULT=$?
set -e

if [ $RESULT = 0 ]; then OUTCOME="success"; else OUTCOME="FAILED (exit $RESULT)"; fi
cat <<MSG

Deployment: $OUTCOME

The demo is still running:
  server      https://127.0.0.1:$API   (home $DEMO/server, log $DEMO/server.log)
  web-01      listening on :$LISTEN     (home $DEMO/web-01, log $DEMO/web-01.log)
              its package OctoPetShop.Web was pushed (streamed) to it by the server
  db-01       polling                   (home $DEMO/db-01, log $DEMO/db-01.log)
              its package OctoPetShop.Db was pulled from the mirror (the built-in feed here)
Try:   .venv/bin/server-shim --home .demo/server machines
       .venv/bin/server-shim --home .demo/server runbook run --project OctoPetShop --runbook Restart --environment Demo --follow
Stop:  make demo-stop
MSG
exit $RESULT
