#!/usr/bin/env bash
# ensure-jq.sh makes sure curl and jq are installed, for the README's curl
# tour (e2e/readme_curl_test.go) and examples/shell/ (e2e/shell_test.go).
#
# - both already on PATH: print their versions, exit 0.
# - otherwise, as root with apt-get: install the Debian/Ubuntu packages.
# - otherwise: explain how to install them and exit 1.
#
# Safe to run any number of times.
set -euo pipefail

missing=()
for tool in curl jq; do
	command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ ${#missing[@]} -eq 0 ]]; then
	echo "curl and jq found: $(jq --version), $(curl --version | sed -n 1p)"
	exit 0
fi

if [[ "$(id -u)" -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
	echo "${missing[*]} not found; installing with apt-get..."
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
	for tool in "${missing[@]}"; do
		if ! command -v "$tool" >/dev/null 2>&1; then
			echo "error: apt-get installed $tool but it is not on PATH ($PATH)" >&2
			exit 1
		fi
	done
	echo "installed: ${missing[*]}"
	exit 0
fi

cat >&2 <<MSG
error: ${missing[*]} not on PATH; the curl tour and examples/shell need curl and jq.
  Debian/Ubuntu:  sudo apt-get install -y curl jq
  Fedora/RHEL:    sudo dnf install -y curl jq
  Alpine:         sudo apk add curl jq
  macOS:          brew install curl jq
MSG
exit 1
