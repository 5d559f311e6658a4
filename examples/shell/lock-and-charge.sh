#!/usr/bin/env bash
# lock-and-charge.sh: the sidecar's HTTP/JSON API from bash, curl and jq
# (docs/http.md). Two patterns:
#
#   1. lock -> fenced write -> release: a daily report written by whichever
#      host holds the lock; the "storage" (a directory here) refuses a write
#      whose fencing token is lower than the highest it has seen, which
#      stops a holder that paused past its TTL.
#   2. an idempotent operation: charging order 1001 runs once, however often
#      the script runs; a rerun replays the stored result.
#
# usage: examples/shell/lock-and-charge.sh DATA_DIR
#   SIDECAR        base URL of the HTTP/JSON API (default http://127.0.0.1:50080)
#   SIDECAR_TOKEN  bearer token, when the sidecar runs with api_token_file
#
# Run by e2e/http_test.go (TestShellExample) against the real binary.
set -euo pipefail

data=${1:?usage: $0 DATA_DIR}
SIDECAR=${SIDECAR:-http://127.0.0.1:50080}
auth=()
if [[ -n ${SIDECAR_TOKEN:-} ]]; then
	auth=(-H "Authorization: Bearer $SIDECAR_TOKEN")
fi

# call METHOD PATH [JSON]: the response body on stdout. An HTTP error
# prints its google.rpc.Status to stderr and fails (curl exits 22).
call() {
	local args=(-sS --fail-with-body -X "$1" "${auth[@]}")
	if [[ $# -gt 2 ]]; then
		args+=(-H 'Content-Type: application/json' -d "$3")
	fi
	local out
	if ! out=$(curl "${args[@]}" "$SIDECAR$2"); then
		echo "$1 $2 failed: $out" >&2
		return 22
	fi
	printf '%s\n' "$out"
}

# fenced_write TOKEN TEXT: what the protected storage does: keep the highest
# fencing token seen, refuse anything older.
fenced_write() {
	local token=$1 text=$2 seen=0
	mkdir -p "$data"
	[[ -f $data/fence ]] && seen=$(<"$data/fence")
	if ((token < seen)); then
		echo "storage: refused a write with stale fencing token $token (seen $seen)" >&2
		return 1
	fi
	echo "$token" >"$data/fence"
	echo "$text" >"$data/report.txt"
	echo "storage: wrote report with fencing token $token"
}

# 1. Lock -> fenced write -> release. Keys may contain '/': sent as is.
key=reports/daily
resp=$(call POST "/v1/locks/$key:acquire" '{"ttl": "30s", "waitTimeout": "10s", "owner": "shell-example"}')
if [[ $(jq -r .acquired <<<"$resp") != true ]]; then
	echo "lock $key is held by $(jq -r .holder.owner <<<"$resp"); try later" >&2
	exit 75
fi
lease=$(jq -r .lease.leaseId <<<"$resp")
token=$(jq -r .lease.fencingToken <<<"$resp")
echo "lock: acquired $key with fencing token $token"
release() { call POST "/v1/locks/$key:release" "{\"leaseId\": \"$lease\"}" >/dev/null && echo "lock: released $key"; }
trap release EXIT
fenced_write "$token" "daily report, made under fencing token $token"
release
trap - EXIT

# 2. An idempotent operation: check, do the work once, complete.
idem=charges/order-1001
resp=$(call POST "/v1/idempotency/$idem:check" '{"fingerprint": "amount=42.00 EUR", "leaseTtl": "30s", "retention": "86400s"}')
case $(jq -r .outcome <<<"$resp") in
OUTCOME_STARTED)
	ilease=$(jq -r .leaseId <<<"$resp")
	receipt="ch_$RANDOM$RANDOM" # the side effect: charging the card
	echo "$receipt" >>"$data/charges.log"
	result=$(jq -nc --arg d "$(printf '%s' "$receipt" | base64)" '{data: $d, metadata: {status: "201"}}')
	call POST "/v1/idempotency/$idem:complete" "{\"leaseId\": \"$ilease\", \"result\": $result}" >/dev/null
	echo "charge: done once, receipt $receipt"
	;;
OUTCOME_COMPLETED)
	echo "charge: replayed, receipt $(jq -r .result.data <<<"$resp" | base64 -d) (status $(jq -r .result.metadata.status <<<"$resp"))"
	;;
OUTCOME_IN_PROGRESS)
	echo "charge: in progress elsewhere; retry after $(jq -r .retryAfter <<<"$resp")" >&2
	exit 75
	;;
esac
