#!/bin/sh
# faketime.sh - runs the numatix binary NUMATIX_CLOCK_BIN names under a clock the test moves:
# libfaketime (Debian's faketime package) reads the offset from the file NUMATIX_TEST_CLOCK
# names ("+15d", "+1296000.250s") at every call, so writing the file moves the wall clock of
# every process of the server at once. The monotonic clock is left alone: the server's timers
# and bounds keep real time. A test double: the shipped binary knows nothing of it.
set -eu
export LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1
export FAKETIME_TIMESTAMP_FILE="$NUMATIX_TEST_CLOCK" FAKETIME_NO_CACHE=1 FAKETIME_DONT_FAKE_MONOTONIC=1
# the sanitizer round's binaries want their runtime first: libfaketime is preloaded before it
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}verify_asan_link_order=0"
exec "$NUMATIX_CLOCK_BIN" "$@"
