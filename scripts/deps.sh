#!/bin/sh
# deps.sh - installs the Debian packages Numatix builds, runs and tests with, if any is
# missing. Idempotent and quiet when everything is present.
set -eu

PACKAGES="build-essential pkg-config libfcgi-dev libjson-c-dev libsqlite3-dev uuid-dev
libssl-dev libcurl4-openssl-dev libmongoc-dev libpq-dev tzdata postgresql iproute2 libcmocka-dev faketime python3-mockupdb wrk docker-compose nginx-light sqlite3 python3 python3-yaml python3-jsonschema python3-cryptography python3-dateutil python3-aiosmtpd curl spawn-fcgi procps chromium
systemd logrotate fcgiwrap gnuplot-nox clang libclang-rt-14-dev prometheus"
# Node.js and npm drive Chromium in the browser tests; a machine that has node already keeps it.
command -v node >/dev/null 2>&1 || PACKAGES="$PACKAGES nodejs npm"

missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "deps: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# Debian's nginx package starts the system service on install; we run our own instance.
$SUDO apt-get install -y -q --no-install-recommends $missing
