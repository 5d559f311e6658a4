# Tools are pinned and installed into .bin/ so every machine runs the same ones.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPCURL_VERSION            := v1.9.3
STATICCHECK_VERSION        := v0.8.2
DEADCODE_VERSION           := v0.53.0
GOVULNCHECK_VERSION        := v1.9.0
# The vulnerability database is built offline from this golang.org/x/vulndb
# module version (its data/osv reports); bump it to learn of newer reports.
VULNDB_VERSION             := v0.0.0-20261105234957-e22db6528018
# envoyproxy/ratelimit, the baseline of the rate-limit benchmark (make bench
# BENCH_FLAGS='-groups ratelimit'), built from its Go module by
# scripts/build-envoy-ratelimit.sh into .bin/ once. It has no release tags:
# a pseudo-version of its main branch (2026-01-22).
ENVOY_RATELIMIT_VERSION    := v1.4.1-0.20260122083618-3fb702589d36

# The Go toolchain: go.mod needs go1.27.3 (go1.26.8 has reachable
# standard-library vulnerabilities). A machine's own Go fetches it through the
# module proxy when GOTOOLCHAIN names it; GOTOOLCHAIN=local would refuse to build.
GO_TOOLCHAIN := go1.27.3
export GOTOOLCHAIN := $(GO_TOOLCHAIN)

BIN   := $(CURDIR)/.bin
GO    ?= go
# The toolchain's own bin/ comes first on PATH: tools built on
# golang.org/x/tools ask `go` for its version with GO111MODULE=off, where a
# machine's older go ignores GOTOOLCHAIN and answers with its own version.
GO_TOOLCHAIN_ROOT := $(shell GOTOOLCHAIN=$(GO_TOOLCHAIN) go env GOROOT)
export PATH := $(GO_TOOLCHAIN_ROOT)/bin:$(BIN):$(PATH)

.PHONY: all build run test test-go test-clients lint vulncheck generate check-generated bench tools clean redis postgres

all: build

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/grpcurl:
	GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
# Tools that type-check this module's code must be built by its toolchain:
# they depend on a stamp named after it, so a toolchain change rebuilds them.
TOOLCHAIN_STAMP := $(BIN)/.toolchain-$(GO_TOOLCHAIN)
$(TOOLCHAIN_STAMP):
	mkdir -p $(BIN) && touch $@
$(BIN)/staticcheck: $(TOOLCHAIN_STAMP)
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(BIN)/deadcode: $(TOOLCHAIN_STAMP)
	GOBIN=$(BIN) $(GO) install golang.org/x/tools/cmd/deadcode@$(DEADCODE_VERSION)
$(BIN)/govulncheck: $(TOOLCHAIN_STAMP)
	GOBIN=$(BIN) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)

# The Go vulnerability database, built from the pinned golang.org/x/vulndb
# module by its own cmd/indexdb (the public database is not reachable
# offline). Written to a temporary directory first, so an interrupted build
# leaves nothing that looks complete.
VULNDB := $(BIN)/vulndb-$(VULNDB_VERSION)
$(VULNDB)/index/db.json:
	$(GO) mod download golang.org/x/vulndb@$(VULNDB_VERSION)
	rm -rf $(VULNDB).tmp
	$(GO) run golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION) \
		-vulns "$$($(GO) env GOMODCACHE)/golang.org/x/vulndb@$(VULNDB_VERSION)/data/osv" -out $(VULNDB).tmp
	rm -rf $(VULNDB) && mv $(VULNDB).tmp $(VULNDB)

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/grpcurl $(BIN)/staticcheck $(BIN)/deadcode $(BIN)/govulncheck jq

## jq: curl and jq (apt-get if missing), for the README's curl tour and examples/shell.
.PHONY: jq
jq:
	@scripts/ensure-jq.sh

build:
	$(GO) build -o $(BIN)/ ./cmd/sidecar ./cmd/sidecar-injector

## run: the sidecar on the embedded store at 127.0.0.1:50051, ready for grpcurl.
run: build
	$(BIN)/sidecar --listen 127.0.0.1:50051

generate: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc
	buf generate
	BUF=$(BIN)/buf clients/node/scripts/generate.sh
	clients/python/generate.sh
	$(GO) run ./internal/api/reasongen
	$(GO) run ./internal/httpapi/openapigen -o docs/openapi.json
	python3 scripts/version.py sync

## check-generated: fails when committed generated code differs from what make generate writes.
GENERATED := clients/go/resiliencev1 clients/node/src/gen clients/python/resilience_sidecar/v1 \
             clients/go/resilience/reasons_gen.go clients/node/src/reasons.ts clients/python/resilience_sidecar/reasons.py \
             clients/java/src/main/java/io/github/seeda88e5317/resilience/Reasons.java \
             docs/openapi.json \
             $(VERSIONED)

## VERSIONED: every file that carries the release number, written from VERSION
## by scripts/version.py (make generate); check-generated fails on drift.
VERSIONED := internal/version/version_gen.go clients/go/resilience/version_gen.go \
             clients/python/pyproject.toml clients/python/resilience_sidecar/__init__.py \
             clients/node/package.json clients/node/package-lock.json \
             $(shell git ls-files '*pom.xml') deploy docs/kubernetes.md

