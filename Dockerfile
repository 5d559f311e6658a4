# The resilience sidecar and its Kubernetes injector (/sidecar-injector), as
# static binaries on distroless: CA certificates and tzdata, no shell, no package
# manager, running as the unprivileged "nonroot" user (65532). No HEALTHCHECK:
# Kubernetes probes the gRPC health service (see deploy/k8s).
#
#   make image                      # docker build -t $(IMAGE) .
#   docker buildx build --platform linux/amd64,linux/arm64 -t IMAGE --push .
#
# It builds with BuildKit and with the classic builder (Docker without
# buildx), so it uses no BuildKit-only syntax (no RUN --mount, no # syntax
# line, which would also pull a frontend image). BUILDPLATFORM is set by
# BuildKit; for the classic builder `make image` passes it.

# go.mod needs go1.27.3 (go1.26.8 has reachable standard-library
# vulnerabilities); GOTOOLCHAIN makes an older base image fetch it.
ARG GO_VERSION=1.27.3
ARG BUILDPLATFORM

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ENV GOTOOLCHAIN=go1.27.3
WORKDIR /src
# Modules first, so that a source change does not download them again. The
# Go client is a module of its own (clients/go) that go.mod replaces with the
# directory: its go.mod and go.sum are needed to resolve the build list.
COPY go.mod go.sum ./
COPY clients/go/go.mod clients/go/go.sum ./clients/go/
RUN go mod download
COPY . .
ARG TARGETOS=linux
ARG TARGETARCH
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH GOFLAGS=-buildvcs=false \
    go build -trimpath -ldflags='-s -w' -o /out/ ./cmd/sidecar ./cmd/sidecar-injector

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="resilience-sidecar" \
      org.opencontainers.image.source="https://github.com/seed-a88e5317/resilience-sidecar" \
      org.opencontainers.image.description="Distributed locks, idempotency, circuit breakers, clocks, sagas and events over gRPC, backed by Redis"
COPY --from=build /out/sidecar /sidecar
COPY --from=build /out/sidecar-injector /sidecar-injector
USER 65532:65532
# 50051: gRPC (apps, health, reflection); 9090: Prometheus /metrics;
# 8443: the injector's webhook (command /sidecar-injector).
EXPOSE 50051 9090 8443
ENTRYPOINT ["/sidecar"]
