module github.com/seed-a88e5317/resilience-sidecar/clients/go

// The Go client of the resilience sidecar, a module of its own so that
// applications get only the client's dependencies. The repository's root
// module (the sidecar) uses it through a replace of ./clients/go.
//
// go 1.26.0 is the lowest the dependencies allow without a known
// vulnerability: golang.org/x/net >= v0.60.0 (the HTTP/2 fixes
// GO-2026-6603, -6610, -6611, -6612 and -6617, which a gRPC server reaches
// through grpc's transport) declares go 1.26.0; grpc >= v1.83.2 and
// pgx >= v5.9.2 (their fixed versions) declare go 1.25.0. Ignoring vulnerabilities,
// google.golang.org/protobuf >= v1.36.12 (the protoc-gen-go version that
// generated resiliencev1) would still force go 1.23. The suite passes on
// go1.26.0. No toolchain line: users build with their own Go.
go 1.26.0

require (
	github.com/jackc/pgx/v5 v5.12.0
	go.opentelemetry.io/otel v1.47.0
	go.opentelemetry.io/otel/sdk v1.47.0
	go.uber.org/goleak v1.3.0
	google.golang.org/genproto/googleapis/api v0.0.0-20260928230214-8a89bd6388cc
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261110000943-09e21b237f2c
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/go-logr/logr v1.4.4 // indirect
	github.com/go-logr/stdr v1.2.2 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	go.opentelemetry.io/auto/sdk v1.2.1 // indirect
	go.opentelemetry.io/otel/log v1.47.0 // indirect
	go.opentelemetry.io/otel/metric v1.47.0 // indirect
	go.opentelemetry.io/otel/trace v1.47.0 // indirect
	golang.org/x/net v0.63.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
	golang.org/x/text v0.44.0 // indirect
)
