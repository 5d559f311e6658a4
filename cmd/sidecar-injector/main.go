// Command sidecar-injector runs the Kubernetes sidecar injector: a mutating
// admission webhook that adds the resilience sidecar to annotated Pods (see
// docs/kubernetes.md and `sidecar-injector -h`).
//
// It is a binary of its own, shipped in the same image as the sidecar, so
// that the sidecar does not link (and, at start, touch) the Kubernetes API
// types: that keeps each sidecar's idle memory down (docs/performance.md).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/seed-a88e5317/resilience-sidecar/internal/inject"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := inject.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
