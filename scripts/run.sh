#!/bin/sh
# run.sh - starts the whole service in the foreground: the FastCGI server (workers and reaper)
# and nginx on 127.0.0.1:$PORT, with the embedded SQLite store and the demo plans. Ctrl-C or
# SIGTERM stops both. `make run` builds first; tests start the stack through this script too.
#
# NUMATIX_VAR (default <project>/var) holds the database, the socket, nginx's files and the
# generated admin token. An existing database is kept, never reset.
#
# NUMATIX_UPSTREAMS="host:port host:port ..." puts nginx in front of FastCGI servers that run
# elsewhere (other machines, each `numatix serve` with NUMATIX_SOCKET=host:port against one
# PostgreSQL) instead of starting one here.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# NUMATIX_BIN: another build of the binary (the sanitizer round of make test uses it)
BIN=${NUMATIX_BIN:-$ROOT/cgi-bin/numatix}
VAR=${NUMATIX_VAR:-$ROOT/var}
PORT=${PORT:-8080}

case "$PORT" in
	''|*[!0-9]*) echo "run: PORT must be a port number, not '$PORT'" >&2; exit 1 ;;
esac
mkdir -p "$VAR/nginx/nginx-tmp"
VAR=$(cd "$VAR" && pwd)

export NUMATIX_DB="${NUMATIX_DB:-sqlite://$VAR/numatix.db}"
export NUMATIX_SOCKET="${NUMATIX_SOCKET:-$VAR/numatix.sock}"
if [ -z "${NUMATIX_ADMIN_TOKEN:-}" ]; then
	# Made once and kept, so a restart does not log the operator out.
	[ -s "$VAR/admin-token" ] || (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' > "$VAR/admin-token")
	NUMATIX_ADMIN_TOKEN=$(cat "$VAR/admin-token")
	export NUMATIX_ADMIN_TOKEN
fi

"$BIN" seed

# nginx's includes resolve against its config's directory, as under /etc/nginx.
NGX="$VAR/nginx"
ln -sfn "$ROOT/nginx" "$NGX/numatix"
ln -sf /etc/nginx/mime.types "$NGX/mime.types"
ln -sf /etc/nginx/fastcgi_params "$NGX/fastcgi_params"
USER_LINE=""
# As root, nginx's workers would drop to nobody and could not reach the socket.
[ "$(id -u)" -eq 0 ] && USER_LINE="user root root;"
UPSTREAM="server unix:$NUMATIX_SOCKET;"
if [ -n "${NUMATIX_UPSTREAMS:-}" ]; then
	UPSTREAM=""
	for u in $NUMATIX_UPSTREAMS; do UPSTREAM="$UPSTREAM server $u;"; done
fi
# Per-client limits on purchases and sessions as in production, unless NUMATIX_RATE_LIMIT=off
# (load tests and benchmarks send everything from one loopback address).
case "${NUMATIX_RATE_LIMIT:-on}" in
on) LIMITS="include numatix/numatix-limits.conf;" ;;
off) LIMITS='map \$uri \$numatix_write_client { default \"\"; } limit_req_zone \$numatix_write_client zone=numatix_writes:1m rate=1r/s; map \$uri \$numatix_login_client { default \"\"; } limit_req_zone \$numatix_login_client zone=numatix_logins:1m rate=1r/s;' ;;
*) echo "run: NUMATIX_RATE_LIMIT must be on or off, not \"$NUMATIX_RATE_LIMIT\"" >&2; exit 1 ;;
esac
sed -e "s|@USER@|$USER_LINE|" -e "s|@VAR@|$NGX|g" -e "s|@UPSTREAM@|$UPSTREAM|g" \
	-e "s|@PORT@|$PORT|g" -e "s|@ROOT@|$ROOT|g" -e "s|@LIMITS@|$LIMITS|" "$ROOT/nginx/local.conf.in" > "$NGX/nginx.conf"

SERVER_PID=""
NGINX_PID=""
stop() {
	trap - INT TERM EXIT
	[ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null
	[ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null
	wait
	echo "run: stopped"
}
trap stop INT TERM EXIT

if [ -z "${NUMATIX_UPSTREAMS:-}" ]; then
	"$BIN" serve &
	SERVER_PID=$!
	# Wait for the socket before nginx forwards to it.
	i=0
	while [ ! -S "$NUMATIX_SOCKET" ]; do
		i=$((i + 1))
		if [ $i -gt 100 ] || ! kill -0 "$SERVER_PID" 2>/dev/null; then
			echo "run: the FastCGI server did not start" >&2
			exit 1
		fi
		sleep 0.1
	done
fi
/usr/sbin/nginx -p "$NGX" -c "$NGX/nginx.conf" -e "$NGX/nginx-error.log" &
NGINX_PID=$!

i=0
until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/api/health" 2>/dev/null; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 "$NGINX_PID" 2>/dev/null; then
		echo "run: nginx did not start; see $NGX/nginx-error.log" >&2
		cat "$NGX/nginx-error.log" >&2 2>/dev/null || true
		exit 1
	fi
	sleep 0.1
done

echo "Numatix is running at http://127.0.0.1:$PORT/"
echo "Admin token: $NUMATIX_ADMIN_TOKEN"
echo "Store: $NUMATIX_DB"
echo "Press Ctrl-C to stop."
wait "$NGINX_PID" $SERVER_PID
