#!/bin/sh
# bench.sh - `make bench`: the real stack driven by wrk, every figure against a baseline
# measured in the same run (these machines are noisy; absolute numbers are not), with p50,
# p99 and p99.9. Writes var/bench/report.md, var/bench/results.tsv and var/bench/ratios.png
# (gnuplot): each scenario, its baseline, the ratio, the target and whether it is met.
#
#   1. Reads: GET /api/plans through nginx + FastCGI + SQLite, against a trivial FastCGI
#      handler serving the same bytes behind the same nginx (scripts/bench/trivial.c), and
#      against nginx serving a static file.
#   2. Purchases of one hot plan, instant processor, 16 and 64 connections, against the raw
#      durable purchase transaction of the same store: scripts/bench/raw_purchase.c on the
#      same SQLite file; pgbench running the same statements (scripts/bench/raw_purchase.sql)
#      on a throwaway PostgreSQL (tests/pg_server.sh).
#   3. Purchases with a 500 ms processor, 256 buyers at once, default worker count, against the
#      original design reproduced (raw_purchase with the payment inside the transaction).
#   4. Growth: hot-plan purchases with 10^6 existing subscriptions and audit events (and their
#      payments and customers) against 10^4.
#   5. A 1,000,000-seat plan sold out by 64 buyers: the time it takes, every seat sold once,
#      and `numatix check` passing.
#   6. The largest worker's resident memory after a 1 s warm-up and after 10^6 requests.
#   7. One plan with a 50 ms processor: 64 buyers at once against one at a time.
#   8. Renewals: 10^4 subscriptions of the hot plan due at once, renewed by one `numatix renew`
#      pass while 16 buyers purchase seats of the same plan: renewals per second, and the
#      purchases meanwhile against the same plan's purchases without renewals.
#
# BENCH_SECONDS (default 5) per figure; BENCH_WORKERS (default: the service's own, 2 per core);
# BENCH_SELLOUT_SEATS (10^6), BENCH_GROWTH_ROWS (10^6), BENCH_RSS_REQUESTS (10^6), BENCH_RENEWALS
# (10^4);
# BENCH_STACK_ROOT measures another checkout's build; BENCH_OUT (var/bench) where the report
# goes. BENCH_SMOKE=1 runs every scenario briefly and small (make test does, as a smoke run;
# its figures mean nothing).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
STACK_ROOT=${BENCH_STACK_ROOT:-$ROOT}
WORKERS=${BENCH_WORKERS:-}
OUT=${BENCH_OUT:-$ROOT/var/bench}
PY=/usr/bin/python3
if [ -n "${BENCH_SMOKE:-}" ]; then
	SECS=1 SELLOUT=500 GROWTH_SMALL=100 GROWTH_LARGE=2000 RSS_REQUESTS=5000 RENEWALS=200
else
	SECS=${BENCH_SECONDS:-5} SELLOUT=${BENCH_SELLOUT_SEATS:-1000000}
	GROWTH_SMALL=10000 GROWTH_LARGE=${BENCH_GROWTH_ROWS:-1000000} RSS_REQUESTS=${BENCH_RSS_REQUESTS:-1000000}
	RENEWALS=${BENCH_RENEWALS:-10000}
fi
# the server's own renewer passes once at start; scenario 8 drives its passes with numatix renew
export NUMATIX_RENEW_INTERVAL=3600
command -v wrk >/dev/null || { echo "bench: wrk is missing (apt-get install wrk)" >&2; exit 1; }
command -v gnuplot >/dev/null || { echo "bench: gnuplot is missing (apt-get install gnuplot-nox)" >&2; exit 1; }

