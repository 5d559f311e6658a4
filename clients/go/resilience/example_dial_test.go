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

// One connection for the whole process. Calls without a deadline get
// WithCallTimeout's; a call made while the sidecar restarts waits up to
// WithConnectWait for it; errors are typed.
func ExampleDial() {
	conn, err := resilience.Dial( // SIDECAR_ADDR, or 127.0.0.1:50051
		resilience.WithCallTimeout(5*time.Second),
		resilience.WithConnectWait(3*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	clocks := v1.NewClockServiceClient(conn)

	_, err = clocks.NextLamport(context.Background(), &v1.NextLamportRequest{Clock: "orders"})
	switch {
	case errors.Is(err, resilience.ErrSidecarUnreachable):
		fmt.Println("the sidecar is down: retry later")
	case errors.Is(err, resilience.ErrDeadlineExceeded):
		fmt.Println("no answer within 5s")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println("stamped")
	}
	// Output:
	// stamped
}
