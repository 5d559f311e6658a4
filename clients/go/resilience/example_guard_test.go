package resilience_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// Calls to a failing payment provider go through a circuit breaker: once
// it opens (the default policy: 5 failures in a row), calls fail fast
// without reaching the provider, and the error says when to try again.
func ExampleGuard() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	breakers := v1.NewBreakerServiceClient(conn)
	ctx := context.Background()

	name := "payments-provider/" + rand.Text() // a fresh breaker for this example
	attempts := 0
	charge := func(ctx context.Context) error {
		attempts++ // call the provider here
		return errors.New("provider: 503 service unavailable")
	}

	for i := range 7 {
		err := resilience.Guard(ctx, breakers, name, charge)
		var e *resilience.Error
		if errors.Is(err, resilience.ErrBreakerOpen) && errors.As(err, &e) {
			fmt.Printf("call %d: not made, breaker open; retry in %v\n", i+1, e.RetryDelay.Round(time.Second))
			continue
		}
		fmt.Printf("call %d: %v\n", i+1, err)
	}
	fmt.Println("the provider saw", attempts, "calls")
	// Output:
	// call 1: provider: 503 service unavailable
	// call 2: provider: 503 service unavailable
	// call 3: provider: 503 service unavailable
	// call 4: provider: 503 service unavailable
	// call 5: provider: 503 service unavailable
	// call 6: not made, breaker open; retry in 30s
	// call 7: not made, breaker open; retry in 30s
	// the provider saw 5 calls
}