DIR=$(mktemp -d)
STACK_PID=""
TRIVIAL_PID=""
PGDIR=""
stop_stack() {
	if [ -n "$STACK_PID" ]; then
		kill -TERM "$STACK_PID" 2>/dev/null || true
		wait "$STACK_PID" 2>/dev/null || true
	fi
	STACK_PID=""
}
cleanup() {
	stop_stack
	[ -n "$TRIVIAL_PID" ] && kill "$TRIVIAL_PID" 2>/dev/null
	[ -n "$PGDIR" ] && "$ROOT/tests/pg_server.sh" stop "$PGDIR" 2>/dev/null && rm -rf "$PGDIR"
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
printf 'scenario\tfigure\tunit\tbaseline\tbaseline_figure\tratio\ttarget\tmet\tp50_ms\tp99_ms\tp999_ms\n' > "$RESULTS"

free_port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_stack <latency ms> [capacity]: the stack in the background on a fresh store (STACK_DB
# or SQLite), with one plan of that capacity; sets BASE, PLAN_ID.
start_stack() {
	stop_stack
	rm -rf "$DIR/var"
	# emptied here, not by the launch's redirection below: that runs in the background child,
	# and the wait for the banner could read the last stack's before it did
	: > "$DIR/run.log"
	PORT=$(free_port)
	NUMATIX_DB=${STACK_DB:-sqlite://$DIR/var/numatix.db} NUMATIX_VAR="$DIR/var" NUMATIX_WORKERS=${STACK_WORKERS-$WORKERS} \
		NUMATIX_PAYMENT_LATENCY_MS=$1 NUMATIX_ADMIN_TOKEN=bench-admin-token-0123456789 NUMATIX_LOG_LEVEL=warn \
		NUMATIX_RATE_LIMIT=off PORT=$PORT "$STACK_ROOT/scripts/run.sh" > "$DIR/run.log" 2>&1 &
	STACK_PID=$!
	until grep -q "Numatix is running" "$DIR/run.log"; do
		kill -0 "$STACK_PID" 2>/dev/null || { cat "$DIR/run.log"; exit 1; }
		sleep 0.1
	done
	BASE="http://127.0.0.1:$PORT"
	PLAN_ID=$(new_plan "Bench $1" "${2:-1000000000}")
	export PLAN_ID
}

new_plan() {
	curl -fsS -X POST "$BASE/api/plans" -H "Authorization: Bearer bench-admin-token-0123456789" \
		-H "Content-Type: application/json" -d "{\"name\":\"$1\",\"price_cents\":100,\"total_capacity\":$2}" |
		$PY -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

# rate <connections> <wrk arguments>: RATE gets the requests per second, LAT "p50 p99 p99.9"
# in ms.
rate() {
	c=$1
	shift
	t=2
	[ "$c" -lt 2 ] && t=1
	wrk -t$t -c"$c" -d"${SECS}s" "$@" > "$DIR/wrk.out" 2>&1
	grep -E "^statuses:|Non-2xx|Socket errors" "$DIR/wrk.out" >&2 || true
	LAT=$(awk '/^latency_us:/ {printf "%.2f %.2f %.2f", $2 / 1000, $3 / 1000, $4 / 1000}' "$DIR/wrk.out")
	RATE=$(awk '/^Requests\/sec:/ {print $2}' "$DIR/wrk.out")
}
GET="-s $ROOT/scripts/bench/latency.lua"
BUY="-s $ROOT/scripts/bench/purchase.lua"

ratio() { $PY -c "print('%.2f' % ($1 / $2))"; }

# record <scenario> <figure> <unit> <baseline> <baseline figure> <target, e.g. ">= 0.8" or "-">
#        [<p99 limit ms>]: one row of the report, with the last rate()'s latencies.
record() {
	r=$(ratio "$2" "$5")
	met=$($PY -c "
t, r, lim, p99 = '''$6''', $r, '''${7:-}''', '''$(echo "$LAT" | cut -d' ' -f2)'''
ok = True
if t != '-':
    op, v = t.split()
    ok = r >= float(v) if op == '>=' else r <= float(v)
if lim and p99:
    ok = ok and float(p99) <= float(lim)
print('n/a' if t == '-' and not lim else 'yes' if ok else 'NO')")
	target=$6
	[ -n "${7:-}" ] && target="$6, p99 <= ${7} ms"
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" "$r" "$target" "$met" \
		"$(echo "${LAT:-- - -}" | tr ' ' '\t')" >> "$RESULTS"
	printf '  %-58s %10s %-6s = %5s x %s (%s)\n' "$1" "$2" "$3" "$r" "$4" "$met" >&2
}

cc -O2 -o "$DIR/raw_purchase" "$ROOT/scripts/bench/raw_purchase.c" $(pkg-config --cflags --libs sqlite3)
cc -O2 -o "$DIR/trivial" "$ROOT/scripts/bench/trivial.c" $(pkg-config --cflags --libs fcgi)
echo "bench: $(nproc) cores, ${SECS}s a figure, workers ${WORKERS:-default}, $STACK_ROOT" >&2

# --- 1. reads, and 6. worker memory ------------------------------------------------------------
start_stack 0
rate 32 $GET "$BASE/index.html"
STATIC=$RATE
rate 64 $GET "$BASE/api/plans"
PLANS=$RATE
PLANS_LAT=$LAT
# this stack's own master: run.sh's child (another server of the same tree may be stopping)
MASTER=$(pgrep -P "$STACK_PID" -f "cgi-bin/numatix serve" | head -n1)
worker_rss() {
	for c in $(pgrep -P "$MASTER"); do
		[ "$(cat /proc/$c/comm)" = numatix ] && awk '/^VmRSS/ {print $2}' /proc/$c/status
	done | sort -n | tail -n1
}
# 6: memory after a 1 s warm-up, then after RSS_REQUESTS in all (wrk -R is not in Debian's wrk:
# the run lasts as long as it takes at this machine's rate)
wrk -t2 -c64 -d1s "$BASE/api/plans" > /dev/null 2>&1
RSS_EARLY=$(worker_rss)
per_s=$(printf '%.0f' "$PLANS")
rss_secs=$(( RSS_REQUESTS / (per_s > 0 ? per_s : 1) + 1 ))
wrk -t2 -c64 -d"${rss_secs}s" "$BASE/api/plans" > "$DIR/rss.out" 2>&1
RSS_SERVED=$(awk '/requests in/ {print $1}' "$DIR/rss.out")
RSS_LATE=$(worker_rss)
curl -fsS "$BASE/api/plans" > "$DIR/plans.json"
stop_stack
TPORT=$(free_port)
"$DIR/trivial" "127.0.0.1:$TPORT" "$DIR/plans.json" "$(nproc)" &
TRIVIAL_PID=$!
rm -rf "$DIR/var"
PORT=$(free_port)
PORT=$PORT NUMATIX_UPSTREAMS="127.0.0.1:$TPORT" NUMATIX_VAR="$DIR/var" NUMATIX_ADMIN_TOKEN=bench-admin-token-0123456789 NUMATIX_RATE_LIMIT=off \
	NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$ROOT/scripts/run.sh" > "$DIR/run.log" 2>&1 &
STACK_PID=$!
until grep -q "Numatix is running" "$DIR/run.log"; do kill -0 "$STACK_PID" 2>/dev/null || { cat "$DIR/run.log"; exit 1; }; sleep 0.1; done
rate 64 $GET "http://127.0.0.1:$PORT/api/plans"
TRIVIAL=$RATE
stop_stack
pkill -P "$TRIVIAL_PID" 2>/dev/null || true
kill "$TRIVIAL_PID" 2>/dev/null || true
wait "$TRIVIAL_PID" 2>/dev/null || true
TRIVIAL_PID=""
LAT=$PLANS_LAT
record "reads: GET /api/plans, 64 connections" "$PLANS" req/s "trivial FastCGI handler" "$TRIVIAL" ">= 0.8"
record "reads: GET /api/plans, 64 connections" "$PLANS" req/s "nginx static file" "$STATIC" "-"
LAT="- - -"
record "worker memory after $RSS_SERVED requests" "$RSS_LATE" kB "after a 1 s warm-up" "$RSS_EARLY" "<= 1.1"
record "worker memory after $RSS_SERVED requests" "$RSS_LATE" kB "8 MB" 8192 "<= 1.0"

# --- 2. one hot plan against the store's own transaction ---------------------------------------
start_stack 0
for c in 16 64; do
	rate $c $BUY "$BASE"
	HOT=$RATE
	RAW=$("$DIR/raw_purchase" "$DIR/var/numatix.db" "$PLAN_ID" $c "$SECS")
	if [ $c = 16 ]; then record "SQLite hot plan, $c connections" "$HOT" req/s "raw durable transaction, $c processes" "$RAW" ">= 0.5" 25
	else record "SQLite hot plan, $c connections" "$HOT" req/s "raw durable transaction, $c processes" "$RAW" ">= 0.5"; fi
done
# pgbench's transactions per second with $1 clients; a run that gives no figure (its clients
# could not connect in time on a loaded machine) is tried once more, then shown and fatal.
pg_raw() {
	for try in 1 2; do
		out=$(pgbench -n -U postgres -h "$PGDIR" -c "$1" -j 2 -T "$SECS" -D plan="'$PLAN_ID'" \
			-f "$ROOT/scripts/bench/raw_purchase.sql" numatix 2>&1)
		tps=$(printf '%s\n' "$out" | awk '/^tps/ {print int($3); exit}')
		[ -n "$tps" ] && [ "$tps" -gt 0 ] && { echo "$tps"; return; }
	done
	printf 'bench: pgbench gave no figure:\n%s\n' "$out" >&2
	exit 1
}

if ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
	PGDIR=$(mktemp -d /tmp/numatix-bench-pg-XXXXXX)
	STACK_DB=$("$ROOT/tests/pg_server.sh" start "$PGDIR")
	start_stack 0
	for c in 16 64; do
		rate $c $BUY "$BASE"
		PG_HOT=$RATE
		PG_LAT=$LAT
		PG_RAW=$(pg_raw $c)
		LAT=$PG_LAT
		if [ $c = 16 ]; then record "PostgreSQL hot plan, $c connections" "$PG_HOT" req/s "pgbench, same statements, -c $c" "$PG_RAW" ">= 0.5" 25
		else record "PostgreSQL hot plan, $c connections" "$PG_HOT" req/s "pgbench, same statements, -c $c" "$PG_RAW" ">= 0.5"; fi
	done
	stop_stack
	unset STACK_DB
	"$ROOT/tests/pg_server.sh" stop "$PGDIR" && rm -rf "$PGDIR"
	PGDIR=""
fi

# --- 3. a 500 ms processor against the original design -----------------------------------------
STACK_WORKERS="" start_stack 500
rate 256 $BUY "$BASE"
SLOW=$RATE
ORIGINAL=$("$DIR/raw_purchase" "$DIR/var/numatix.db" "$PLAN_ID" 256 "$SECS" 500 | awk '{printf "%.2f", $1}')
record "500 ms processor, 256 buyers, default workers" "$SLOW" req/s "original design (payment inside the transaction)" "$ORIGINAL" ">= 100"

# --- 4. growth --------------------------------------------------------------------------------
# populate <rows>: that many sold seats of an earlier plan, as the service stores them: a
# customer, an active subscription, its charge and its audit event each. (Rows made by SQL,
# not by purchases: their audit trail has no seat events, so `check` is not run on this store;
# it is on the sell-out's, whose every row a purchase made.)
populate() {
	sqlite3 "$DIR/var/numatix.db" > /dev/null <<-SQL
	PRAGMA busy_timeout = 10000;
	BEGIN IMMEDIATE;
	INSERT INTO plans (id, name, description, price_cents, term_count, total_capacity, subscriptions_left,
	  subscriptions_held, status, features, created_at, updated_at)
	  VALUES ('$(printf '%024x' 7)', 'History', '', 100, 30, $1, 0, 0, 'active', '[]', 0, 0);
	WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
	INSERT INTO customers (id, email, name, created_at) SELECT printf('c%023x', i), printf('h%d@bench', i), 'H', 0 FROM n;
	WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
	INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents, duration_days, token_hash,
	  hold_deadline, payment_id, created_at, updated_at)
	  SELECT printf('s%023x', i), '$(printf '%024x' 7)', printf('c%023x', i), printf('00000000-0000-4000-8000-%012x', i),
	  'active', 100, 30, '', 0, printf('pay_%020x', i), 0, 0 FROM n;
	WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
	INSERT INTO payments (id, idem_key, kind, status, subscription_id, amount_cents, created_at)
	  SELECT printf('pay_%020x', i), printf('00000000-0000-4000-8000-%012x', i), 'charge', 'succeeded',
	  printf('s%023x', i), 100, 0 FROM n;
	WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
	INSERT INTO audit_events (id, at, action, actor_type, resource_type, resource_id, plan_id)
	  SELECT printf('e%023x', i), 0, 'subscription.activated', 'system', 'subscription', printf('s%023x', i),
	  '$(printf '%024x' 7)' FROM n;
	COMMIT;
	SQL
}
for rows in $GROWTH_SMALL $GROWTH_LARGE; do
	start_stack 0
	populate "$rows"
	rate 16 $BUY "$BASE"
	G=$RATE
	if [ "$rows" = "$GROWTH_SMALL" ]; then G_SMALL=$G; else G_LARGE=$G; fi
done
record "hot plan with $GROWTH_LARGE rows, 16 connections" "$G_LARGE" req/s "the same with $GROWTH_SMALL rows" "$G_SMALL" ">= 0.9"

# --- 5. a large plan sold out ----------------------------------------------------------------
# wrk runs until the plan has no seat left or held (the bench polls the plan and interrupts it);
# then the store says what was sold, and check that nothing was sold twice.
start_stack 0 "$SELLOUT"
start=$($PY -c 'import time; print(time.time())')
wrk -t2 -c64 -d36000s -s "$ROOT/scripts/bench/purchase.lua" "$BASE" > "$DIR/sellout.out" 2>&1 &
WRK_PID=$!
plan_free() {
	curl -fsS "$BASE/api/plans/$PLAN_ID" | $PY -c 'import json,sys; p=json.load(sys.stdin); print(p["subscriptions_left"] + p["subscriptions_held"])'
}
while [ "$(plan_free)" != 0 ]; do
	kill -0 "$WRK_PID" 2>/dev/null || { cat "$DIR/sellout.out"; exit 1; }
	sleep 0.2
done
took=$($PY -c "import time; print('%.1f' % (time.time() - $start))")
kill -INT "$WRK_PID"
wait "$WRK_PID" || true
LAT=$(awk '/^latency_us:/ {printf "%.2f %.2f %.2f", $2 / 1000, $3 / 1000, $4 / 1000}' "$DIR/sellout.out")
sold=$(curl -fsS "$BASE/api/plans/$PLAN_ID/stats" | $PY -c 'import json,sys; print(json.load(sys.stdin)["subscriptionsSold"])')
stop_stack
CHECK=$(NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$STACK_ROOT/cgi-bin/numatix" check 2>&1 | tail -n1)
echo "  sold out $SELLOUT seats in ${took}s: $sold sold; $CHECK" >&2
[ "$sold" = "$SELLOUT" ] && echo "$CHECK" | grep -q "all invariants hold" || {
	echo "bench: the sell-out did not sell every seat exactly once" >&2; exit 1; }
SELLOUT_RATE=$($PY -c "print('%.1f' % ($SELLOUT / $took))")
record "$SELLOUT seats sold out in ${took} s by 64 buyers (check passes)" "$SELLOUT_RATE" seats/s "hot plan, 64 connections" "$HOT" "-"

# --- 7. one plan, a 50 ms processor ----------------------------------------------------------
start_stack 50
rate 1 $BUY "$BASE"
SERIAL=$RATE
rate 64 $BUY "$BASE"
PARALLEL=$RATE
record "one plan, 50 ms processor, 64 buyers at once" "$PARALLEL" req/s "one buyer at a time" "$SERIAL" "-"
stop_stack
NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$STACK_ROOT/cgi-bin/numatix" check >&2

# --- 8. renewals -----------------------------------------------------------------------------
# due <n>: n renewing subscriptions of the hot plan whose period ended a second ago (made by SQL,
# as in 4: a customer, an active subscription of a 30-day term on the saved card, its charge),
# their seats taken from the plan's capacity.
due() {
	now=$($PY -c 'import time; print(int(time.time() * 1000) - 1000)')
	sqlite3 "$DIR/var/numatix.db" > /dev/null <<-SQL
	PRAGMA busy_timeout = 10000;
	BEGIN IMMEDIATE;
	UPDATE plans SET renewal = 'auto', total_capacity = total_capacity + $1 WHERE id = '$PLAN_ID';
	WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
	INSERT INTO customers (id, email, name, created_at) SELECT printf('r%023x', i), printf('r%d@bench', i), 'R', 0 FROM n;
	WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
	INSERT INTO subscriptions (id, plan_id, customer_id, idem_key, status, amount_cents, duration_days, token_hash,
	  hold_deadline, payment_id, created_at, updated_at, start_at, end_at, term_unit, term_count, term_zone, anchor_at,
	  period_start, payment_method)
	  SELECT printf('t%023x', i), '$PLAN_ID', printf('r%023x', i), printf('00000000-0000-4000-9000-%012x', i),
	  'active', 100, 30, '', 0, printf('pay_r%019x', i), 0, 0, $now - 2592000000, $now, 'day', 30, 'UTC',
	  $now - 2592000000, $now - 2592000000, 'pm_card_visa' FROM n;
	WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $1)
	INSERT INTO payments (id, idem_key, kind, status, subscription_id, amount_cents, created_at)
	  SELECT printf('pay_r%019x', i), printf('00000000-0000-4000-9000-%012x', i), 'charge', 'succeeded',
	  printf('t%023x', i), 100, 0 FROM n;
	COMMIT;
	SQL
}
start_stack 0
rate 16 $BUY "$BASE"
ALONE=$RATE
due "$RENEWALS"
wrk -t2 -c16 -d"${SECS}s" -s "$ROOT/scripts/bench/purchase.lua" "$BASE" > "$DIR/wrk.out" 2>&1 &
WRK_PID=$!
start=$($PY -c 'import time; print(time.time())')
NUMATIX_DB="sqlite://$DIR/var/numatix.db" "$STACK_ROOT/cgi-bin/numatix" renew > "$DIR/renew.out" 2>&1
took=$($PY -c "import time; print('%.3f' % (time.time() - $start))")
wait "$WRK_PID" || true
LAT=$(awk '/^latency_us:/ {printf "%.2f %.2f %.2f", $2 / 1000, $3 / 1000, $4 / 1000}' "$DIR/wrk.out")
DURING=$(awk '/^Requests\/sec:/ {print $2}' "$DIR/wrk.out")
grep -q "renew: $RENEWALS renewed" "$DIR/renew.out" || { cat "$DIR/renew.out" >&2; echo "bench: not every renewal was made" >&2; exit 1; }
RENEW_RATE=$($PY -c "print('%.1f' % ($RENEWALS / $took))")
record "hot plan purchases while $RENEWALS renew (${took} s)" "$DURING" req/s "the same plan's purchases alone" "$ALONE" "-"
record "renewals: $RENEWALS due at once, one pass beside 16 buyers" "$RENEW_RATE" renewals/s "the same plan's purchases alone" "$ALONE" "-"
stop_stack

$PY "$ROOT/scripts/bench/report.py" "$OUT" "$STACK_ROOT" "$SECS" "${WORKERS:-default}" ${BENCH_SMOKE:+smoke}
echo "bench: $OUT/report.md, $OUT/ratios.png" >&2