check-generated: generate
	@test -z "$$(git status --porcelain -- $(GENERATED))" || { git status --short -- $(GENERATED); echo "generated code is stale: run 'make generate' and commit" >&2; exit 1; }

## lint: go vet, staticcheck (default checks), deadcode (no function that
## no program or test reaches), buf lint and format, gofmt. The same for the
## Go client module (clients/go, a library: deadcode -test, so every
## function must be reached from its own tests or Examples; the root's
## deadcode, which sees the client through the replace, leaves it to that)
## and examples/go (a program: deadcode from its main); vet and staticcheck
## for clients/go/internal/modzip (dist.sh's zip writer, a module of its own).
lint: $(BIN)/buf $(BIN)/staticcheck $(BIN)/deadcode
	$(GO) vet ./...
	staticcheck ./...
	@out="$$(deadcode -test ./...)" || { echo "deadcode failed (see above)" >&2; exit 1; }; out="$$(printf '%s\n' "$$out" | grep -v '^clients/go/')"; test -z "$$out" || { echo "$$out"; echo "unreachable code: delete it, or test it if it is API" >&2; exit 1; }
	cd clients/go && $(GO) vet ./... && staticcheck ./...
	@out="$$(cd clients/go && deadcode -test ./...)" || { echo "deadcode (clients/go) failed (see above)" >&2; exit 1; }; test -z "$$out" || { echo "$$out"; echo "clients/go: unreachable code: delete it, or test it if it is API" >&2; exit 1; }
	cd examples/go && $(GO) vet ./... && staticcheck ./...
	cd clients/go/internal/modzip && $(GO) vet ./... && staticcheck ./...
	@out="$$(cd examples/go && deadcode ./...)" || { echo "deadcode (examples/go) failed (see above)" >&2; exit 1; }; test -z "$$out" || { echo "$$out"; echo "examples/go: unreachable code" >&2; exit 1; }
	buf lint
	buf format -d --exit-code
	@test -z "$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go'))" || { gofmt -l $$(git ls-files -co --exclude-standard '*.go'); echo "gofmt needed" >&2; exit 1; }

## vulncheck: govulncheck against the locally built database; fails (exit 3)
## on any vulnerability the code can reach. The database must know
## GO-2026-6617 (net/http, fixed in go1.26.9), so that an empty or stale
## database cannot pass silently.
vulncheck: $(BIN)/govulncheck $(VULNDB)/index/db.json
	@test -s $(VULNDB)/ID/GO-2026-6617.json || { echo "vulncheck: $(VULNDB) lacks GO-2026-6617: rebuild it (rm -rf $(VULNDB))" >&2; exit 1; }
	$(GO) version
	govulncheck -db file://$(VULNDB) ./...
	cd clients/go && govulncheck -db file://$(VULNDB) ./...
	cd examples/go && govulncheck -db file://$(VULNDB) ./...

redis:
	@scripts/ensure-redis.sh

postgres:
	@scripts/ensure-postgres.sh

## test: everything CI runs.
test: tools redis postgres k8s-deps check-generated lint vulncheck test-go test-clients test-install test-image

## test-clients: each language's client tests against the real sidecar binary.
test-clients: build redis
	SIDECAR_BIN=$(BIN)/sidecar clients/node/test.sh
	SIDECAR_BIN=$(BIN)/sidecar clients/python/test.sh
	SIDECAR_BIN=$(BIN)/sidecar clients/java/test.sh
	SIDECAR_BIN=$(BIN)/sidecar clients/java-spring/test.sh

## test-go: every Go package: the root module's, then the Go client
## module's (clients/go; its tests also run examples/go) against the sidecar
## binary just built. The timeout only catches a hang: e2e, the longest
## package, takes 8-10 min on two idle cores and up to 15 on a loaded machine.
test-go: build
	$(GO) test -race -count=1 -timeout 25m ./...
	cd clients/go && SIDECAR_BIN=$(BIN)/sidecar $(GO) test -race -count=1 -timeout 15m ./...

# ---- Release artifacts (issue 21; one number in VERSION, scripts/version.py) ----
.PHONY: dist test-install

## dist: every artifact of the release VERSION into dist/: the sidecar's
## static linux tarballs and its Helm chart, the Go client's module (proxy
## layout), the Python wheel and sdist, the npm tarball, and the Maven
## artifacts (client and Spring Boot starter: jars, sources, javadoc), with
## SHA256SUMS over them.
dist: tools $(HELM)
	rm -rf dist
	HELM=$(HELM) GO=$(GO) scripts/dist-sidecar.sh
	clients/go/dist.sh
	clients/python/dist.sh
	clients/node/dist.sh
	clients/java/dist.sh
	cd dist && find . -type f ! -name SHA256SUMS -print0 | LC_ALL=C sort -z | xargs -0 sha256sum > SHA256SUMS

