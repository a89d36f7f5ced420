#!/bin/bash
# The official postgres image's entrypoint contract, re-implemented for the Debian-built image:
# initialise PGDATA on first start (superuser POSTGRES_USER with POSTGRES_PASSWORD, database
# POSTGRES_DB, password auth for TCP, /docker-entrypoint-initdb.d scripts), then exec the server
# as the postgres user.
set -Eeuo pipefail

file_env() {  # VAR or VAR_FILE (Docker secrets), not both
	local var="$1" def="${2:-}" fvar="${1}_FILE"
	if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
		echo >&2 "error: both $var and $fvar are set (but are exclusive)"; exit 1
	fi
	local val="$def"
	if [ -n "${!var:-}" ]; then val="${!var}"; elif [ -n "${!fvar:-}" ]; then val="$(< "${!fvar}")"; fi
	export "$var"="$val"
	unset "$fvar"
}

if [ "${1:0:1}" = '-' ]; then set -- postgres "$@"; fi

if [ "$1" = 'postgres' ]; then
	if [ "$(id -u)" = '0' ]; then
		mkdir -p "$PGDATA" /var/run/postgresql
		chown -R postgres:postgres "$PGDATA" /var/run/postgresql
		chmod 700 "$PGDATA"
		exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
	fi

	file_env POSTGRES_PASSWORD
	file_env POSTGRES_USER postgres
	file_env POSTGRES_DB "$POSTGRES_USER"
	file_env POSTGRES_INITDB_ARGS
	: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

	if [ ! -s "$PGDATA/PG_VERSION" ]; then
		if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
			echo >&2 'error: database is uninitialized and superuser password is not specified.'
			echo >&2 '  Set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one).'
			exit 1
		fi
		pwfile="$(mktemp)"
		printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
		# Unlike the official image, loopback TCP is not trusted either (--auth-host): with host
		# networking, the container's loopback is the host's. The socket stays trusted.
		# shellcheck disable=SC2086
		initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust \
			--auth-host="$POSTGRES_HOST_AUTH_METHOD" $POSTGRES_INITDB_ARGS >/dev/null
		rm -f "$pwfile"
		echo "listen_addresses = '*'" >> "$PGDATA/postgresql.conf"
		printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >> "$PGDATA/pg_hba.conf"

		# A temporary server on the socket only, for the database and the init scripts.
		pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start >/dev/null
		psql=(psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc)
		if [ "$POSTGRES_DB" != 'postgres' ]; then
			"${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";' >/dev/null
		fi
		for f in /docker-entrypoint-initdb.d/*; do
			case "$f" in
				*.sh) echo "running $f"; . "$f" ;;
				*.sql) echo "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
				*.sql.gz) echo "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
				*) if [ -e "$f" ]; then echo "ignoring $f"; fi ;;
			esac
		done
		pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
		echo 'PostgreSQL init process complete; ready for start up.'
	fi
fi

exec "$@"
