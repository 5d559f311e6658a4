#!/usr/bin/env bash
# Installs the Go client from dist/go (written by clients/go/dist.sh) into
# fresh Go modules in a temporary directory outside the repository, builds
# a small program with it (a lock, an idempotent operation, the HTTP
# idempotency middleware) and runs it against a real sidecar it starts
# (SIDECAR_BIN, default .bin/sidecar, on the embedded store). Two ways:
#
#   proxy:   go get github.com/seed-a88e5317/resilience-sidecar/clients/go@vX.Y.Z
#            with GOPROXY=file://.../dist/go,<the usual proxy>, as a user
#            installs a release (GONOSUMDB for our path: the checksum
#            database does not know an unpublished version);
#   replace: a go.mod whose only replace points at the module unzipped from
#            dist/go (the client module only, not the repository).
#
# Fails on any error. Idempotent: every run starts from a new directory.
set -euo pipefail

client_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$client_dir/../.." && pwd)"
module="github.com/seed-a88e5317/resilience-sidecar/clients/go"
version="v$(tr -d ' \t\r\n' < "$root/VERSION")"
proxy_dir="$root/dist/go"
vdir="$proxy_dir/$module/@v"
[[ -s "$vdir/$version.zip" && -s "$vdir/$version.mod" && -s "$vdir/$version.info" ]] \
	|| { echo "install-test.sh: $vdir has no $version: run clients/go/dist.sh first" >&2; exit 1; }
sidecar="${SIDECAR_BIN:-$root/.bin/sidecar}"
[[ -x "$sidecar" ]] || { echo "install-test.sh: no sidecar binary at $sidecar: run make build or set SIDECAR_BIN" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/resilience-go-install-XXXXXX")"
sidecar_pid=""
cleanup() {
	if [[ -n "$sidecar_pid" ]]; then kill "$sidecar_pid" 2>/dev/null || true; wait "$sidecar_pid" 2>/dev/null || true; fi
	chmod -R u+w "$work" 2>/dev/null || true # the module cache is read-only
	rm -rf "$work"
}
trap cleanup EXIT
case "$work" in "$root"/*) echo "install-test.sh: $work is inside the repository" >&2; exit 1;; esac

# The sidecar, on a free loopback port, embedded store.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
"$sidecar" --listen "127.0.0.1:$port" --metrics-listen "" --http-listen "" >"$work/sidecar.log" 2>&1 &
sidecar_pid=$!
for _ in $(seq 1 200); do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
	kill -0 "$sidecar_pid" 2>/dev/null || { cat "$work/sidecar.log" >&2; echo "install-test.sh: the sidecar exited" >&2; exit 1; }
	sleep 0.1 # real time must pass while the sidecar starts
done
export SIDECAR_ADDR="127.0.0.1:$port"

# The program both installs build and run.
write_program() {
	cat > "$1/main.go" <<'GO'
// A small application of the Go client, installed from dist/go.
package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/idempotency"
	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := resilience.Dial() // SIDECAR_ADDR
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	err = resilience.WithLock(ctx, v1.NewLockServiceClient(conn), "install-test", func(ctx context.Context, lease resilience.Lease) error {
		if lease.FencingToken == 0 {
			return fmt.Errorf("lease without a fencing token: %+v", lease)
		}
		return nil
	})
	if err != nil {
		log.Fatalf("WithLock: %v", err)
	}

	idem := v1.NewIdempotencyServiceClient(conn)
	key, runs := "install-test/"+rand.Text(), 0
	for range 2 {
		res, err := resilience.Idempotent(ctx, idem, key, resilience.Fingerprint([]byte("req")), func(context.Context) (resilience.Result, error) {
			runs++
			return resilience.Result{Data: []byte("done")}, nil
		})
		if err != nil || string(res.Data) != "done" {
			log.Fatalf("Idempotent: %q, %v", res.Data, err)
		}
	}
	if runs != 1 {
		log.Fatalf("Idempotent ran %d times, want 1", runs)
	}

	srv := httptest.NewServer(idempotency.Middleware(idem)(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs++
		w.WriteHeader(http.StatusCreated)
		fmt.Fprint(w, "created")
	})))
	defer srv.Close()
	hkey := rand.Text()
	for i := range 2 {
		req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader("body"))
		req.Header.Set("Idempotency-Key", hkey)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			log.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 || string(body) != "created" || (resp.Header.Get("Idempotent-Replayed") == "true") != (i == 1) {
			log.Fatalf("middleware request %d: %d %q replayed=%q", i, resp.StatusCode, body, resp.Header.Get("Idempotent-Replayed"))
		}
	}
	if runs != 2 {
		log.Fatalf("the handler behind the middleware ran %d times, want 1", runs-1)
	}
	fmt.Println("install-test: ok", resilience.Version)
}
GO
}

check_output() {
	local out="$1" want="install-test: ok ${version#v}"
	[[ "$out" == "$want" ]] || { echo "install-test.sh ($2): printed '$out', want '$want'" >&2; exit 1; }
	echo "install-test.sh ($2): $out"
}

# A module cache of its own, so that what is tested is the zip in dist/go
# (a module cache never fetches a version again) and the user's cache gets
# no unpublished version. Other modules come from the user's cache's
# downloads when there, else from the usual proxy.
user_proxy="$(go env GOPROXY)"
user_cache="$(go env GOMODCACHE)"
export GOMODCACHE="$work/modcache"
export GOFLAGS=-mod=mod GOWORK=off GOPRIVATE=""
export GONOSUMDB="$module" # the checksum database does not know an unpublished version
fallback="file://$user_cache/cache/download,$user_proxy"

# 1. As a user installs a release: go get from the proxy directory.
mkdir "$work/proxy-app"
write_program "$work/proxy-app"
(
	cd "$work/proxy-app"
	go mod init example.com/installtest >/dev/null 2>&1
	GOPROXY="file://$proxy_dir,$fallback" go get "$module@$version"
	GOPROXY="file://$proxy_dir,$fallback" go mod tidy
	grep -q "^require $module $version\$\|^	$module $version\$" go.mod || { cat go.mod >&2; echo "go.mod does not require $module $version" >&2; exit 1; }
	go build -o app .
	check_output "$(./app)" proxy
)

# 2. A go.mod with a replace to the client module only, unzipped from dist.
mkdir "$work/unzipped" "$work/replace-app"
(cd "$work/unzipped" && python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(".")' "$vdir/$version.zip")
moddir="$work/unzipped/$module@$version"
write_program "$work/replace-app"
(
	cd "$work/replace-app"
	go mod init example.com/installtest >/dev/null 2>&1
	go mod edit -require="$module@$version" -replace="$module=$moddir"
	GOPROXY="$fallback" go mod tidy
	go build -o app .
	check_output "$(./app)" replace
)
