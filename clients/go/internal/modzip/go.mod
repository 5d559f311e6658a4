// The tool that writes the Go client's module zip (clients/go/dist.sh): a
// module of its own, so that golang.org/x/mod is no dependency of the
// client module, and a nested module is left out of the client's zip.
module github.com/seed-a88e5317/resilience-sidecar/clients/go/internal/modzip

go 1.26.0

require golang.org/x/mod v0.42.0
