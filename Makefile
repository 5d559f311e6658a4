# Tools are pinned and installed into .bin/ so every machine runs the same ones.
BUF_VERSION                := v1.75.0
PROTOC_GEN_GO_VERSION      := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
GRPCURL_VERSION            := v1.9.3
STATICCHECK_VERSION        := v0.8.2
DEADCODE_VERSION           := v0.53.0

BIN   := $(CURDIR)/.bin
GO    ?= go
export PATH := $(BIN):$(PATH)

.PHONY: all build run test test-go test-clients lint generate check-generated bench tools clean redis postgres

all: build

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
$(BIN)/grpcurl:
	GOBIN=$(BIN) $(GO) install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)
$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
$(BIN)/deadcode:
	GOBIN=$(BIN) $(GO) install golang.org/x/tools/cmd/deadcode@$(DEADCODE_VERSION)

tools: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc $(BIN)/grpcurl $(BIN)/staticcheck $(BIN)/deadcode

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

## check-generated: fails when committed generated code differs from what make generate writes.
GENERATED := clients/go/resiliencev1 clients/node/src/gen clients/python/resilience_sidecar/v1 \
             clients/go/resilience/reasons_gen.go clients/node/src/reasons.ts clients/python/resilience_sidecar/reasons.py \
             clients/java/src/main/java/io/github/seeda88e5317/resilience/Reasons.java

check-generated: generate
	@test -z "$$(git status --porcelain -- $(GENERATED))" || { git status --short -- $(GENERATED); echo "generated code is stale: run 'make generate' and commit" >&2; exit 1; }

## lint: go vet, staticcheck (default checks), deadcode (no function that
## no program or test reaches), buf lint and format, gofmt.
lint: $(BIN)/buf $(BIN)/staticcheck $(BIN)/deadcode
	$(GO) vet ./...
	staticcheck ./...
	@out="$$(deadcode -test ./...)"; test -z "$$out" || { echo "$$out"; echo "unreachable code: delete it, or test it if it is API" >&2; exit 1; }
	buf lint
	buf format -d --exit-code
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed" >&2; exit 1; }

redis:
	@scripts/ensure-redis.sh

postgres:
	@scripts/ensure-postgres.sh

## test: everything CI runs.
test: tools redis postgres check-generated lint test-go test-clients

## test-clients: each language's client tests against the real sidecar binary.
test-clients: build redis
	SIDECAR_BIN=$(BIN)/sidecar clients/node/test.sh
	SIDECAR_BIN=$(BIN)/sidecar clients/python/test.sh
	SIDECAR_BIN=$(BIN)/sidecar clients/java/test.sh

test-go:
	$(GO) test -race -count=1 -timeout 15m ./...

## bench: load benchmarks and the issue-12 targets (not tests; docs/performance.md).
## Parts: make bench BENCH_FLAGS='-groups locks,clock'
bench: tools redis postgres build
	$(GO) run ./cmd/bench $(BENCH_FLAGS)

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
	docker build -t $(IMAGE) .
