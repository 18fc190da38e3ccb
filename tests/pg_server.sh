#!/bin/sh
# pg_server.sh - a throwaway PostgreSQL for the tests, from Debian's postgresql package:
#   pg_server.sh start DIR   initdb into DIR, start it on a unix socket in DIR (no TCP), print
#                            the connection string of its database "numatix"
#   pg_server.sh stop DIR    fast shutdown
#   pg_server.sh resume DIR  start the stopped server again, with its data
#   pg_server.sh standby DIR PRIMARY_DIR
#                            a streaming standby of the server in PRIMARY_DIR (pg_basebackup -R),
#                            started on a socket in DIR; prints its connection string
# PG_LISTEN (addresses) and PG_PORT make it listen on TCP as well, trusting 10.0.0.0/8 (the
# test hosts made with network namespaces). PG_INITDB_OPTS and PG_OPTS add to initdb's and the
# server's options (a small disk's test: small WAL segments). The server refuses to run as root, so as root it
# runs as the postgres user.
set -eu
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
DIR=$2
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case $1 in
start)
	mkdir -p "$DIR"
	[ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
	as_pg "$BIN/initdb" -D "$DIR/data" -A trust -U postgres ${PG_INITDB_OPTS:-} > "$DIR/initdb.log" 2>&1
	echo "host all all 10.0.0.0/8 trust" >> "$DIR/data/pg_hba.conf"
	echo "listen_addresses = '${PG_LISTEN:-}'" >> "$DIR/data/postgresql.conf"
	echo "port = ${PG_PORT:-5432}" >> "$DIR/data/postgresql.conf"
	as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
		-o "-k $DIR -c max_connections=200 ${PG_OPTS:-}" start > /dev/null
	as_pg "$BIN/createdb" -h "$DIR" -p "${PG_PORT:-5432}" -U postgres numatix
	echo "postgresql:///numatix?host=$DIR&port=${PG_PORT:-5432}&user=postgres"
	;;
stop)
	as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop > /dev/null
	;;
standby)
	PRIMARY=$3
	mkdir -p "$DIR"
	[ "$(id -u)" -eq 0 ] && chown postgres "$DIR"
	as_pg "$BIN/pg_basebackup" -D "$DIR/data" -R -X stream -h "$PRIMARY" -p "${PG_PORT:-5432}" -U postgres > "$DIR/basebackup.log" 2>&1
	as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w \
		-o "-k $DIR -c max_connections=200 -c hot_standby=on ${PG_OPTS:-}" start > /dev/null
	echo "postgresql:///numatix?host=$DIR&port=${PG_PORT:-5432}&user=postgres"
	;;
resume)
	as_pg "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -o "-k $DIR -c max_connections=200 ${PG_OPTS:-}" start > /dev/null
	;;
esac