## test-install: each artifact of dist/ installed into a fresh project outside
## the repository (a tarball unpacked, a Go module, venvs on the oldest and
## newest Python and on protobuf 5, an npm project from ESM and CommonJS, a
## Maven project) and run against the real sidecar.
test-install: dist build redis
	HELM=$(HELM) KUBE_VERSION=$(KUBE_VERSION) scripts/install-test-sidecar.sh
	SIDECAR_BIN=$(abspath $(BIN))/sidecar clients/go/install-test.sh
	SIDECAR_BIN=$(abspath $(BIN))/sidecar clients/python/install-test.sh
	SIDECAR_BIN=$(abspath $(BIN))/sidecar clients/node/install-test.sh
	SIDECAR_BIN=$(abspath $(BIN))/sidecar clients/java/install-test.sh

## bench: load benchmarks and the issue-12 targets (not tests; docs/performance.md).
## Parts: make bench BENCH_FLAGS='-groups locks,clock'
bench: tools redis postgres build
	$(GO) run ./cmd/bench $(BENCH_FLAGS)

## envoy-ratelimit: envoyproxy/ratelimit at ENVOY_RATELIMIT_VERSION, in .bin/ (the bench builds it when it needs it).
.PHONY: envoy-ratelimit
envoy-ratelimit:
	@scripts/build-envoy-ratelimit.sh

clean:
	rm -rf $(BIN)

# ---- Container image and static binary (issue 8; see Dockerfile, docs/kubernetes.md) ----
IMAGE ?= ghcr.io/seed-a88e5317/resilience-sidecar:dev

.PHONY: build-static image

## build-static: the image's binaries (CGO_ENABLED=0, -trimpath), checked to be statically linked.
build-static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/sidecar-static ./cmd/sidecar
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/sidecar-injector-static ./cmd/sidecar-injector
	@for b in $(BIN)/sidecar-static $(BIN)/sidecar-injector-static; do \
		if command -v file >/dev/null 2>&1; then \
			file $$b; \
			file $$b | grep -Eq 'statically linked|static-pie linked' \
				|| { echo "build-static: $$b is not statically linked" >&2; exit 1; }; \
		else \
			ldd $$b 2>&1 | tee /dev/stderr | grep -Eq 'not a dynamic executable|statically linked' \
				|| { echo "build-static: $$b is not statically linked" >&2; exit 1; }; \
		fi; \
	done

## image: the container image $(IMAGE); needs a running Docker engine.
image:
	@docker info >/dev/null 2>&1 || { \
		echo "make image: no Docker engine answers ('docker info' failed), so no image was built." >&2; \
		echo "  Build it where Docker runs (make image IMAGE=...), or check the binary here with 'make build-static'." >&2; \
		exit 1; }
	docker build --build-arg BUILDPLATFORM="$$(docker version -f '{{.Server.Os}}/{{.Server.Arch}}')" -t $(IMAGE) .

# ---- Kubernetes end-to-end tests (issue 20; e2e/k8s, docs/kubernetes.md) ----
# A real etcd (Debian's etcd-server) and a real kube-apiserver built from the
# k8s.io/kubernetes module at this release (its KUBE_VERSION must match
# kubeVersion in e2e/k8s, which TestKubeAPIServerVersion checks). test-go runs
# the suite with the rest of ./...; test-k8s runs it alone.
KUBE_VERSION   := v1.37.2
KUBE_APISERVER := $(BIN)/kube-apiserver-$(KUBE_VERSION)

.PHONY: etcd k8s-deps test-k8s

etcd:
	@scripts/ensure-etcd.sh

## kube-apiserver: built once (minutes), then kept in .bin/ and ~/.cache/resilience-sidecar.
$(KUBE_APISERVER):
	KUBE_VERSION=$(KUBE_VERSION) scripts/build-kube-apiserver.sh $(BIN)

## helm: built from its Go module at HELM_VERSION (its value must match
## helmVersion in e2e/k8s, which TestHelmChart checks), kept in .bin/.
HELM_VERSION := v3.21.4
HELM         := $(BIN)/helm-$(HELM_VERSION)

$(HELM):
	GOBIN=$(abspath $(BIN))/.helm-$(HELM_VERSION) $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	mv $(BIN)/.helm-$(HELM_VERSION)/helm $@ && rmdir $(BIN)/.helm-$(HELM_VERSION)

.PHONY: helm
helm: $(HELM)

## k8s-deps: what e2e/k8s needs: etcd, the pinned kube-apiserver and helm.
k8s-deps: etcd $(KUBE_APISERVER) $(HELM)

## test-k8s: only the Kubernetes end-to-end suite.
test-k8s: k8s-deps
	$(GO) test -race -count=1 -timeout 10m ./e2e/k8s/

.PHONY: test-image

## test-image: the test-only image (Dockerfile.test: the static binaries FROM
## scratch, no registry needed) run --read-only --cap-drop ALL --user 65532:
## gRPC health, a lock round trip through Redis, exit 0 on SIGTERM. Starts its
## own dockerd when no engine answers (apt-get installs docker.io if missing).
test-image: build-static tools redis
	scripts/test-image.sh
