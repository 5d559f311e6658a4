#!/usr/bin/env bash
# ensure-etcd.sh makes sure etcd is installed, for the Kubernetes end-to-end
# tests (e2e/k8s starts its own etcd on free loopback ports, with its data in
# a temporary directory; it never uses a system service).
#
# - etcd already on PATH: print its version, exit 0.
# - otherwise, as root with apt-get: install Debian's etcd-server package and
#   make sure the system service it may start on 2379 is not left running.
# - otherwise: explain how to install it and exit 1.
#
# Safe to run any number of times.
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
	echo "etcd found: $(command -v etcd)"
	etcd --version | sed -n 1p
	exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	echo "etcd not found; installing etcd-server with apt-get..."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server

	# The package may have started (and enabled) a system etcd on 2379.
	# The tests start their own, so stop it and keep it from starting on boot.
	if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
		systemctl stop etcd >/dev/null 2>&1 || true
		systemctl disable etcd >/dev/null 2>&1 || true
	fi
	if command -v service >/dev/null 2>&1; then
		service etcd stop >/dev/null 2>&1 || true
	fi
	if command -v update-rc.d >/dev/null 2>&1; then
		update-rc.d etcd disable >/dev/null 2>&1 || true
	fi

	if ! command -v etcd >/dev/null 2>&1; then
		echo "error: apt-get installed etcd-server but etcd is not on PATH ($PATH)" >&2
		exit 1
	fi
	echo "installed: $(command -v etcd)"
	etcd --version | sed -n 1p
	exit 0
fi

cat >&2 <<'MSG'
error: etcd is not on PATH; the Kubernetes end-to-end tests (e2e/k8s) need it.
Install it, then run `make k8s-deps` again:
  Debian/Ubuntu:  sudo apt-get install -y etcd-server
                  (then `sudo service etcd stop`: the tests start their own)
  Fedora/RHEL:    sudo dnf install -y etcd
  macOS:          brew install etcd
Only the etcd binary is needed; no server has to be running.
MSG
exit 1
