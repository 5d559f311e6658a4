#!/usr/bin/env bash
# ensure-postgres.sh makes sure the PostgreSQL server programs (initdb,
# postgres) are installed, for the outbox tests and benchmarks
# (internal/testharness initdb's its own clusters in temporary directories
# and starts them on free loopback ports; it never uses a system cluster).
#
# - initdb and postgres on PATH or in /usr/lib/postgresql/*/bin: print the
#   version, exit 0.
# - otherwise, as root with apt-get: install the Debian/Ubuntu package and
#   make sure the system cluster it may start on 5432 is not left running.
# - otherwise: explain how to install it and exit 1.
#
# The tests run as root in CI; PostgreSQL refuses to run as root, so the
# harness runs it as the user "postgres" the package creates (or "nobody").
#
# Safe to run any number of times.
set -euo pipefail

find_bin() {
	local name=$1 p
	if p="$(command -v "$name" 2>/dev/null)"; then
		echo "$p"
		return 0
	fi
	for p in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [[ -x "$p/$name" ]]; then
			echo "$p/$name"
			return 0
		fi
	done
	return 1
}

report() {
	local initdb postgres
	initdb="$(find_bin initdb)" && postgres="$(find_bin postgres)" || return 1
	echo "postgres found: $postgres (initdb: $initdb)"
	"$postgres" --version
}

if report; then
	exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	echo "PostgreSQL server not found; installing it with apt-get..."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql

	# The package may have created and started (and enabled) a system
	# cluster on 5432. Tests start their own, so stop it and keep it from
	# starting on boot.
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
		systemctl stop postgresql >/dev/null 2>&1 || true
		systemctl disable postgresql >/dev/null 2>&1 || true
	fi
	if command -v service >/dev/null 2>&1; then
		service postgresql stop >/dev/null 2>&1 || true
	fi
	if command -v update-rc.d >/dev/null 2>&1; then
		update-rc.d postgresql disable >/dev/null 2>&1 || true
	fi
	# Without an init system the stop above may not reach it: stop each
	# cluster the package made with its own tool (only those clusters).
	if command -v pg_lsclusters >/dev/null 2>&1 && command -v pg_ctlcluster >/dev/null 2>&1; then
		pg_lsclusters -h 2>/dev/null | while read -r ver name _port status _rest; do
			if [[ "$status" == online* ]]; then
				pg_ctlcluster "$ver" "$name" stop >/dev/null 2>&1 || true
			fi
		done
	fi

	if ! report; then
		echo "error: apt-get installed postgresql but initdb/postgres were not found on PATH or in /usr/lib/postgresql/*/bin" >&2
		exit 1
	fi
	exit 0
fi

cat >&2 <<'MSG'
error: the PostgreSQL server programs (initdb, postgres) were not found on
PATH or in /usr/lib/postgresql/*/bin; the outbox tests and benchmarks need them.
Install them, then run `make postgres` again:
  Debian/Ubuntu:  sudo apt-get install -y postgresql
                  (then `sudo service postgresql stop`: the tests start their own)
  Fedora/RHEL:    sudo dnf install -y postgresql-server
  Alpine:         sudo apk add postgresql
  macOS:          brew install postgresql
No server has to be running, and no database has to exist.
MSG
exit 1
