#!/usr/bin/env bash
# ensure-redis.sh makes sure redis-server is installed, for the tests and
# benchmarks (internal/testharness starts its own servers on free loopback
# ports; it never uses a system service).
#
# - redis-server already on PATH: print its version, exit 0.
# - otherwise, as root with apt-get: install the Debian/Ubuntu package and
#   make sure the system service it may start on 6379 is not left running.
# - otherwise: explain how to install it and exit 1.
#
# Safe to run any number of times.
set -euo pipefail

if command -v redis-server >/dev/null 2>&1; then
	echo "redis-server found: $(command -v redis-server)"
	redis-server --version
	exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	echo "redis-server not found; installing it with apt-get..."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server

	# The package may have started (and enabled) a system server on 6379.
	# Tests start their own, so stop it and keep it from starting on boot.
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
		systemctl stop redis-server >/dev/null 2>&1 || true
		systemctl disable redis-server >/dev/null 2>&1 || true
	fi
	if command -v service >/dev/null 2>&1; then
		service redis-server stop >/dev/null 2>&1 || true
	fi
	if command -v update-rc.d >/dev/null 2>&1; then
		update-rc.d redis-server disable >/dev/null 2>&1 || true
	fi
	# Without an init system the stop above may not reach it: kill it by its
	# pid file (only that process, nothing matched by name).
	pidfile=/run/redis/redis-server.pid
	if [[ -f "$pidfile" ]]; then
		pid="$(cat "$pidfile" 2>/dev/null || true)"
		if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			for _ in $(seq 50); do
				kill -0 "$pid" 2>/dev/null || break
				sleep 0.1
			done
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi

	if ! command -v redis-server >/dev/null 2>&1; then
		echo "error: apt-get installed redis-server but it is not on PATH ($PATH)" >&2
		exit 1
	fi
	echo "installed: $(command -v redis-server)"
	redis-server --version
	exit 0
fi

cat >&2 <<'MSG'
error: redis-server is not on PATH; the tests and benchmarks need it.
Install it, then run `make redis` again:
  Debian/Ubuntu:  sudo apt-get install -y redis-server
                  (then `sudo service redis-server stop`: the tests start their own)
  Fedora/RHEL:    sudo dnf install -y redis
  Alpine:         sudo apk add redis
  macOS:          brew install redis
  or build from source: https://redis.io/docs/latest/operate/oss_and_stack/install/
Only the redis-server binary is needed; no server has to be running.
MSG
exit 1
