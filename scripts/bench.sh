#!/bin/sh
# bench.sh - `make bench`: throughput of the real stack, each figure as a ratio against a
# baseline measured in the same run (these machines are noisy; absolute numbers are not).
#
#   0. Purchases of one hot plan, instant processor, 16 connections, against the raw durable
#      purchase transaction on the same SQLite file (scripts/bench/raw_purchase.c, 16
#      processes): how close the service comes to what the store itself can do; with p99.
#   0'. The same on PostgreSQL (a throwaway server from tests/pg_server.sh), against pgbench
#      running the same statements (scripts/bench/raw_purchase.sql): SQLite and PostgreSQL
#      side by side in one run.
#   3. Purchases with a 500 ms processor, 256 buyers at once, the default worker count, against
#      the original design reproduced (raw_purchase with the payment inside the transaction).
#   1. GET /api/plans through nginx + FastCGI + SQLite, against a trivial FastCGI handler
#      serving the same bytes behind the same nginx (scripts/bench/trivial.c) and against nginx
#      serving a static file; then the workers' resident memory.
#   2. Purchases/s with an instant processor, against GET /api/plans.
#   3. Purchases/s of ONE plan with a 50 ms processor: many buyers at once, against one buyer
#      at a time, which is the best the original service's design could do (it held a
#      database transaction across the payment call, so one plan's purchases ran one by one).
#
# BENCH_SECONDS (default 5) and BENCH_WORKERS (default: the service's own, 2 per core) tune it. BENCH_STACK_ROOT runs
# another checkout's build (say, the commit before a change) under the same measurement.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_ROOT=${BENCH_STACK_ROOT:-$ROOT}
SECS=${BENCH_SECONDS:-5}
WORKERS=${BENCH_WORKERS:-}
PY=/usr/bin/python3
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }

