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

// Searches limited per tenant by the limiter "search" of the sidecar's
// config (2 at once, then 1 an hour): RateLimited runs the search while the
// tenant's tokens last, then refuses with the delay to retry after.
func ExampleRateLimited() {
	conn, err := resilience.Dial()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	limits := v1.NewRateLimitServiceClient(conn)
	ctx := context.Background()

	search := func(context.Context) error { fmt.Println("searching"); return nil }
	for range 3 {
		err := resilience.RateLimited(ctx, limits, "search", "tenant/42", search, resilience.WithTakeWait(100*time.Millisecond))
		var rl *resilience.RateLimitedError
		if errors.As(err, &rl) {
			fmt.Println("rate limited; retry within the hour:", rl.RetryAfter > 0 && rl.RetryAfter <= time.Hour)
		} else if err != nil {
			log.Fatal(err)
		}
	}
	d, err := resilience.Take(ctx, limits, "search", "tenant/7")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("another tenant: allowed %v, %d of %d left\n", d.Allowed, d.Remaining, d.Limit)
	// Output:
	// searching
	// searching
	// rate limited; retry within the hour: true
	// another tenant: allowed true, 1 of 2 left
}

// At most 2 reports render at once across every replica: WithPermit holds
// one of 2 permits of the bulkhead while the function runs; a caller that
// does not wait finds it full.
func ExampleWithPermit() {
	conn, err := resilience.Dial()
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	semaphores := v1.NewSemaphoreServiceClient(conn)
	ctx := context.Background()

	render := func(ctx context.Context, p resilience.Permit) error {
		// ctx is cancelled if the permit is lost: stop then.
		return resilience.WithPermit(ctx, semaphores, "reports", 2, func(ctx context.Context, q resilience.Permit) error {
			fmt.Println("two inside, tokens differ:", p.FencingToken != q.FencingToken)
			return resilience.WithPermit(ctx, semaphores, "reports", 2, func(context.Context, resilience.Permit) error {
				return nil
			})
		})
	}
	err = resilience.WithPermit(ctx, semaphores, "reports", 2, render, resilience.WithWait(time.Second))
	fmt.Println(errors.Is(err, resilience.ErrBulkheadFull), err)
	// Output:
	// two inside, tokens differ: true
	// true resilience: bulkhead "reports" full: 2 of 2 permits held
}
