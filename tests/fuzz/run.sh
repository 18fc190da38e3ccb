#!/bin/sh
# run.sh SECONDS TARGET... - runs each libFuzzer target (built by `make fuzz` into build/fuzz/)
# for SECONDS from a scratch copy of its committed seed corpus, new crashes written to
# tests/fuzz/regressions/<target>/, then runs every saved crash input again. One line per target
# "fuzz <target> ... ok|FAIL", and "RESULT passed failed 0" for tests/run.sh's count.
set -u
cd "$(dirname "$0")/../.."
secs=$1
shift
passed=0 failed=0
for t in "$@"; do
	name=${t#fuzz_}
	work=$(mktemp -d /tmp/numatix-fuzz-XXXXXX)
	cp tests/fuzz/corpus/"$name"/* "$work"/ 2>/dev/null
	mkdir -p tests/fuzz/regressions/"$name"
	ok=1
	# leaks are reported by the suites' own ASan runs; here a crash, an overflow or UB fails
	if ! ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		build/fuzz/"$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix=tests/fuzz/regressions/"$name"/ "$work" > "$work.log" 2>&1; then
		ok=0
		tail -40 "$work.log"
	fi
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work.log")
	# every crash ever saved, again (libFuzzer runs files given as arguments once each)
	saved=$(find tests/fuzz/regressions/"$name" -type f ! -name '.*' | sort)
	if [ -n "$saved" ] && ! ASAN_OPTIONS=detect_leaks=0 build/fuzz/"$t" $saved > "$work.replay" 2>&1; then
		ok=0
		tail -40 "$work.replay"
	fi
	if [ $ok = 1 ]; then
		passed=$((passed + 1))
		echo "fuzz $name: ${runs:-?} inputs in ${secs}s, $(echo "$saved" | grep -c .) saved crashes replayed ... ok"
	else
		failed=$((failed + 1))
		echo "fuzz $name ... FAIL (inputs that fail are in tests/fuzz/regressions/$name/)"
	fi
	rm -rf "$work" "$work.log" "$work.replay"
done
echo "RESULT $passed $failed 0"
[ $failed = 0 ]