DIR=$(mktemp -d)
STACK_PID=""
cleanup() {
	if [ -n "$STACK_PID" ]; then
		kill -TERM "$STACK_PID" 2>/dev/null || true
		wait "$STACK_PID" 2>/dev/null || true
	fi
	stop_pg
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
PGDIR=""
stop_pg() {
	[ -n "$PGDIR" ] && "$ROOT/tests/pg_server.sh" stop "$PGDIR" 2>/dev/null && rm -rf "$PGDIR"
	PGDIR=""
}

# start_stack <latency ms>: the stack in the background, on a fresh store; sets PORT.
start_stack() {
	if [ -n "$STACK_PID" ]; then
		kill -TERM "$STACK_PID"
		wait "$STACK_PID" 2>/dev/null || true
	fi
	rm -rf "$DIR/var"
	PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	export PORT
	NUMATIX_DB=${STACK_DB:-sqlite://$DIR/var/numatix.db} NUMATIX_VAR="$DIR/var" NUMATIX_WORKERS=${STACK_WORKERS-$WORKERS} NUMATIX_PAYMENT_LATENCY_MS=$1 \
		NUMATIX_ADMIN_TOKEN=bench-admin-token-0123456789 "$STACK_ROOT/scripts/run.sh" > "$DIR/run.log" 2>&1 &
	STACK_PID=$!
	until grep -q "Numatix is running" "$DIR/run.log"; do
		kill -0 "$STACK_PID" 2>/dev/null || { cat "$DIR/run.log"; exit 1; }
		sleep 0.1
	done
	BASE="http://127.0.0.1:$PORT"
	PLAN_ID=$(curl -fsS -X POST "$BASE/api/plans" -H "Authorization: Bearer bench-admin-token-0123456789" \
		-H "Content-Type: application/json" \
		-d "{\"name\":\"Bench $1\",\"price_cents\":100,\"total_capacity\":1000000000}" |
		$PY -c 'import json,sys; print(json.load(sys.stdin)["id"])')
	export PLAN_ID
}

# rate <connections> <url or -s script url>: requests per second that wrk measured.
rate() {
	c=$1
	shift
	t=2
	[ "$c" -lt 2 ] && t=1
	wrk -t$t -c"$c" -d"${SECS}s" --latency "$@" > "$DIR/wrk.out" 2>&1
	grep -E "^statuses:|Non-2xx" "$DIR/wrk.out" >&2 || true
	awk '/^Requests\/sec:/ {print $2}' "$DIR/wrk.out"
}

# p99 of the last rate() run, as wrk printed it (e.g. 12.34ms).
p99() { awk '$1 == "99%" {print $2}' "$DIR/wrk.out"; }

ratio() { $PY -c "print('%.2f' % ($1 / $2))"; }

cc -O2 -o "$DIR/raw_purchase" "$ROOT/scripts/bench/raw_purchase.c" $(pkg-config --cflags --libs sqlite3)
cc -O2 -o "$DIR/trivial" "$ROOT/scripts/bench/trivial.c" $(pkg-config --cflags --libs fcgi)

start_stack 0
HOT=$(rate 16 -s "$ROOT/scripts/bench/purchase.lua" "$BASE")
HOT_P99=$(p99)
RAW=$("$DIR/raw_purchase" "$DIR/var/numatix.db" "$PLAN_ID" 16 "$SECS")
NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$STACK_ROOT/cgi-bin/numatix" check >/dev/null || true

PG_HOT="-" PG_P99="-" PG_RAW="-"
if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
	PGDIR=$(mktemp -d /tmp/numatix-bench-pg-XXXXXX)
	STACK_DB=$("$ROOT/tests/pg_server.sh" start "$PGDIR")
	start_stack 0
	PG_HOT=$(rate 16 -s "$ROOT/scripts/bench/purchase.lua" "$BASE")
	PG_P99=$(p99)
	PG_RAW=$(pgbench -n -U postgres -h "$PGDIR" -c 16 -j 2 -T "$SECS" -D plan="'$PLAN_ID'" \
		-f "$ROOT/scripts/bench/raw_purchase.sql" numatix 2>&1 | awk '/^tps/ {print int($3)}')
	unset STACK_DB
fi

STACK_WORKERS="" start_stack 500
SLOW=$(rate 256 -s "$ROOT/scripts/bench/purchase.lua" "$BASE")
SLOW_P99=$(p99)
ORIGINAL=$("$DIR/raw_purchase" "$DIR/var/numatix.db" "$PLAN_ID" 256 "$SECS" 500 | awk '{printf "%.2f", $1}')

start_stack 0
STATIC=$(rate 32 "$BASE/index.html")
PLANS=$(rate 64 "$BASE/api/plans")
PLANS_P99=$(p99)
# the workers' resident memory after that load (the master's children but the reaper)
MASTER=$(pgrep -f "$STACK_ROOT/cgi-bin/numatix serve" | head -n1)
RSS=$(for c in $(pgrep -P "$MASTER"); do [ "$(cat /proc/$c/comm)" = numatix ] && awk '/^VmRSS/ {print $2}' /proc/$c/status; done |
	sort -n | tail -n1)
SERVED=$(awk '/requests in/ {print $1}' "$DIR/wrk.out")
# the same bytes from a handler that does nothing else, behind the same nginx
curl -fsS "$BASE/api/plans" > "$DIR/plans.json"
TPORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$DIR/trivial" "127.0.0.1:$TPORT" "$DIR/plans.json" "$(nproc)" &
TRIVIAL_PID=$!
kill -TERM "$STACK_PID"; wait "$STACK_PID" 2>/dev/null || true; STACK_PID=""
rm -rf "$DIR/var"
PORT=$($PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
PORT=$PORT NUMATIX_UPSTREAMS="127.0.0.1:$TPORT" NUMATIX_VAR="$DIR/var" NUMATIX_ADMIN_TOKEN=bench-admin-token-0123456789 \
	NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$ROOT/scripts/run.sh" > "$DIR/run.log" 2>&1 &
STACK_PID=$!
until grep -q "Numatix is running" "$DIR/run.log"; do kill -0 "$STACK_PID" 2>/dev/null || { cat "$DIR/run.log"; exit 1; }; sleep 0.1; done
TRIVIAL=$(rate 64 "$BASE/api/plans")
TRIVIAL_P99=$(p99)
pkill -P "$TRIVIAL_PID" 2>/dev/null; kill "$TRIVIAL_PID" 2>/dev/null; wait "$TRIVIAL_PID" 2>/dev/null || true

start_stack 0
BUY=$(rate 32 -s "$ROOT/scripts/bench/purchase.lua" "$BASE")
NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$STACK_ROOT/cgi-bin/numatix" check

start_stack 50
SERIAL=$(rate 1 -s "$ROOT/scripts/bench/purchase.lua" "$BASE")
PARALLEL=$(rate 64 -s "$ROOT/scripts/bench/purchase.lua" "$BASE")
NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$STACK_ROOT/cgi-bin/numatix" check

echo
echo "Numatix bench (${WORKERS:-default} workers, ${SECS}s per figure, $(nproc) cores, $STACK_ROOT)"
printf '  %-52s %10s tx/s\n' "raw durable purchase transaction, 16 processes (R)" "$RAW"
printf '  %-52s %10s req/s  = %s x R, p99 %s\n' "hot-plan purchases, 16 connections" "$HOT" "$(ratio "$HOT" "$RAW")" "$HOT_P99"
printf '  %-52s %10s tx/s\n' "PostgreSQL: raw purchase transaction, pgbench -c 16 (P)" "$PG_RAW"
printf '  %-52s %10s req/s  = %s x P, %s x the SQLite figure, p99 %s\n' "PostgreSQL: hot-plan purchases, 16 connections" "$PG_HOT" \
	"$( [ "$PG_RAW" != - ] && ratio "$PG_HOT" "$PG_RAW" || echo -)" "$( [ "$PG_HOT" != - ] && ratio "$PG_HOT" "$HOT" || echo -)" "$PG_P99"
printf '  %-52s %10s tx/s\n' "original design: payment inside the transaction (O)" "$ORIGINAL"
printf '  %-52s %10s req/s  = %s x O, p99 %s\n' "500 ms processor, 256 buyers, default workers" "$SLOW" "$(ratio "$SLOW" "$ORIGINAL")" "$SLOW_P99"
printf '  %-52s %10s req/s\n' "nginx static file (baseline A)" "$STATIC"
printf '  %-52s %10s req/s, p99 %s\n' "trivial FastCGI handler, same bytes, same nginx (T)" "$TRIVIAL" "$TRIVIAL_P99"
printf '  %-52s %10s req/s  = %s x A = %s x T, p99 %s\n' "GET /api/plans, 64 connections (B)" "$PLANS" "$(ratio "$PLANS" "$STATIC")" \
	"$(ratio "$PLANS" "$TRIVIAL")" "$PLANS_P99"
printf '  %-52s %10s kB after %s requests\n' "largest worker resident memory" "$RSS" "$SERVED"
printf '  %-52s %10s req/s  = %s x B\n' "purchases, instant processor" "$BUY" "$(ratio "$BUY" "$PLANS")"
printf '  %-52s %10s req/s\n' "one plan, 50 ms processor, 1 buyer at a time (C)" "$SERIAL"
printf '  %-52s %10s req/s  = %s x C\n' "one plan, 50 ms processor, 64 buyers at once" "$PARALLEL" "$(ratio "$PARALLEL" "$SERIAL")"
