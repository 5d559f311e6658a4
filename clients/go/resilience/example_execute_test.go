package resilience_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/seed-a88e5317/resilience-sidecar/clients/go/resilience"
	v1 "github.com/seed-a88e5317/resilience-sidecar/clients/go/resiliencev1"
)

// The sidecar makes the HTTP call to an upstream of its config, through
// the upstream's circuit breaker, with its timeouts and retries (an
// idempotency key makes a POST retryable). Any HTTP status is a response;
// an open breaker is an error that says when to try again.
func ExampleExecuteCall() {
	conn, err := resilience.Dial() // SIDECAR_ADDR, or 127.0.0.1:50051
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	breakers := v1.NewBreakerServiceClient(conn)

	resp, err := resilience.ExecuteCall(context.Background(), breakers, "payments", http.MethodPost, "/charges",
		[]byte(`{"order": "42", "amount": 1999}`),
		resilience.WithCallHeader("Content-Type", "application/json"),
		resilience.WithCallIdempotencyKey("order-42/charge"),
		resilience.WithUpstreamTimeout(5*time.Second))
	var e *resilience.Error
	switch {
	case errors.Is(err, resilience.ErrBreakerOpen) && errors.As(err, &e):
		fmt.Println("payments is failing; try again in", e.RetryDelay)
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println("payments answered", resp.Status, "after", resp.Attempts, "attempt(s)")
	}
	// Output:
	// payments answered 204 after 1 attempt(s)
}
