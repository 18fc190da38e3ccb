#!/bin/sh
# run.sh - every suite of `make test`: the C unit tests, then the black-box suites against
# the real stack. Ends with one line: "N passed, N failed".
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=/usr/bin/python3
passed=0
failed=0
skipped=0
out=$(mktemp)
PGDIR=""
cleanup() {
	[ -n "$PGDIR" ] && tests/pg_server.sh stop "$PGDIR" 2>/dev/null
	[ -n "$PGDIR" ] && rm -rf "$PGDIR"
	rm -f "$out"
}
trap cleanup EXIT

# One throwaway PostgreSQL for the whole run: the contract suite and the black-box suites
# run against it as well as against SQLite.
PGDIR=$(mktemp -d /tmp/numatix-pg-XXXXXX)
if NUMATIX_TEST_PG=$(tests/pg_server.sh start "$PGDIR"); then
	export NUMATIX_TEST_PG
	echo "== PostgreSQL for the tests: $NUMATIX_TEST_PG"
else
	echo "could not start PostgreSQL:"; cat "$PGDIR"/*.log
	failed_pg=1
fi

# The npm packages (the OpenAPI linter, the browser driver), from the committed lock file,
# whenever node_modules is older than it.
[ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund

# NUMATIX_SANITIZE=1 (make asan): the binaries were built with AddressSanitizer and UBSan, and
# every report any process of the run writes (workers, the master, commands, the unit tests)
# lands in $SANDIR; each report file is one failure.
SANDIR=""
if [ -n "${NUMATIX_SANITIZE:-}" ]; then
	SANDIR=$(mktemp -d /tmp/numatix-san-XXXXXX)
	export ASAN_OPTIONS="log_path=$SANDIR/asan:detect_leaks=1:handle_abort=1"
	export UBSAN_OPTIONS="log_path=$SANDIR/ubsan:print_stacktrace=1"
fi

echo "== unit tests (cmocka)"
for t in ${NUMATIX_UNIT_DIR:-build/tests}/test_*; do
	[ -x "$t" ] || continue
	"$t" > "$out" 2>&1
	rc=$?
	cat "$out"
	# a binary may run several groups (one per store): add up every group's summary
	p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$out" | awk '{n += $1} END {print n + 0}')
	f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$out" | awk '{n += $1} END {print n + 0}')
	# a binary that crashed before its summary counts as one failure
	[ $rc -ne 0 ] && [ "$f" -eq 0 ] && f=1
	passed=$((passed + p))
	failed=$((failed + f))
done

# the compose file is validated without an engine (none runs on these machines)
if [ -z "${NUMATIX_SUITES:-}" ]; then
	echo "== docker-compose config"
	if docker-compose -f docker-compose.yml config -q; then
		echo "docker-compose.yml ... ok"
		passed=$((passed + 1))
	else
		echo "docker-compose.yml ... FAIL"
		failed=$((failed + 1))
	fi
fi

failed=$((failed + ${failed_pg:-0}))
# Adds the last "RESULT passed failed [skipped]" line of $out to the counts; a suite that
# ended without one (it crashed) counts as one failure.
tally() {
	line=$(grep '^RESULT ' "$out" | tail -n1)
	if [ -n "$line" ]; then
		set -- $line
		passed=$((passed + $2))
		failed=$((failed + $3))
		skipped=$((skipped + ${4:-0}))
	else
		echo "$1 ended without a result"
		failed=$((failed + 1))
	fi
}
SUITES=${NUMATIX_SUITES:-"test_api test_money test_life test_mail test_signin test_periods test_payments test_stripe test_durability test_hostile test_concurrency test_webhooks test_recovery test_endurance test_gateway test_metrics test_operations test_openapi prism test_replica test_install test_cgi test_mongo_wire test_mongo_live"}
# the shared black-box suites once more, against PostgreSQL ("pg:" marks the store)
PG_SUITES=${NUMATIX_PG_SUITES-"test_api test_money test_life test_mail test_signin test_payments test_stripe test_hostile test_concurrency test_webhooks test_recovery test_pg_faults test_multihost"}
[ -n "${NUMATIX_TEST_PG:-}" ] && for s in $PG_SUITES; do SUITES="$SUITES pg:$s"; done
# the API, payment, hostile-input, concurrency and recovery suites with NUMATIX_PROCESSOR=stripe,
# against the Stripe test server (tests/stripe), on SQLite and on PostgreSQL
STRIPE_SUITES=${NUMATIX_STRIPE_SUITES-"test_api test_payments test_hostile test_concurrency test_recovery"}
for s in $STRIPE_SUITES; do
	SUITES="$SUITES stripe:$s"
	[ -n "${NUMATIX_TEST_PG:-}" ] && SUITES="$SUITES stripe-pg:$s"
done
for s in $SUITES; do
	case $s in
	pg:*) NUMATIX_TEST_STORE=postgresql $PY tests/api/runner.py "${s#pg:}" 2>&1 | tee "$out" ;;
	stripe:*) NUMATIX_TEST_PROCESSOR=stripe $PY tests/api/runner.py "${s#stripe:}" 2>&1 | tee "$out" ;;
	stripe-pg:*) NUMATIX_TEST_PROCESSOR=stripe NUMATIX_TEST_STORE=postgresql $PY tests/api/runner.py "${s#stripe-pg:}" 2>&1 |
		tee "$out" ;;
	# the API, hostile-input and concurrency suites once more, through Prism's validation
	# proxy: every disagreement with www/openapi.yaml, either way, is a failure (prism.py)
	prism) NUMATIX_TEST_PRISM=1 $PY tests/api/runner.py test_api test_hostile test_concurrency test_signin 2>&1 | tee "$out" ;;
	*) $PY tests/api/runner.py "$s" 2>&1 | tee "$out" ;;
	esac
	tally "suite $s"
done

# the libFuzzer targets for a bounded time each, and every crash they ever saved replayed
if [ -z "${NUMATIX_SUITES:-}" ]; then
	echo "== fuzzing what clients send (libFuzzer, ${FUZZ_SECONDS:-20} s a target)"
	make --no-print-directory fuzz FUZZ_SECONDS="${FUZZ_SECONDS:-20}" > "$out" 2>&1
	grep -v '^  \(CC\|LD\) ' "$out" | grep -v '^RESULT'
	tally "fuzzing"
fi
# make bench, briefly and small: every scenario runs, sells out a plan with check passing, and
# writes its report and chart (its figures are not judged: a test is no benchmark)
if [ -z "${NUMATIX_SUITES:-}" ]; then
	echo "== make bench, smoke run"
	bench_out=$(mktemp -d)
	if BENCH_SMOKE=1 BENCH_OUT="$bench_out" scripts/bench.sh > "$out" 2>&1 &&
		[ "$(grep -c '^| ' "$bench_out/report.md")" -ge 14 ] && [ -s "$bench_out/ratios.png" ]; then
		echo "bench smoke run ... ok"
		passed=$((passed + 1))
	else
		cat "$out"
		echo "bench smoke run ... FAIL"
		failed=$((failed + 1))
	fi
	rm -rf "$bench_out"
fi

# every suite that runs the service once more, against binaries built with AddressSanitizer
# and UBSan (make asan): a sanitizer report anywhere fails it
if [ -z "${NUMATIX_SUITES:-}" ]; then
	echo "== the suites again, built with AddressSanitizer and UBSan (make asan)"
	make --no-print-directory asan 2>&1 | tee "$out" | grep -v '^  \(CC\|LD\) '
	line=$(sed -n 's/^sanitizer round: \([0-9]* passed, [0-9]* failed\)$/\1/p' "$out" | tail -n1)
	if [ -n "$line" ]; then
		set -- $line
		passed=$((passed + $1))
		failed=$((failed + $3))
	else
		echo "the sanitizer round ended without a result"
		failed=$((failed + 1))
	fi
fi

[ "$skipped" -gt 0 ] && echo "($skipped tests skipped, each says why above)"
if [ -z "${NUMATIX_SUITES:-}" ]; then
	echo "== browser pages (headless Chromium)"
	node tests/browser/pages.mjs 2>&1 | tee "$out" | grep -v '"level":"info"'
	tally "browser suite"
	echo "screenshots: tests/artifacts/"
fi

if [ -n "$SANDIR" ]; then
	echo "== sanitizer reports"
	for r in "$SANDIR"/*; do
		[ -e "$r" ] || continue
		cat "$r"
		failed=$((failed + 1))
	done
	echo "$(ls "$SANDIR" | wc -l) report(s)"
	rm -rf "$SANDIR"
fi

# the one summary line (the sanitizer round's, counted into the whole run's, says which it is)
echo "${NUMATIX_SANITIZE:+sanitizer round: }$passed passed, $failed failed"
[ "$failed" -eq 0 ]
