package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// A job that must not run twice at once across replicas: WithLock holds the
// lock for as long as the function runs and hands it the fencing token to
// put in its writes.
func ExampleWithLock() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	locks := v1.NewLockServiceClient(conn)

	err = resilience.WithLock(context.Background(), locks, "reports/nightly",
		func(ctx context.Context, lease resilience.Lease) error {
			// ctx is cancelled if the lease is lost: stop writing then.
			fmt.Println("holding", lease.Key, "with a fencing token:", lease.FencingToken > 0)
			return nil
		},
		resilience.WithTTL(5*time.Second), resilience.WithOwner("reporter-1"))
	if err != nil {
		log.Fatal(err)
	}

	// Another replica that finds it held is told who holds it.
	err = resilience.WithLock(context.Background(), locks, "reports/nightly",
		func(ctx context.Context, lease resilience.Lease) error {
			return resilience.WithLock(ctx, locks, "reports/nightly",
				func(context.Context, resilience.Lease) error { return nil },
				resilience.WithOwner("reporter-2"))
		}, resilience.WithOwner("reporter-1"))
	fmt.Println(errors.Is(err, resilience.ErrNotAcquired), err)
	// Output:
	// holding reports/nightly with a fencing token: true
	// true resilience: lock "reports/nightly" not acquired: held by "reporter-1"
}
